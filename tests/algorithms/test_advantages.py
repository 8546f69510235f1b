"""Advantage estimators against plain-Python loops written from the papers' definitions, and the
registry (an estimator from a user's file: tests/extending)."""

from __future__ import annotations

import math
import random
import statistics

import pytest
import torch
from torch.testing import assert_close

from rl_safety.algorithms import advantages as adv

def outcome_batch(seed: int, groups: int = 3, G: int = 4, T: int = 9):
    """Scores [B] and a response mask [B, T]: a prompt of 1-3 tokens, then 1-5 response tokens,
    then padding (rows as `build_batch` lays them out)."""
    rng = random.Random(seed)
    B = groups * G
    scores = [rng.choice([0.0, 0.25, 1.0]) + rng.random() * 0.1 for _ in range(B)]
    mask = torch.zeros(B, T)
    spans = []
    for b in range(B):
        start, length = rng.randint(0, 2), rng.randint(1, 5)
        mask[b, start:start + length] = 1
        spans.append(range(start, start + length))
    return scores, mask, spans


def whiten(values: list[float]) -> list[float]:
    """(x - mean) / sqrt(unbiased variance + 1e-8), by the formula."""
    mean = statistics.fmean(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return [(v - mean) / math.sqrt(var + 1e-8) for v in values]


def check_per_sequence(got: torch.Tensor, mask: torch.Tensor, want: list[float]) -> None:
    """Each sequence's advantage on each of its response tokens, 0 elsewhere."""
    for b, value in enumerate(want):
        for t in range(mask.shape[1]):
            expected = value if mask[b, t] else 0.0
            assert math.isclose(float(got[b, t]), expected, rel_tol=1e-5, abs_tol=1e-6), (b, t)


def test_outcome_token_rewards_sit_on_the_last_response_token():
    scores, mask, spans = outcome_batch(0)
    got = adv.outcome_token_rewards(torch.tensor(scores), mask)
    for b, span in enumerate(spans):
        for t in range(mask.shape[1]):
            assert float(got[b, t]) == pytest.approx(scores[b] if t == span[-1] else 0.0)
    mask[2] = 0
    with pytest.raises(ValueError, match=r"sequences \[2\] have no response token"):
        adv.outcome_token_rewards(torch.tensor(scores), mask)


@pytest.mark.parametrize("name", ["grpo", "dr_grpo"])
def test_grpo_and_dr_grpo_match_a_loop(name):
    scores, mask, _ = outcome_batch(1)
    got = adv.compute_advantages(name, adv.outcome_token_rewards(torch.tensor(scores), mask), mask, 4)
    want = []
    for g in range(3):
        group = scores[g * 4:(g + 1) * 4]
        mean, std = statistics.fmean(group), statistics.pstdev(group)
        want += [(r - mean) / (std + 1e-6) if name == "grpo" else r - mean for r in group]
    check_per_sequence(got, mask, want)


def test_group_advantages_of_flat_integer_and_ragged_groups():
    """Equal rewards give 0 (not NaN) under std normalization; integer rewards are accepted;
    a 2-sample group with different rewards gets exactly +-1 (population std)."""
    got = adv.group_advantages(torch.tensor([1, 1, 1, 0, 1, 0]), group_size=2)
    assert_close(got, torch.tensor([0.0, 0.0, 1.0, -1.0, 1.0, -1.0]), atol=1e-5, rtol=0)
    with pytest.raises(ValueError):
        adv.group_advantages(torch.ones(5), group_size=4)
    with pytest.raises(ValueError):
        adv.group_advantages(torch.ones(4), group_size=0)


def test_rloo_matches_a_loop():
    """RLOO: each reward minus the mean of the other G - 1 rewards of its group."""
    scores, mask, _ = outcome_batch(2)
    got = adv.compute_advantages("rloo", adv.outcome_token_rewards(torch.tensor(scores), mask), mask, 4)
    want = []
    for g in range(3):
        group = scores[g * 4:(g + 1) * 4]
        want += [r - statistics.fmean(group[:i] + group[i + 1:]) for i, r in enumerate(group)]
    check_per_sequence(got, mask, want)


def test_reinforce_plus_plus_baseline_matches_a_loop():
    """REINFORCE++-baseline: R - group mean on every response token, whitened over all response
    tokens of the batch (so longer responses weigh more in the mean and variance)."""
    scores, mask, spans = outcome_batch(3)
    got = adv.compute_advantages("reinforce_plus_plus_baseline",
                                 adv.outcome_token_rewards(torch.tensor(scores), mask), mask, 4)
    centered = []
    for g in range(3):
        group = scores[g * 4:(g + 1) * 4]
        centered += [r - statistics.fmean(group) for r in group]
    tokens = [centered[b] for b, span in enumerate(spans) for _ in span]
    whitened = iter(whiten(tokens))
    want = [[next(whitened) for _ in span] for span in spans]
    for b, span in enumerate(spans):
        for t, w in zip(span, want[b]):
            assert math.isclose(float(got[b, t]), w, rel_tol=1e-5, abs_tol=1e-6)
    assert float((got * (1 - mask)).abs().sum()) == 0.0


def test_reinforce_plus_plus_with_kl_in_the_reward_matches_a_loop():
    """REINFORCE++: the return-to-go of the token rewards (outcome on the last token, minus the
    per-token KL penalty), whitened over all response tokens of the batch; no group baseline."""
    scores, mask, spans = outcome_batch(4)
    penalty = torch.rand(mask.shape, generator=torch.Generator().manual_seed(4)) * 0.1 * mask
    token_rewards = adv.outcome_token_rewards(torch.tensor(scores), mask) - penalty
    got = adv.compute_advantages("reinforce_plus_plus", token_rewards, mask, 4)
    returns = []
    for b, span in enumerate(spans):
        for t in span:
            later = [u for u in span if u >= t]
            returns.append(scores[b] - sum(float(penalty[b, u]) for u in later))
    whitened = iter(whiten(returns))
    for b, span in enumerate(spans):
        for t in span:
            assert math.isclose(float(got[b, t]), next(whitened), rel_tol=1e-4, abs_tol=1e-5)
    # without a KL penalty the return is the outcome on every token: one value per sequence
    flat = adv.compute_advantages("reinforce_plus_plus", adv.outcome_token_rewards(torch.tensor(scores), mask),
                                  mask, 4)
    tokens = [scores[b] for b, span in enumerate(spans) for _ in span]
    mean, var = statistics.fmean(tokens), statistics.variance(tokens)
    check_per_sequence(flat, mask, [(r - mean) / math.sqrt(var + 1e-8) for r in scores])


# ----------------------------------------------------------------------------------- registry
def test_registry_refuses_a_second_function_under_a_taken_name():
    with pytest.raises(ValueError, match="advantage estimator 'rloo' is already registered"):
        adv.register_advantage("rloo")(lambda token_rewards, mask, group_size: token_rewards.sum(1))
    adv.register_advantage("rloo")(adv.rloo)  # the same function again (a re-import) is fine


def test_an_estimator_returning_the_wrong_shape_or_nan_is_named():
    @adv.register_advantage("test_wrong_shape")
    def wrong_shape(token_rewards, mask, group_size):
        return token_rewards.sum(1)[:-1]

    @adv.register_advantage("test_nan")
    def nan(token_rewards, mask, group_size):
        return token_rewards.sum(1) * float("nan")

    scores, mask, _ = outcome_batch(6)
    rewards = adv.outcome_token_rewards(torch.tensor(scores), mask)
    with pytest.raises(ValueError, match=r"'test_wrong_shape' returned shape \(11,\); expected \(12,\)"):
        adv.compute_advantages("test_wrong_shape", rewards, mask, 4)
    with pytest.raises(ValueError, match="'test_nan' returned non-finite"):
        adv.compute_advantages("test_nan", rewards, mask, 4)
