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
    """One rollout batch's update over all ranks: token counts, per-token sums (`*_sum`) and the
    zero-loss micro-batches that evened out the ranks' packed counts added (a rank whose
    mini-batches were all empty has none), the loss averaged over the optimizer
    steps (an empty mini-batch counts as loss 0), the real-token fraction of the micro-batches
    (real tokens / token positions computed, over all ranks; NaN when none trained), the rest as
    rank 0 reports it (all equal)."""
    summed = {k for res in results for k in res if k.endswith("_sum")}
    summed |= {"token_count", "loss", "padding_micro_batches", "real_tokens", "computed_tokens"}
    merged = {k: sum(res.get(k, 0.0) for res in results) for k in summed}
    merged["loss"] /= optimizer_steps
    real, computed = merged.pop("real_tokens"), merged.pop("computed_tokens")
    merged["real_token_fraction"] = real / computed if computed else float("nan")
    for k in ("grad_norm", "learning_rate", "optimizer_steps", "empty_mini_batches", "micro_batches"):
        merged[k] = results[0][k]
    return merged


def step_metrics(raw: dict[str, list[float | None]], total: torch.Tensor, advantages: torch.Tensor,
                 lengths: torch.Tensor, truncated: torch.Tensor, train_stats: dict[str, float],
                 timings: dict[str, float]) -> dict[str, float]:
    """raw: each reward's values (None: not applicable); total, advantages (each sequence's mean
    over its tokens), lengths (response tokens), truncated: [B] per sample; train_stats:
    `merge_learner_stats`' output."""
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
    # per-token means over the tokens in the loss (clip_fraction, entropy, kl, ...): undefined,
    # NaN, when every response was filtered out
    stats = dict(train_stats)
    tokens = stats.pop("token_count")
    for key in [k for k in stats if k.endswith("_sum")]:
        metrics[key.removesuffix("_sum")] = stats.pop(key) / tokens if tokens else float("nan")
    metrics["train/loss_tokens"] = tokens
    metrics.update({f"train/{k}": v for k, v in stats.items()})
    metrics.update(timings)
    metrics["timing/step"] = sum(timings.values())
    metrics["tokens_generated"] = float(lengths.sum())
    metrics["tokens_per_second"] = float(lengths.sum()) / metrics["timing/step"]
    return metrics


def importance_metrics(weights: torch.Tensor, ratios: torch.Tensor, loss_mask: torch.Tensor,
                       cap: float) -> dict[str, float]:
    """The importance correction of a step: weights (after truncation / masking) and the raw
    ratios learner / rollout [B, T] over the tokens in the loss (NaN means: no token in it)."""
    in_loss = float(loss_mask.sum()) or float("nan")
    return {"importance/weight_mean": float(weights.sum()) / in_loss,
            "importance/weight_max": float(weights.max()),
            "importance/ratio_max": float(ratios.max()),
            "importance/over_cap_fraction": float(((ratios > cap) * loss_mask).sum()) / in_loss}


def rollout_rows(step: int, samples: list[Any], raw: dict[str, list[float | None]], total: torch.Tensor,
                 advantages: torch.Tensor, keep: int, kl_penalty: torch.Tensor | None = None) -> list[dict[str, Any]]:
    """The first `keep` samples of the step as rollouts/step_N.jsonl rows: rewards (raw and the
    shaped total the estimator saw, before a KL penalty, listed apart: `kl_penalty` [B], the
    sum over each response), mean advantage per token."""
    return [{
        "step": step, "group": s.group, "prompt": s.prompt.text, "completion": s.completion.text,
        **{k: v for k, v in s.prompt.columns.items() if isinstance(v, (str, int, float, bool, type(None), list, dict))},
        "rewards": {k: v[i] for k, v in raw.items()}, "reward": float(total[i]),
        "advantage": float(advantages[i]), "prompt_tokens": len(s.prompt.token_ids),
        "response_tokens": len(s.completion.token_ids), "truncated": s.completion.truncated,
        **({"kl_penalty": float(kl_penalty[i])} if kl_penalty is not None else {}),
    } for i, s in enumerate(samples[:keep])]
