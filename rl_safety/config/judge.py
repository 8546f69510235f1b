"""The guard-model judge section, shared by evaluation suites (`guard`, `refusal_judge`) and the
ThinkSafe filter (`thinksafe.guard`): which guard, in which format, reading what."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from rl_safety.config.loader import Section


class Guard(Section):
    """A guard model served by vLLM in a Ray actor (rewards.judge.guard_judge)."""

    model: str = Field(description="guard checkpoint: hub id or path (Llama-Guard-3-8B, allenai/wildguard)")
    format: Literal["llama_guard_3", "wildguard"] = "llama_guard_3"
    view: Literal["answer", "full"] = Field("answer", description="judge the final answer or reasoning + answer")
    max_response_chars: int | None = Field(None, ge=1, description="keep the end of longer responses")
    num_gpus: float | None = Field(None, ge=0, description="None: 1 if the cluster has GPUs")
    max_model_len: int = Field(8192, ge=2, description="the judge's context: prompt + response + its template must fit")
    vllm_kwargs: dict[str, Any] = Field(default_factory=dict)
