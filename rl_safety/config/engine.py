"""vLLM engines and how they sample: the settings every command that generates shares (GRPO's
rollout, DGR / ThinkSafe generation, eval, the judges), with one spelling each. Commands compose
these sections and may give other defaults (`with_defaults`), never other names."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from rl_safety.config.loader import Section, with_defaults


class EngineSection(Section):
    num_engines: int = Field(1, ge=1, description="vLLM engine actors; prompts are split evenly across them")
    tensor_parallel_size: int = Field(1, ge=1, description="devices per engine (GPU)")
    max_model_len: int | None = Field(None, ge=2, description="context per engine; default: prompt budget + max_new_tokens")
    gpu_memory_utilization: float = Field(0.5, gt=0, le=1, description="GPU: share of memory for vLLM")
    kv_cache_memory_mb: int = Field(256, ge=16, description="CPU: KV cache size per engine")
    enforce_eager: bool = Field(False, description="disable CUDA graphs / compilation")
    max_logprobs: int = Field(20, ge=0, description="most logprobs one request may ask for (a judge's soft verdict)")

    @property
    def devices(self) -> int:
        """Devices (bundles) the engines hold: one per tensor-parallel rank."""
        return self.num_engines * self.tensor_parallel_size


class SamplingSection(Section):
    temperature: float = Field(1.0, ge=0, description="0 = greedy")
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int | Literal["family"] = Field(
        0, description="0 disables top-k; 'family': the chat family's default (rl_safety.data.chat: 20 for Qwen3)")
    max_new_tokens: int = Field(256, ge=1)

    @field_validator("top_k", mode="before")
    @classmethod
    def _one_spelling_for_off(cls, value: Any) -> Any:
        if value is None or (isinstance(value, int) and value < 0):
            raise ValueError(f"top_k={value!r}: write 0 to disable top-k ('family' for the chat family's default)")
        return value


class RepeatedSampling(SamplingSection):
    """Sampling with a number of samples per prompt (eval, data generation). GRPO's count is its
    group size, `algorithm.group_size`."""

    n: int = Field(1, ge=1, description="samples per prompt")


def resolved_top_k(sampling: SamplingSection, family_top_k: int) -> int:
    """The top-k vLLM gets (0: off), with 'family' replaced by the chat family's default."""
    return family_top_k if sampling.top_k == "family" else sampling.top_k


# A judge's context default: room for a long response and the judge's instructions.
JudgeEngineSection = with_defaults("JudgeEngineSection", EngineSection, max_model_len=8192)
