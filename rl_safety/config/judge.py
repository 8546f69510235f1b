"""Judge sections: a judge model served by vLLM engines (a guard, a rubric judge), shared by
evaluation suites (`guard`, `refusal_judge`, `strongreject_judge`) and the ThinkSafe filter
(`thinksafe.guard`). A section's fields are the arguments of its reward function in
`rewards.judge` / `rewards.strongreject`, passed as they are."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from rl_safety.config.engine import JudgeEngineSection
from rl_safety.config.loader import Section

# Keys of earlier judge sections and where each setting is now ({section}: the section's path).
MOVED_JUDGE_KEYS = {
    "vllm_kwargs": "{section}.engine (num_engines, tensor_parallel_size, max_model_len, gpu_memory_utilization, "
                   "kv_cache_memory_mb, enforce_eager) and {section}.dtype",
    "max_model_len": "{section}.engine.max_model_len",
    "num_gpus": "set by the cluster (a judge takes a GPU per tensor-parallel rank when the cluster has GPUs)",
}


def moved_judge_keys(*sections: str) -> dict[str, str]:
    """`renamed` entries for the judge sections at these dotted paths."""
    return {f"{section}.{old}": new.format(section=section) for section in sections
            for old, new in MOVED_JUDGE_KEYS.items()}


class Judge(Section):
    model: str = Field(description="judge checkpoint: hub id or path")
    view: Literal["answer", "full"] = Field("answer", description="judge the final answer or reasoning + answer")
    max_response_chars: int | None = Field(None, ge=1, description="keep the end of longer responses")
    dtype: str = Field("auto", description="the judge's vLLM dtype")
    engine: JudgeEngineSection = Field(default_factory=JudgeEngineSection, description="the judge's vLLM engines")


class Guard(Judge):
    """A guard model (rewards.judge.guard_judge): Llama Guard 3 or WildGuard."""

    model: str = Field(description="guard checkpoint: hub id or path (Llama-Guard-3-8B, allenai/wildguard)")
    format: Literal["llama_guard_3", "wildguard"] = "llama_guard_3"
