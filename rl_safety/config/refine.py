"""Schemas of the data-generation commands (`rl-safety dgr`, `rl-safety thinksafe`, and any
registered data method): vLLM engine actors (EngineSection) sampling (RepeatedSampling) from the
target model; the model section is SFT's."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from rl_safety.config.cluster import RolloutClusterSection
from rl_safety.config.engine import EngineSection, RepeatedSampling
from rl_safety.config.judge import Guard, moved_judge_keys
from rl_safety.config.loader import Section, with_defaults
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


class GenerationSection(with_defaults("GenerationEngineAndSampling", (EngineSection, RepeatedSampling),
                                      temperature=0.6, top_p=0.95, top_k="family", max_new_tokens=16384)):
    """The target model's engines and sampling; ThinkSafe's settings by default (temperature 0.6,
    top_p 0.95, top_k from the model family: 20 for Qwen3, off otherwise)."""

    max_prompt_tokens: int = Field(4096, ge=1, description="longer (rendered) prompts are dropped and counted")
    keep_per_prompt: int | None = Field(None, ge=1, description="keep at most this many accepted responses per row")


class OutputSection(Section):
    path: str = Field(min_length=1,
                      description="JSONL written: schema fields + provenance; PATH.stats.json has the filter counts")
    seed: int = Field(0, ge=0)


class DGRSection(Section):
    refinement_prompt: str = Field(
        DGR_REFINEMENT_PROMPT, description="user turn sent to the target model (ours: the paper's prompt is not "
                                           "public); {prompt} {reasoning} {answer} filled")
    require_label_behaviour: bool = Field(
        True, description="keep refusals of harmful prompts and answers to benign ones only")
    on_failed_refinement: Literal["drop", "original"] = Field(
        "drop", description="a source row none of whose samples is accepted: drop it, or keep the original "
                            "external trace in its place (provenance fallback: original; counted in the stats)")

    @field_validator("refinement_prompt")
    @classmethod
    def _fills_only_known_fields(cls, template: str) -> str:
        try:
            template.format(prompt="", reasoning="", answer="")
        except (KeyError, IndexError, ValueError) as err:
            raise ValueError(f"only {{prompt}}, {{reasoning}} and {{answer}} may be filled ({err!r})") from None
        return template


# The filter guard's context holds the prompt, a 16,384-token response and the guard's own template.
FilterGuardEngine = with_defaults("FilterGuardEngine", EngineSection, max_model_len=24576)


class FilterGuard(Guard):
    """The ThinkSafe filter's guard, with the authors' defaults (synthesize_data.py,
    utils/guard_model.py): Llama-Guard-3-8B (WildGuard: format wildguard, model allenai/wildguard)
    reading the full response."""

    model: str = Field("meta-llama/Llama-Guard-3-8B", description="guard checkpoint: hub id or path")
    view: Literal["answer", "full"] = Field("full", description="the authors judge the full response, thought included")
    engine: FilterGuardEngine = Field(default_factory=FilterGuardEngine, description="the guard's vLLM engines")


class ThinkSafeSection(Section):
    steering_text: str = Field(STEERING_TEXT, description="prefix of harmful prompts, then a blank line and the prompt")
    filter: Literal["guard", "refusal_regex"] = Field(
        "guard", description="guard: keep a sample the guard judges safe on (original prompt, full response, "
                             "thought included), the authors' filter; refusal_regex: a CPU option that is NOT the "
                             "authors', keeping refusals of harmful prompts and answers to benign ones "
                             "(rewards.refusal.read_answer on the answer)")
    guard: FilterGuard = Field(default_factory=FilterGuard, description="the filter's guard; used with filter: guard")


class GenerationConfig(Section):
    """What every data method shares: the target model samples a dataset from another."""

    renamed = {"generation.samples_per_prompt": "generation.n", **moved_judge_keys("thinksafe.guard")}

    model: SFTModelSection
    data: SafetyDataSection
    generation: GenerationSection = GenerationSection()
    cluster: RolloutClusterSection = RolloutClusterSection()
    output: OutputSection


class DGRConfig(GenerationConfig):
    dgr: DGRSection = DGRSection()


class ThinkSafeConfig(GenerationConfig):
    thinksafe: ThinkSafeSection = ThinkSafeSection()
