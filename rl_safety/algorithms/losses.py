"""The loss a learner backpropagates: a policy loss per token (`algorithm.policy_loss`), plus a KL
term to the reference when `algorithm.kl_placement=loss`, reduced to a scalar by a loss
aggregation (`algorithm.loss_aggregation`). Policy losses and aggregations are registries
(`@register_policy_loss`, `@register_loss_aggregation`), like the advantage estimators.

Shapes as in `grpo_math`: token tensors [B, T], `mask` [B, T] (1.0 = a response token in the
loss), advantages [B, T] (see `advantages.compute_advantages`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from rl_safety.algorithms.grpo_math import LOG_RATIO_BOUND
from rl_safety.algorithms.registry import Registry

# A policy loss: (logprobs, old_logprobs, advantages, mask, algorithm config) -> (per-token loss
# [B, T], per-token statistics {name: [B, T]}; each is logged as its mean over the loss's tokens).
PolicyLossFn = Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]]
POLICY_LOSSES: Registry[PolicyLossFn] = Registry("policy loss")
register_policy_loss = POLICY_LOSSES.register

# A loss aggregation: (masked per-token loss [B, T], mask, tokens, sequences, norm_constant) ->
# scalar; `tokens` / `sequences` are the mini-batch's counts over all ranks (see `aggregate`).
AggregationFn = Callable[[torch.Tensor, torch.Tensor, float, float, float], torch.Tensor]
LOSS_AGGREGATIONS: Registry[AggregationFn] = Registry("loss aggregation")
register_loss_aggregation = LOSS_AGGREGATIONS.register

KL_ESTIMATORS = ("k1", "k2", "k3", "k3+")


# ------------------------------------------------------------------------------- KL estimators
def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str,
                k3_clamp: float | None = None) -> torch.Tensor:
    """Per-token estimate [B, T] of KL(pi || ref) from tokens sampled from pi (Schulman, 2020),
    x = log pi - log ref of the sampled token.

    Values, and their expectation over tokens drawn from pi:
    - k1 = x: KL(pi || ref), unbiased, high variance, can be negative;
    - k2 = x^2 / 2: KL(pi || ref) to second order (biased), low variance;
    - k3 = e^-x - 1 + x: KL(pi || ref), unbiased, >= 0, low variance (clamped at `k3_clamp`,
      as verl clamps it at 10; its exp() argument at +-LOG_RATIO_BOUND);
    - k3+: k3's value with k2's gradient (verl's straight-through "+" variants).

    As a loss term its gradient (expectation over tokens drawn from pi, through log pi only) is a
    different matter; tests/algorithms checks each on a categorical against the exact KLs:
    - k1: E[grad log pi] = 0: no regularising gradient at all (refused in the loss);
    - k2 and k3+: E[x grad log pi] = grad KL(pi || ref), the reverse (mode-seeking) KL;
    - k3: E[(1 - ref/pi) grad log pi] = -sum_y ref(y) grad log pi(y) = grad KL(ref || pi), the
      forward (mass-covering) KL, although its value estimates KL(pi || ref).
    In the reward (`kl_placement=reward`) no gradient flows through the estimate; there k1 is the
    standard choice (the KL-regularised return R - beta log(pi / ref) of RLHF).
    The tokens come from the rollout policy, so past the first optimizer step of a batch these
    expectations hold only approximately."""
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        return log_ratio
    k2 = 0.5 * log_ratio.square()
    if estimator == "k2":
        return k2
    if estimator not in ("k3", "k3+"):
        raise ValueError(f"unknown KL estimator {estimator!r}; expected one of {KL_ESTIMATORS}")
    neg = (-log_ratio).clamp(-LOG_RATIO_BOUND, LOG_RATIO_BOUND)
    k3 = neg.exp() - neg - 1
    if k3_clamp is not None:
        k3 = k3.clamp(max=k3_clamp)
    if estimator == "k3":
        return k3
    return k2 - k2.detach() + k3.detach()


def kl_reward_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor,
                      estimator: str, coef: float, k3_clamp: float | None = None) -> torch.Tensor:
    """coef x the per-token KL estimate on response tokens [B, T], detached: what
    `kl_placement=reward` subtracts from the token rewards (verl's `apply_kl_penalty`, OpenRLHF's
    `compute_reward`), so an estimator sees R - coef x sum_t kl_t (the GRPO family) or its
    return-to-go (REINFORCE++)."""
    return (coef * kl_estimate(logprobs, ref_logprobs, estimator, k3_clamp) * mask.float()).detach()


# ------------------------------------------------------------------------------ policy losses
def clipped_surrogate(ratio: torch.Tensor, advantages: torch.Tensor, clip_low: float, clip_high: float,
                      dual_clip: float | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token -min(r A, clip(r, 1 - clip_low, 1 + clip_high) A) (PPO; separate bounds = DAPO
    clip-higher). With `dual_clip` = c (> 1; Ye et al. 2020, verl's clip_ratio_c): where A < 0
    the loss is at most c |A|, so a ratio that has run far above 1 on a bad sample cannot blow the
    loss up (plain PPO leaves it unbounded there). The gradient is 0 wherever a clip binds.
    Stats per token: `clip_fraction` (the clipped branch is the minimum), `dual_clip_fraction`."""
    unclipped = ratio * advantages
    clipped = ratio.clamp(1 - clip_low, 1 + clip_high) * advantages
    loss = -torch.minimum(unclipped, clipped)
    dual = torch.zeros_like(loss, dtype=torch.bool)
    if dual_clip is not None:
        cap = -dual_clip * advantages
        dual = (advantages < 0) & (loss > cap)
        loss = torch.where(dual, cap, loss)
    return loss, {"clip_fraction": (clipped < unclipped).float(), "dual_clip_fraction": dual.float()}


@register_policy_loss("ppo_clip")
def ppo_clip(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
             mask: torch.Tensor, cfg: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped surrogate with r = pi / pi_old per token (`clipped_surrogate`, with
    cfg.clip_low / clip_high / dual_clip). Stat `approx_kl`: k3 of KL(pi_old || pi) per token, how
    far the updates since the rollout have moved the policy."""
    ratio = (logprobs - old_logprobs).clamp(-LOG_RATIO_BOUND, LOG_RATIO_BOUND).exp()
    loss, stats = clipped_surrogate(ratio, advantages, cfg.clip_low, cfg.clip_high, cfg.dual_clip)
    stats["approx_kl"] = kl_estimate(old_logprobs, logprobs, "k3").detach()
    return loss, stats


@register_policy_loss("gspo")
def gspo(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
         mask: torch.Tensor, cfg: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GSPO (Zheng et al. 2025): one ratio per sequence, s = exp(mean over its response tokens of
    log pi - log pi_old), clipped like PPO (the paper: clip_low 3e-4, clip_high 4e-4); every token
    carries its sequence's loss, so with `seq_mean_token_mean` (required at config load) the loss
    is the mean over sequences of -min(s A, clip(s) A), and d loss / d log pi_t = -s A / |y| / B
    where unclipped. The gradient flows through the mean (OpenRLHF's form; verl's stop-gradient
    form has the same value and gradient)."""
    m = mask.float()
    mean_log_ratio = ((logprobs - old_logprobs) * m).sum(dim=1) / m.sum(dim=1).clamp(min=1)
    ratio = mean_log_ratio.clamp(-LOG_RATIO_BOUND, LOG_RATIO_BOUND).exp()[:, None].expand_as(logprobs)
    loss, stats = clipped_surrogate(ratio, advantages, cfg.clip_low, cfg.clip_high, cfg.dual_clip)
    stats["approx_kl"] = kl_estimate(old_logprobs, logprobs, "k3").detach()
    return loss, stats


# --------------------------------------------------------------------------- loss aggregation
def loss_counts(mask: torch.Tensor) -> tuple[float, float]:
    """(tokens in the loss, sequences with at least one token in the loss) of `mask` [B, T]. A
    sequence whose tokens are all masked (e.g. dropped by `overlong: filter`) is not counted."""
    mask = mask.float()
    return float(mask.sum()), float((mask.sum(dim=1) > 0).sum())


def aggregate(name: str, per_token: torch.Tensor, mask: torch.Tensor, norm_constant: float,
              global_tokens: float | None = None, global_sequences: float | None = None) -> torch.Tensor:
    """Scalar loss from per-token losses [B, T] with the registered aggregation `name`.

    The global counts (`loss_counts` of the whole mini-batch across data-parallel ranks and
    micro-batches) make the sum of the pieces' gradients equal the gradient of the loss of the
    whole mini-batch, whatever the split; without them the piece is its own whole. Counts are
    clamped at 1: a piece (or mini-batch) without a token in the loss gives 0, never NaN."""
    mask = mask.float()
    if global_tokens is None or global_sequences is None:  # read from the device only when needed
        global_tokens, global_sequences = loss_counts(mask)
    tokens, sequences = max(1.0, global_tokens), max(1.0, global_sequences)
    return LOSS_AGGREGATIONS.get(name)(per_token * mask, mask, tokens, sequences, norm_constant)


@register_loss_aggregation("token_mean")
def token_mean(masked: torch.Tensor, mask: torch.Tensor, tokens: float, sequences: float,
               norm_constant: float) -> torch.Tensor:
    """Sum of token losses / number of tokens (DAPO; long answers weigh more)."""
    return masked.sum() / tokens


@register_loss_aggregation("seq_mean_token_mean")
def seq_mean_token_mean(masked: torch.Tensor, mask: torch.Tensor, tokens: float, sequences: float,
                        norm_constant: float) -> torch.Tensor:
    """Mean over sequences of each sequence's token mean (original GRPO; GSPO)."""
    per_sequence = masked.sum(dim=1) / mask.sum(dim=1).clamp(min=1)
    return per_sequence.sum() / sequences


@register_loss_aggregation("seq_mean_token_sum_norm")
def seq_mean_token_sum_norm(masked: torch.Tensor, mask: torch.Tensor, tokens: float, sequences: float,
                            norm_constant: float) -> torch.Tensor:
    """Sum of token losses / (norm_constant x sequences), norm_constant = rollout.max_new_tokens
    (Dr.GRPO: a constant normalizer, so length carries no bias)."""
    return masked.sum() / (norm_constant * sequences)


# ------------------------------------------------------------------------ the learner's loss
def grpo_loss(logprobs: torch.Tensor, batch: dict[str, Any], cfg: Any,
              norm_constant: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss one micro-batch contributes to its mini-batch, from the current policy's
    `logprobs` [B, T] and `batch`: response_mask, old_logprobs, advantages, optionally
    importance_weights (detached factor per token), ref_logprobs (KL in the loss) and the
    mini-batch's global_tokens / global_sequences. `cfg` is the algorithm section.

    Returns the scalar loss and token sums to add up over micro-batches and ranks: `token_count`,
    and `NAME_sum` for every per-token statistic of the policy loss (and `kl_sum`), as 0-d
    tensors on the loss's device: the caller reads them after the backward, so the forward and
    backward run without a device-to-host wait."""
    mask = batch["response_mask"].float()
    per_token, token_stats = POLICY_LOSSES.get(cfg.policy_loss)(
        logprobs, batch["old_logprobs"], batch["advantages"], mask, cfg)
    if batch.get("importance_weights") is not None:
        per_token = per_token * batch["importance_weights"].detach()
    if batch.get("ref_logprobs") is not None:
        kl = kl_estimate(logprobs, batch["ref_logprobs"], cfg.kl_estimator, cfg.k3_clamp)
        per_token = per_token + cfg.kl_coef * kl
        token_stats["kl"] = kl.detach()
    loss = aggregate(cfg.loss_aggregation, per_token, mask, norm_constant,
                     batch.get("global_tokens"), batch.get("global_sequences"))
    sums = {"token_count": mask.sum()}
    sums.update({f"{name}_sum": (values.detach() * mask).sum() for name, values in token_stats.items()})
    return loss, sums
