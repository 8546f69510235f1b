"""Advantage estimators: token-level rewards -> token-level advantages, selected by
`algorithm.advantage_estimator`.

An estimator is `fn(token_rewards, mask, group_size) -> advantages`: `token_rewards` [B, T] holds
each sequence's (shaped) reward on its last response token, minus the per-token KL penalty when
`algorithm.kl_placement=reward`; `mask` [B, T] marks the response tokens; rows [g*G, (g+1)*G) are
the G completions of prompt g. It returns [B, T], or [B] for one advantage per sequence (spread
over its tokens). Register a new one with `@register_advantage("name")` (README: "Extending").
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from rl_safety.algorithms.grpo_math import split_groups
from rl_safety.algorithms.registry import Registry

AdvantageFn = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]
ADVANTAGE_ESTIMATORS: Registry[AdvantageFn] = Registry("advantage estimator")
register_advantage = ADVANTAGE_ESTIMATORS.register


def outcome_token_rewards(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B] sequence rewards -> [B, T]: each on its sequence's last response token, 0 elsewhere
    (verl's token-level rewards for an outcome reward)."""
    present = mask.bool()
    if not present.any(dim=1).all():
        empty = torch.nonzero(~present.any(dim=1)).flatten().tolist()
        raise ValueError(f"sequences {empty} have no response token to carry their reward")
    positions = torch.arange(mask.shape[1]).expand_as(mask)
    last = torch.where(present, positions, -1).max(dim=1).values
    out = torch.zeros(mask.shape, dtype=torch.float32)
    out[torch.arange(mask.shape[0]), last] = scores.float()
    return out


def compute_advantages(name: str, token_rewards: torch.Tensor, mask: torch.Tensor,
                       group_size: int) -> torch.Tensor:
    """The registered estimator `name` applied to the batch: [B, T] advantages, 0 outside `mask`.
    A result of the wrong shape, or one that is not finite, is an error naming the estimator."""
    advantages = ADVANTAGE_ESTIMATORS.get(name)(token_rewards, mask, group_size)
    if advantages.shape == mask.shape[:1]:
        advantages = advantages[:, None].expand_as(mask)
    elif advantages.shape != mask.shape:
        raise ValueError(f"advantage estimator {name!r} returned shape {tuple(advantages.shape)}; expected "
                         f"{tuple(mask.shape[:1])} (per sequence) or {tuple(mask.shape)} (per token)")
    if not torch.isfinite(advantages).all():
        raise ValueError(f"advantage estimator {name!r} returned non-finite advantages")
    return (advantages.float() * mask.float()).detach()


def group_advantages(rewards: torch.Tensor, group_size: int, normalize_std: bool = True,
                     eps: float = 1e-6) -> torch.Tensor:
    """[B] rewards -> [B] advantages: reward minus its group's mean, divided by (the group's
    standard deviation + eps) when `normalize_std`; without it this is Dr.GRPO's advantage.

    The std is the population std (unbiased=False), so a normalized group has exactly unit std
    over the G samples drawn (a 2-sample group with different rewards gets +-1). verl and TRL use
    torch's default unbiased std, which gives advantages sqrt((G - 1) / G) times ours: a constant
    for a fixed G, i.e. only a rescaled learning rate. Equal rewards give advantages of 0."""
    grouped = split_groups(rewards, group_size)
    if not grouped.is_floating_point():
        grouped = grouped.float()
    centered = grouped - grouped.mean(dim=1, keepdim=True)
    if normalize_std:
        centered = centered / (grouped.std(dim=1, unbiased=False, keepdim=True) + eps)
    return centered.reshape(-1)


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(values - mean) / sqrt(var + eps), mean and variance over the entries under `mask` (the
    unbiased variance, as verl's `masked_whiten`; OpenRLHF divides by n, a factor sqrt(n/(n-1))
    that is 1 to within 1e-3 above 500 tokens). Fewer than 2 entries: variance 0."""
    mask = mask.float()
    count = mask.sum()
    mean = (values * mask).sum() / count.clamp(min=1)
    var = ((values - mean).square() * mask).sum() / (count - 1).clamp(min=1)
    return (values - mean) * torch.rsqrt(var + eps)


@register_advantage("grpo")
def grpo(token_rewards: torch.Tensor, mask: torch.Tensor, group_size: int) -> torch.Tensor:
    """GRPO (Shao et al. 2024): (R - group mean) / (group std + 1e-6), R the sequence's total reward."""
    return group_advantages(token_rewards.sum(dim=1), group_size, normalize_std=True)


@register_advantage("dr_grpo")
def dr_grpo(token_rewards: torch.Tensor, mask: torch.Tensor, group_size: int) -> torch.Tensor:
    """Dr.GRPO (Liu et al. 2025): R - group mean; no division by the std, which favours groups whose
    rewards barely differ (pair it with loss_aggregation=seq_mean_token_sum_norm)."""
    return group_advantages(token_rewards.sum(dim=1), group_size, normalize_std=False)


@register_advantage("rloo")
def rloo(token_rewards: torch.Tensor, mask: torch.Tensor, group_size: int) -> torch.Tensor:
    """RLOO (Ahmadian et al. 2024): R_i minus the mean of the other G - 1 rewards of its group,
    i.e. G / (G - 1) x (R_i - group mean): a baseline independent of the sample it is subtracted from."""
    grouped = split_groups(token_rewards.sum(dim=1), group_size)
    others = (grouped.sum(dim=1, keepdim=True) - grouped) / (group_size - 1)
    return (grouped - others).reshape(-1)


@register_advantage("reinforce_plus_plus")
def reinforce_plus_plus(token_rewards: torch.Tensor, mask: torch.Tensor, group_size: int) -> torch.Tensor:
    """REINFORCE++ (Hu 2025; verl, OpenRLHF): each token's return-to-go (gamma = 1: the outcome
    reward, minus the KL penalties from that token on when KL is in the reward), whitened over all
    response tokens of the batch. No group baseline: the batch mean plays that part."""
    returns = (token_rewards * mask).flip(1).cumsum(dim=1).flip(1)
    return masked_whiten(returns, mask)


@register_advantage("reinforce_plus_plus_baseline")
def reinforce_plus_plus_baseline(token_rewards: torch.Tensor, mask: torch.Tensor,
                                 group_size: int) -> torch.Tensor:
    """REINFORCE++-baseline (Hu 2025, as verl computes it): R - group mean (no std), the same on
    each of the sequence's tokens, then whitened over all response tokens of the batch (so the
    scale comes from the batch, not from each group's spread)."""
    centered = group_advantages(token_rewards.sum(dim=1), group_size, normalize_std=False)
    return masked_whiten(centered[:, None].expand_as(mask), mask)
