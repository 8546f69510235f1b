"""GRPO math as pure functions of tensors: importance weights, reward shaping and dynamic
sampling. Advantages are in `advantages`, losses, KL and aggregation in `losses`; logprobs and
entropy from a model's logits in `rl_safety.learner.packing`.

Shapes: a batch of B sequences, grouped contiguously (rows [g*G, (g+1)*G) are the G completions
of prompt g); token-level tensors are [B, T] with `mask` [B, T] (1.0 = a response token that
counts). Logprobs are natural-log probabilities of the sampled tokens.
"""

from __future__ import annotations

from typing import Literal

import torch

# exp() of a log-ratio beyond this overflows float32 or dominates the loss; clamping follows
# OpenRLHF / verl practice (they use the same +-20 bound).
LOG_RATIO_BOUND = 20.0


def split_groups(values: torch.Tensor, group_size: int) -> torch.Tensor:
    """[B] -> [B / G, G], rejecting a batch that does not split into whole groups."""
    if group_size < 1 or values.ndim != 1 or values.numel() % group_size:
        raise ValueError(f"{tuple(values.shape)} rewards do not split into groups of {group_size}")
    return values.view(-1, group_size)


def importance_ratios(old_logprobs: torch.Tensor, rollout_logprobs: torch.Tensor, mask: torch.Tensor,
                      level: Literal["token", "sequence"] = "token") -> torch.Tensor:
    """Uncapped w [B, T] = pi_learner_old / pi_vllm of the sampled tokens, per token or (level
    "sequence") the product over the sequence on each of its tokens; 0 outside the mask, detached.
    exp() of the log-weight is taken after clamping it to at most LOG_RATIO_BOUND, far above any
    useful cap, so a long sequence cannot overflow."""
    if level not in ("token", "sequence"):
        raise ValueError(f"unknown importance weighting level={level!r}")
    mask = mask.float()
    log_w = (old_logprobs - rollout_logprobs) * mask
    if level == "sequence":
        log_w = log_w.sum(dim=1, keepdim=True).expand_as(mask)
    return (log_w.clamp(max=LOG_RATIO_BOUND).exp() * mask).detach()


def truncated_importance_weights(old_logprobs: torch.Tensor, rollout_logprobs: torch.Tensor,
                                 mask: torch.Tensor, cap: float,
                                 level: Literal["token", "sequence"] = "token",
                                 mode: Literal["truncate", "mask"] = "truncate") -> torch.Tensor:
    """Weights [B, T] correcting for sampling with vLLM's numerics rather than the learner's:
    the `importance_ratios` w; `truncate` caps w at `cap` (TIS); `mask` zeroes samples with
    w > cap (MIS). Detached; 0 outside the mask."""
    if mode not in ("truncate", "mask"):
        raise ValueError(f"unknown importance weighting mode={mode!r}")
    w = importance_ratios(old_logprobs, rollout_logprobs, mask, level)
    return w.clamp(max=cap) if mode == "truncate" else w * (w <= cap)


def overlong_penalty(lengths: torch.Tensor, max_len: int, buffer_len: int,
                     penalty_factor: float = 1.0) -> torch.Tensor:
    """DAPO soft overlong punishment [B]: 0 up to max_len - buffer_len, then falling linearly to
    -penalty_factor at max_len (and staying there). `lengths` in tokens."""
    if not 0 < buffer_len <= max_len:
        raise ValueError(f"overlong buffer_len={buffer_len} must lie in (0, max_len={max_len}]")
    start = max_len - buffer_len
    excess = (lengths.float() - start).clamp(min=0, max=buffer_len)
    return -excess / buffer_len * penalty_factor


def overlong_filter_mask(truncated: torch.Tensor) -> torch.Tensor:
    """[B] bool (hit the length limit) -> [B] float: 0 drops a truncated response from the loss
    (its reward judged an unfinished answer)."""
    return (~truncated.bool()).float()


def dynamic_sampling_keep(rewards: torch.Tensor, group_size: int, tol: float = 1e-6) -> torch.Tensor:
    """[B] rewards -> [B / G] bool: True for groups whose rewards are not all equal (max - min >
    tol). A flat group has zero advantage for every sample, so it carries no gradient (DAPO's
    dynamic sampling); `tol` keeps float noise from reading as spread."""
    grouped = split_groups(rewards, group_size)
    return (grouped.max(dim=1).values - grouped.min(dim=1).values) > tol


class DynamicSamplingError(RuntimeError):
    """Dynamic sampling found too few groups with reward spread, and the config says to stop."""


def fill_batch(kept: list, flat: list, size: int, shortfall: Literal["pad", "error"],
               context: str = "") -> tuple[list, dict[str, int]]:
    """The `size` groups dynamic sampling trains on, from the groups drawn this step in order:
    the first `size` with reward spread (`kept`); the rest of them are surplus (DAPO discards them
    too). With fewer, `shortfall="pad"` fills up with flat groups (zero advantage: no signal,
    only cost) and `"error"` raises DynamicSamplingError (`context` says where). Stats: the counts
    of groups with spread in the batch, flat ones padded in, and both kinds dropped."""
    missing = max(0, size - len(kept))
    if missing and shortfall == "error":
        raise DynamicSamplingError(
            f"{context}only {len(kept)} of the {size} groups a batch needs have reward spread "
            f"({len(flat)} flat groups drawn). Draw more per round (algorithm.dynamic_sampling_oversample), "
            "allow more rounds (algorithm.max_sampling_rounds), or train on padded batches "
            "(algorithm.dynamic_sampling_shortfall=pad)")
    if missing > len(flat):
        raise ValueError(f"{context}{len(kept) + len(flat)} groups drawn, fewer than the {size} a batch needs")
    stats = {"groups_with_spread": min(len(kept), size), "padded_flat_groups": missing,
             "surplus_groups_dropped": max(0, len(kept) - size), "flat_groups_dropped": len(flat) - missing}
    return kept[:size] + flat[:missing], stats
