"""GRPO math against independent references: plain-Python loops written from the formulas."""

from __future__ import annotations

import math
import random

import pytest
import torch
from torch.testing import assert_close

from rl_safety.algorithms import grpo_math as gm
from tests.algorithms.batches import rand_batch


def test_importance_weights_at_the_cap():
    """w == cap is kept by both modes; just above it, truncate gives cap and mask gives 0."""
    log_w = torch.tensor([[0.0, math.log(0.999), math.log(1.001), math.log(5.0)]])
    mask = torch.ones(1, 4)
    trunc = gm.truncated_importance_weights(log_w, torch.zeros(1, 4), mask, cap=1.0, mode="truncate")
    masked = gm.truncated_importance_weights(log_w, torch.zeros(1, 4), mask, cap=1.0, mode="mask")
    assert_close(trunc, torch.tensor([[1.0, 0.999, 1.0, 1.0]]))
    assert_close(masked, torch.tensor([[1.0, 0.999, 0.0, 0.0]]))
    # sequence level: one product weight for the whole sequence, 0 on padding
    mask = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    seq = gm.truncated_importance_weights(torch.full((1, 4), math.log(1.2)), torch.zeros(1, 4), mask,
                                          cap=2.0, level="sequence")
    assert_close(seq, torch.tensor([[1.44, 1.44, 0.0, 0.0]]))
    # a long sequence whose log-weight sums far past exp()'s range stays finite
    long = gm.truncated_importance_weights(torch.full((1, 4), 50.0), torch.zeros(1, 4), torch.ones(1, 4),
                                           cap=3.0, level="sequence", mode="mask")
    assert long.tolist() == [[0.0, 0.0, 0.0, 0.0]]
    with pytest.raises(ValueError):
        gm.truncated_importance_weights(log_w, log_w, mask, cap=2.0, level="seq")


@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("mode", ["truncate", "mask"])
def test_importance_weights(level, mode):
    _, old, mask, _ = rand_batch(3)
    rollout = old + (torch.rand_like(old) - 0.5)
    got = gm.truncated_importance_weights(old, rollout, mask, cap=1.2, level=level, mode=mode)
    for b in range(old.shape[0]):
        seq = math.exp(sum(float(old[b, t] - rollout[b, t]) for t in range(old.shape[1]) if mask[b, t]))
        for t in range(old.shape[1]):
            w = seq if level == "sequence" else math.exp(float(old[b, t] - rollout[b, t]))
            want = (min(w, 1.2) if mode == "truncate" else (w if w <= 1.2 else 0.0)) * float(mask[b, t])
            assert math.isclose(float(got[b, t]), want, rel_tol=1e-4, abs_tol=1e-6)
    assert not got.requires_grad


def test_overlong_penalty_and_filter():
    lengths = torch.tensor([10, 60, 70, 80, 90])
    got = gm.overlong_penalty(lengths, max_len=80, buffer_len=20, penalty_factor=2.0)
    assert got.tolist() == pytest.approx([0.0, 0.0, -1.0, -2.0, -2.0])
    lengths = list(range(0, 130, 7))
    want = []
    for n in lengths:  # DAPO eq. 13, written from the paper's piecewise definition
        if n <= 100 - 16:
            want.append(0.0)
        elif n <= 100:
            want.append(((100 - 16) - n) / 16 * 0.5)
        else:
            want.append(-0.5)
    got = gm.overlong_penalty(torch.tensor(lengths), max_len=100, buffer_len=16, penalty_factor=0.5)
    assert_close(got, torch.tensor(want))
    with pytest.raises(ValueError):
        gm.overlong_penalty(torch.tensor([1]), max_len=100, buffer_len=0)
    assert gm.overlong_filter_mask(torch.tensor([True, False])).tolist() == [0.0, 1.0]


def test_dynamic_sampling_keeps_groups_with_spread():
    rewards = torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0, 0.5, 0.2, 0.2, 0.2])
    assert gm.dynamic_sampling_keep(rewards, 3).tolist() == [False, True, False]
    rng = random.Random(9)
    groups = [[rng.choice([0.0, 1.0]) for _ in range(4)] for _ in range(40)]
    got = gm.dynamic_sampling_keep(torch.tensor(sum(groups, [])), 4).tolist()
    assert got == [len(set(group)) > 1 for group in groups]
    # float noise below the tolerance is not spread
    noisy = torch.tensor([0.3, 0.1 + 0.2], dtype=torch.float64)
    assert gm.dynamic_sampling_keep(noisy, 2).tolist() == [False]
    with pytest.raises(ValueError):
        gm.dynamic_sampling_keep(torch.ones(5), 2)


def test_importance_ratios_are_the_uncapped_weights():
    _, old, mask, _ = rand_batch(15)
    rollout = old + (torch.rand_like(old) - 0.5)
    for level in ("token", "sequence"):
        ratios = gm.importance_ratios(old, rollout, mask, level)
        assert_close(gm.truncated_importance_weights(old, rollout, mask, cap=1e9, level=level), ratios)
        capped = gm.truncated_importance_weights(old, rollout, mask, cap=1.1, level=level)
        assert_close(capped, ratios.clamp(max=1.1))


def test_fill_batch_takes_groups_with_spread_then_pads_or_stops():
    kept, flat = ["k0", "k1", "k2"], ["f0", "f1"]
    groups, stats = gm.fill_batch(kept, flat, size=2, shortfall="error")
    assert groups == ["k0", "k1"]
    assert stats == {"groups_with_spread": 2, "padded_flat_groups": 0, "surplus_groups_dropped": 1,
                     "flat_groups_dropped": 2}
    groups, stats = gm.fill_batch(kept, flat, size=4, shortfall="pad")
    assert groups == ["k0", "k1", "k2", "f0"]
    assert stats == {"groups_with_spread": 3, "padded_flat_groups": 1, "surplus_groups_dropped": 0,
                     "flat_groups_dropped": 1}
    with pytest.raises(gm.DynamicSamplingError, match="step 3: only 3 of the 4 groups a batch needs have reward "
                                                      "spread .2 flat groups drawn.*dynamic_sampling_shortfall=pad"):
        gm.fill_batch(kept, flat, size=4, shortfall="error", context="step 3: ")
    with pytest.raises(ValueError, match="5 groups drawn, fewer than the 6"):
        gm.fill_batch(kept, flat, size=6, shortfall="pad")
