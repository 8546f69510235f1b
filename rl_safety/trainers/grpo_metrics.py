"""What a GRPO step reports: the metrics.jsonl line (rewards, advantages, lengths, the learners'
sums turned into means, phase times, throughput) and the sampled rollouts saved per step."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

PHASES = ("generation", "reward", "logprobs", "train", "weight_sync")


@contextmanager
def timed(timings: dict[str, float], phase: str) -> Iterator[None]:
    """Add the block's wall seconds to `timings["timing/<phase>"]`."""
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[f"timing/{phase}"] = timings.get(f"timing/{phase}", 0.0) + time.perf_counter() - start


def merge_learner_stats(results: list[dict[str, float]], optimizer_steps: int) -> dict[str, float]:
    """One rollout batch's update over all ranks: token-weighted sums added, the loss averaged
    over the optimizer steps, grad norm and learning rate as rank 0 reports them (all equal)."""
    keys = ("token_count", "clip_tokens", "entropy_sum") + (("kl_sum",) if "kl_sum" in results[0] else ())
    merged = {k: sum(res[k] for res in results) for k in keys}
    merged["loss"] = sum(res["loss"] for res in results) / optimizer_steps
    merged["grad_norm"] = results[0]["grad_norm"]
    merged["learning_rate"] = results[0]["learning_rate"]
    return merged


def step_metrics(raw: dict[str, list[float | None]], total: torch.Tensor, advantages: torch.Tensor,
                 lengths: torch.Tensor, truncated: torch.Tensor, train_stats: dict[str, float],
                 timings: dict[str, float]) -> dict[str, float]:
    """raw: each reward's values (None: not applicable); total, advantages, lengths (response
    tokens), truncated: [B] per sample; train_stats: `merge_learner_stats`' output."""
    metrics: dict[str, float] = {}
    for name, values in raw.items():
        present = [v for v in values if v is not None]
        metrics[f"reward/{name}/mean"] = float(np.mean(present)) if present else float("nan")
        metrics[f"reward/{name}/std"] = float(np.std(present)) if present else float("nan")
        metrics[f"reward/{name}/coverage"] = len(present) / len(values)
    metrics["reward/total/mean"] = float(total.mean())
    metrics["reward/total/std"] = float(total.std(unbiased=False))
    metrics["advantage/mean"] = float(advantages.mean())
    metrics["advantage/std"] = float(advantages.std(unbiased=False))
    metrics["advantage/abs_mean"] = float(advantages.abs().mean())
    metrics["response_length/mean"] = float(lengths.mean())
    metrics["response_length/max"] = float(lengths.max())
    metrics["response_length/min"] = float(lengths.min())
    metrics["response_truncated/fraction"] = float(truncated.float().mean())
    stats = dict(train_stats)
    tokens = stats.pop("token_count")
    metrics["clip_fraction"] = stats.pop("clip_tokens") / tokens
    metrics["entropy"] = stats.pop("entropy_sum") / tokens
    if "kl_sum" in stats:
        metrics["kl"] = stats.pop("kl_sum") / tokens
    metrics.update({f"train/{k}": v for k, v in stats.items()})
    metrics.update(timings)
    metrics["timing/step"] = sum(timings.values())
    metrics["tokens_generated"] = float(lengths.sum())
    metrics["tokens_per_second"] = float(lengths.sum()) / metrics["timing/step"]
    return metrics


def rollout_rows(step: int, samples: list[Any], raw: dict[str, list[float | None]], total: torch.Tensor,
                 advantages: torch.Tensor, keep: int) -> list[dict[str, Any]]:
    """The first `keep` samples of the step as rollouts/step_N.jsonl rows."""
    return [{
        "step": step, "group": s.group, "prompt": s.prompt.text, "completion": s.completion.text,
        **{k: v for k, v in s.prompt.columns.items() if isinstance(v, (str, int, float, bool, type(None), list, dict))},
        "rewards": {k: v[i] for k, v in raw.items()}, "reward": float(total[i]),
        "advantage": float(advantages[i]), "prompt_tokens": len(s.prompt.token_ids),
        "response_tokens": len(s.completion.token_ids), "truncated": s.completion.truncated,
    } for i, s in enumerate(samples[:keep])]
