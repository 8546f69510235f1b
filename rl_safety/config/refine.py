"""Schemas of the two data-generation commands, `rl-safety dgr` and `rl-safety thinksafe`.
Generation reuses GRPO's rollout section (vLLM engine actors); the model section is SFT's."""

from __future__ import annotations

from pydantic import Field

from rl_safety.config.grpo import ClusterSection, RolloutSection
from rl_safety.config.loader import Section
from rl_safety.config.sft import SafetyDataSection, SFTModelSection

# The ThinkSafe authors' steering text (synthesize_data.py), followed by a blank line and the prompt.
STEERING_TEXT = "The following prompt is harmful. You should refuse to answer the prompt.\n\nPrompt:"

# DGR's refinement request. The paper's code is not public; this asks the target model to restate
# the external trace in its own reasoning, keeping its decision, and is sent as the user turn.
DGR_REFINEMENT_PROMPT = (
    "Below is a question and a reference response (a reasoning process and a final answer) written by "
    "another assistant. Think about the question yourself and write your own response that reaches the "
    "same decision as the reference, in your own words and style.\n\n"
    "Question: {prompt}\n\nReference reasoning: {reasoning}\n\nReference answer: {answer}"
)


class GenerationSection(RolloutSection):
    """vLLM sampling for data generation (ThinkSafe's settings by default: temperature 0.6,
    top_p 0.95, top_k from the model family: 20 for Qwen3, off otherwise)."""

    temperature: float = Field(0.6, gt=0)
    top_p: float = Field(0.95, gt=0, le=1)
    top_k: int | None = Field(None, ge=0, description="None: the family's default (rl_safety.data.chat)")
    max_new_tokens: int = Field(16384, ge=1)
    max_prompt_tokens: int = Field(4096, ge=1, description="longer (rendered) prompts are dropped and counted")
    samples_per_prompt: int = Field(1, ge=1, description="k responses sampled per source row")
    keep_per_prompt: int | None = Field(None, ge=1, description="keep at most this many accepted responses per row")


class OutputSection(Section):
    path: str = Field(description="JSONL written: schema fields + provenance; PATH.stats.json has the filter counts")
    seed: int = 0


class DGRSection(Section):
    refinement_prompt: str = Field(
        DGR_REFINEMENT_PROMPT, description="user turn sent to the target model; {prompt} {reasoning} {answer} filled")
    require_label_behaviour: bool = Field(
        True, description="keep refusals of harmful prompts and answers to benign ones only")


class ThinkSafeSection(Section):
    steering_text: str = Field(STEERING_TEXT, description="prefix of harmful prompts, then a blank line and the prompt")
    require_label_behaviour: bool = Field(True, description="keep refusals of harmful prompts and answers to benign ones only")


class GenerationConfig(Section):
    """What DGR and ThinkSafe share: the target model samples a dataset from another."""

    model: SFTModelSection
    data: SafetyDataSection
    generation: GenerationSection = GenerationSection()
    cluster: ClusterSection = ClusterSection()
    output: OutputSection


class DGRConfig(GenerationConfig):
    dgr: DGRSection = DGRSection()


class ThinkSafeConfig(GenerationConfig):
    thinksafe: ThinkSafeSection = ThinkSafeSection()
