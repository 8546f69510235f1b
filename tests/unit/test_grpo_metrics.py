"""What a GRPO step reports from its learners' sums: per-token means over the tokens in the loss,
added over ranks (one of which may have had nothing to train on), never a division by 0."""

from __future__ import annotations

import math

import torch

from rl_safety.trainers.grpo_metrics import importance_metrics, merge_learner_stats, step_metrics


def rank_stats(tokens: float, **sums: float) -> dict[str, float]:
    return {"token_count": tokens, "loss": 0.5, "grad_norm": 1.5, "learning_rate": 1e-3,
            "optimizer_steps": 2.0, "empty_mini_batches": 0.0, "micro_batches": 4.0, "padding_micro_batches": 1.0, **sums}


def report(train_stats: dict[str, float]) -> dict[str, float]:
    B = 4
    return step_metrics({"r": [1.0, 0.0, None, 1.0]}, torch.tensor([1.0, 0.0, 0.5, 1.0]), torch.zeros(B),
                        torch.tensor([3.0, 4.0, 5.0, 6.0]), torch.tensor([False, True, False, False]),
                        train_stats, {"timing/train": 2.0})


def test_per_token_means_add_up_over_ranks_even_when_one_rank_had_no_token():
    # rank 1's mini-batches were all filtered out: it reports no per-token sums at all
    merged = merge_learner_stats([rank_stats(6.0, clip_fraction_sum=3.0, entropy_sum=12.0, kl_sum=1.5,
                                             real_tokens=90.0, computed_tokens=100.0),
                                  rank_stats(0.0, real_tokens=0.0, computed_tokens=0.0)], optimizer_steps=2)
    assert merged["loss"] == 0.5  # (0.5 + 0.5) / 2 optimizer steps
    assert (merged["grad_norm"], merged["optimizer_steps"], merged["empty_mini_batches"]) == (1.5, 2.0, 0.0)
    assert (merged["micro_batches"], merged["padding_micro_batches"]) == (4.0, 2.0)  # per rank; over ranks
    assert merged["real_token_fraction"] == 0.9  # over the ranks' computed tokens
    m = report(merged)
    assert m["train/real_token_fraction"] == 0.9
    assert (m["clip_fraction"], m["entropy"], m["kl"], m["train/loss_tokens"]) == (0.5, 2.0, 0.25, 6.0)
    assert m["reward/r/mean"] == 2 / 3 and m["reward/r/coverage"] == 0.75


def test_a_step_without_a_token_in_the_loss_reports_nan_means_not_an_error():
    merged = merge_learner_stats([rank_stats(0.0, entropy_sum=0.0), rank_stats(0.0)], optimizer_steps=1)
    m = report(merged)
    assert math.isnan(m["entropy"]) and m["train/loss_tokens"] == 0.0
    assert math.isnan(m["train/real_token_fraction"])  # no micro-batch ran


def test_importance_metrics_over_the_tokens_in_the_loss():
    loss_mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    ratios = torch.tensor([[1.0, 3.0, 9.0], [2.5, 0.0, 0.0]])  # 9.0 is outside the loss
    weights = ratios.clamp(max=2.0) * loss_mask
    m = importance_metrics(weights, ratios, loss_mask, cap=2.0)
    assert m == {"importance/weight_mean": 5.0 / 3, "importance/weight_max": 2.0, "importance/ratio_max": 9.0,
                 "importance/over_cap_fraction": 2 / 3}
    assert math.isnan(importance_metrics(weights * 0, ratios, loss_mask * 0, cap=2.0)["importance/weight_mean"])
