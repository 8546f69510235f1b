"""GRPO math as pure functions of tensors.

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


def _grouped(values: torch.Tensor, group_size: int) -> torch.Tensor:
    """[B] -> [B / G, G], rejecting a batch that does not split into whole groups."""
    if group_size < 1 or values.ndim != 1 or values.numel() % group_size:
        raise ValueError(f"{tuple(values.shape)} rewards do not split into groups of {group_size}")
    return values.view(-1, group_size)


def group_advantages(rewards: torch.Tensor, group_size: int, normalize_std: bool = True,
                     eps: float = 1e-6) -> torch.Tensor:
    """[B] rewards -> [B] advantages: reward minus its group's mean, divided by (the group's
    standard deviation + eps) when `normalize_std`; without it this is Dr.GRPO's advantage.

    The std is the population std (unbiased=False), so a normalized group has exactly unit std
    over the G samples drawn (a 2-sample group with different rewards gets +-1). verl and TRL use
    torch's default unbiased std, which gives advantages sqrt((G - 1) / G) times ours: a constant
    for a fixed G, i.e. only a rescaled learning rate. Equal rewards give advantages of 0."""
    grouped = _grouped(rewards, group_size)
    if not grouped.is_floating_point():
        grouped = grouped.float()
    centered = grouped - grouped.mean(dim=1, keepdim=True)
    if normalize_std:
        centered = centered / (grouped.std(dim=1, unbiased=False, keepdim=True) + eps)
    return centered.reshape(-1)


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
               estimator: Literal["k1", "k2", "k3"]) -> torch.Tensor:
    """Per-token estimate [B, T] of KL(pi || ref) from tokens sampled from pi (Schulman, 2020):
    k1 = log pi - log ref (unbiased, high variance, can be negative);
    k2 = (log pi - log ref)^2 / 2 (biased, low variance);
    k3 = ref/pi - log(ref/pi) - 1 (unbiased, low variance, always >= 0)."""
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio.square()
    if estimator == "k3":
        neg = (-log_ratio).clamp(-LOG_RATIO_BOUND, LOG_RATIO_BOUND)
        return neg.exp() - neg - 1
    raise ValueError(f"unknown KL estimator {estimator!r}")


def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                mask: torch.Tensor, clip_low: float, clip_high: float,
                importance_weights: torch.Tensor | None = None,
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO clipped surrogate with separate bounds (DAPO clip-higher): per-token loss [B, T] =
    -min(r A, clip(r, 1 - clip_low, 1 + clip_high) A), r = pi / pi_old, optionally times a
    (detached) importance weight for the rollout/learner mismatch. `advantages` is [B].
    The loss is 0 outside `mask`. Stats (detached 0-d tensors, means over masked tokens):
    `clip_fraction`, the share of tokens where the clipped branch was the minimum (its gradient
    is zero there); `approx_kl`, the k3 estimate of KL(pi_old || pi), how far the updates since
    the rollout have moved the policy."""
    ratio = (logprobs - old_logprobs).clamp(-LOG_RATIO_BOUND, LOG_RATIO_BOUND).exp()
    adv = advantages[:, None]
    unclipped = ratio * adv
    clipped = ratio.clamp(1 - clip_low, 1 + clip_high) * adv
    loss = -torch.minimum(unclipped, clipped)
    if importance_weights is not None:
        loss = loss * importance_weights.detach()
    mask = mask.float()
    tokens = mask.sum().clamp(min=1)
    with torch.no_grad():
        stats = {
            "clip_fraction": ((clipped < unclipped).float() * mask).sum() / tokens,
            "approx_kl": (kl_penalty(old_logprobs, logprobs, "k3") * mask).sum() / tokens,
        }
    return loss * mask, stats


def truncated_importance_weights(old_logprobs: torch.Tensor, rollout_logprobs: torch.Tensor,
                                 mask: torch.Tensor, cap: float,
                                 level: Literal["token", "sequence"] = "token",
                                 mode: Literal["truncate", "mask"] = "truncate") -> torch.Tensor:
    """Weights [B, T] correcting for sampling with vLLM's numerics rather than the learner's:
    w = pi_learner_old / pi_vllm of the sampled tokens (per token, or the product over the
    sequence). `truncate` caps w at `cap` (TIS); `mask` zeroes samples with w > cap (MIS).
    Detached; 0 outside the mask. exp() of the log-weight is taken after clamping it to at most
    LOG_RATIO_BOUND, far above any useful cap, so a long sequence cannot overflow."""
    if level not in ("token", "sequence") or mode not in ("truncate", "mask"):
        raise ValueError(f"unknown importance weighting level={level!r} mode={mode!r}")
    mask = mask.float()
    log_w = (old_logprobs - rollout_logprobs) * mask
    if level == "sequence":
        log_w = log_w.sum(dim=1, keepdim=True).expand_as(mask)
    w = log_w.clamp(max=LOG_RATIO_BOUND).exp()
    w = w.clamp(max=cap) if mode == "truncate" else w * (w <= cap)
    return (w * mask).detach()


def aggregate_loss(per_token: torch.Tensor, mask: torch.Tensor,
                   mode: Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"],
                   norm_constant: float | None = None, global_token_count: float | None = None,
                   global_seq_count: float | None = None) -> torch.Tensor:
    """Scalar loss from per-token losses [B, T].

    The global counts are the token / sequence counts of the whole mini-batch across data-parallel
    ranks and micro-batches. Dividing each piece by them (instead of by its own count) makes the
    sum of the pieces' gradients equal the gradient of the loss of the whole mini-batch, whatever
    the split. Without them the piece is its own whole.
    - token_mean: sum of token losses / number of tokens (DAPO; long answers weigh more);
    - seq_mean_token_mean: mean over sequences of each sequence's token mean (original GRPO);
    - seq_mean_token_sum_norm: sum of token losses / (norm_constant x sequences) (Dr.GRPO: a
      constant normalizer, e.g. the max response length, so length carries no bias)."""
    mask = mask.float()
    masked = per_token * mask
    if mode == "token_mean":
        tokens = global_token_count if global_token_count is not None else mask.sum().clamp(min=1)
        return masked.sum() / tokens
    sequences = global_seq_count if global_seq_count is not None else per_token.shape[0]
    if mode == "seq_mean_token_mean":
        per_seq = masked.sum(dim=1) / mask.sum(dim=1).clamp(min=1)
        return per_seq.sum() / sequences
    if mode == "seq_mean_token_sum_norm":
        if norm_constant is None:
            raise ValueError("seq_mean_token_sum_norm needs norm_constant (the max response length)")
        return masked.sum() / (norm_constant * sequences)
    raise ValueError(f"unknown loss aggregation {mode!r}")


def logprobs_from_logits(logits: torch.Tensor, tokens: torch.Tensor,
                         temperature: float = 1.0) -> torch.Tensor:
    """[B, T, V] logits, [B, T] tokens -> [B, T] log softmax(logits / temperature)[token]: the
    definition of vLLM's processed logprobs when no top-k/top-p truncation applies."""
    if temperature != 1.0:
        logits = logits / temperature
    picked = logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """[B, T, V] -> [B, T] entropy of softmax(logits), via logsumexp for stability."""
    log_p = logits - torch.logsumexp(logits, dim=-1, keepdim=True)
    return -(log_p.exp() * log_p).sum(dim=-1)


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
    grouped = _grouped(rewards, group_size)
    return (grouped.max(dim=1).values - grouped.min(dim=1).values) > tol
