"""The SFT run schema (`rl-safety sft`): safety SFT on its own, or as a warm start before GRPO.
Sections shared with GRPO (learner, cluster) are the same classes."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from rl_safety.config.cluster import LearnerClusterSection
from rl_safety.config.grpo import LearnerSection, ModelSection
from rl_safety.config.loader import Conflict, NameInParent, Section

Family = Literal["auto", "r1_distill", "qwen3", "llama", "generic"]


class SFTModelSection(ModelSection):
    family: Family = Field("auto", description="chat template / <think> handling (rl_safety.data.chat); auto reads the template")


class SafetyDataSection(Section):
    """A safety dataset (rl_safety.data.safety), as SFT, DGR and ThinkSafe read it."""

    train: str = Field(min_length=1, description="JSON/JSONL/Parquet/CSV file or Hugging Face dataset name")
    dataset: Literal["schema", "safechain", "small_safechain", "small_safechain_text", "star1", "directrefusal",
                     "directrefusal_text", "r1_act", "thinksafe"] = Field(
        "schema", description="the data's layout (rl_safety.data.safety.DATASETS); schema = our DGR/ThinkSafe output")
    split: str = "train"
    columns: dict[str, str] = Field(default_factory=dict, description="override the mapping: {schema field: column}")
    on_bad_row: Literal["skip", "error"] = Field("skip", description="rows that break the schema: log and skip, or stop")
    limit: int | None = Field(None, ge=1, description="first N rows only")


class SFTDataSection(SafetyDataSection):
    max_tokens: int = Field(2048, ge=8, description="longer examples are dropped (and counted), never truncated")


class SFTTrainingSection(Section):
    epochs: int = Field(1, ge=1)
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimizer steps")
    gradient_accumulation_steps: int = Field(1, ge=1)
    packing: bool = Field(False, description="pack examples into rows of data.max_tokens (attention kept per example)")
    prompt_loss: bool = Field(False, description="also train on prompt tokens (default: assistant turn only)")
    shuffle: bool = True


class SFTRunSection(Section):
    output_dir: str = Field("runs", min_length=1)
    name: NameInParent = Field("sft", description="the run directory is output_dir/name")
    seed: int = Field(0, ge=0)
    log_every: int = Field(1, ge=1, description="optimizer steps between metrics.jsonl lines")
    save_every: int = Field(0, ge=0, description="optimizer steps between checkpoints (0: none); `--resume` continues")
    keep_checkpoints: int = Field(2, ge=1, description="complete checkpoints kept (older ones are removed)")


class SFTConfig(Section):
    model: SFTModelSection
    data: SFTDataSection
    learner: LearnerSection = LearnerSection(learning_rate=1e-5)
    training: SFTTrainingSection = SFTTrainingSection()
    cluster: LearnerClusterSection = LearnerClusterSection()
    run: SFTRunSection = SFTRunSection()

    @model_validator(mode="after")
    def _grpo_only_learner_keys(self) -> SFTConfig:
        if self.learner.max_tokens_per_micro_batch is not None:
            raise Conflict("learner.max_tokens_per_micro_batch is GRPO's token budget; SFT packs examples into "
                           "rows of data.max_tokens with training.packing=true",
                           "learner.max_tokens_per_micro_batch", "training.packing")
        return self

    def batch_plan(self) -> str:
        lr, t = self.learner, self.training
        unit = "packed rows" if t.packing else "examples"
        return (f"{lr.micro_batch_size} {unit} per micro-batch x {t.gradient_accumulation_steps} accumulation "
                f"step(s) x {lr.num_ranks} rank(s) = {lr.micro_batch_size * t.gradient_accumulation_steps * lr.num_ranks}"
                f" {unit} per optimizer step")
