"""GRPO math against independent references: plain-Python loops written from the formulas."""

from __future__ import annotations

import math
import random
import statistics

import pytest
import torch
from torch.testing import assert_close

from rl_safety.algorithms import grpo_math as gm


def rand_batch(seed: int, B: int = 6, T: int = 5):
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(B, T, generator=g) * 3
    old = logp + (torch.rand(B, T, generator=g) - 0.5) * 0.6
    mask = (torch.rand(B, T, generator=g) > 0.3).float()
    mask[:, 0] = 1
    adv = torch.randn(B, generator=g)
    return logp, old, mask, adv


@pytest.mark.parametrize("normalize", [True, False])
def test_group_advantages_match_a_loop(normalize):
    rng = random.Random(0)
    rewards = [rng.random() for _ in range(12)]
    got = gm.group_advantages(torch.tensor(rewards), group_size=4, normalize_std=normalize)
    expected = []
    for g in range(3):
        group = rewards[g * 4:(g + 1) * 4]
        mean, std = statistics.fmean(group), statistics.pstdev(group)
        expected += [(r - mean) / (std + 1e-6) if normalize else r - mean for r in group]
    assert_close(got, torch.tensor(expected), rtol=1e-5, atol=1e-6)
    assert_close(got.view(3, 4).sum(1), torch.zeros(3), atol=1e-5, rtol=0)
    if normalize:
        assert_close(got.view(3, 4).std(1, unbiased=False), torch.ones(3), atol=1e-4, rtol=0)
    with pytest.raises(ValueError):
        gm.group_advantages(torch.ones(5), group_size=4)
    with pytest.raises(ValueError):
        gm.group_advantages(torch.ones(4), group_size=0)


def test_flat_and_integer_groups():
    """Equal rewards give 0 (not NaN) under std normalization; integer rewards are accepted;
    a 2-sample group with different rewards gets exactly +-1 (population std)."""
    got = gm.group_advantages(torch.tensor([1, 1, 1, 0, 1, 0]), group_size=2)
    assert_close(got, torch.tensor([0.0, 0.0, 1.0, -1.0, 1.0, -1.0]), atol=1e-5, rtol=0)


def test_kl_estimators_match_formulas_and_true_kl():
    logp, ref, _, _ = rand_batch(1)
    for est in ("k1", "k2", "k3"):
        got = gm.kl_penalty(logp, ref, est)
        for b in range(logp.shape[0]):
            for t in range(logp.shape[1]):
                x, r = float(logp[b, t]), float(ref[b, t])
                want = {"k1": x - r, "k2": 0.5 * (x - r) ** 2, "k3": math.exp(r - x) - (r - x) - 1}[est]
                assert math.isclose(float(got[b, t]), want, rel_tol=1e-4, abs_tol=1e-6)
    assert (gm.kl_penalty(logp, ref, "k3") >= 0).all()
    # Monte Carlo: tokens sampled from p; k1 and k3 means estimate KL(p || q) of two categoricals.
    p = torch.tensor([0.5, 0.3, 0.15, 0.05])
    q = torch.tensor([0.25, 0.25, 0.25, 0.25])
    true_kl = sum(pi * math.log(pi / qi) for pi, qi in zip(p.tolist(), q.tolist()))
    tokens = torch.multinomial(p, 200_000, replacement=True, generator=torch.Generator().manual_seed(0))
    lp, lq = p.log()[tokens], q.log()[tokens]
    for est in ("k1", "k3"):
        assert abs(float(gm.kl_penalty(lp, lq, est).mean()) - true_kl) < 0.01


def test_k3_stays_finite_at_extreme_log_ratios():
    logp = torch.tensor([0.0, -200.0, -1e4])
    ref = torch.tensor([-200.0, 0.0, 0.0])
    k3 = gm.kl_penalty(logp, ref, "k3")
    assert torch.isfinite(k3).all() and (k3 >= 0).all()
    bound = gm.LOG_RATIO_BOUND  # log(ref/pi) clamped to +-bound
    assert math.isclose(float(k3[0]), math.exp(-bound) + bound - 1, rel_tol=1e-5)
    assert math.isclose(float(k3[1]), math.exp(bound) - bound - 1, rel_tol=1e-5)


def test_policy_loss_matches_ppo_clip_loop():
    logp, old, mask, adv = rand_batch(2)
    w = torch.rand_like(logp) + 0.5
    loss, stats = gm.policy_loss(logp, old, adv, mask, clip_low=0.2, clip_high=0.28, importance_weights=w)
    clipped_tokens = 0
    for b in range(logp.shape[0]):
        for t in range(logp.shape[1]):
            ratio = math.exp(float(logp[b, t] - old[b, t]))
            a = float(adv[b])
            unclipped, clipped = ratio * a, min(max(ratio, 0.8), 1.28) * a
            want = -min(unclipped, clipped) * float(w[b, t]) * float(mask[b, t])
            assert math.isclose(float(loss[b, t]), want, rel_tol=1e-4, abs_tol=1e-6)
            clipped_tokens += (clipped < unclipped) * float(mask[b, t])
    assert math.isclose(float(stats["clip_fraction"]), clipped_tokens / float(mask.sum()), rel_tol=1e-6)


def test_policy_loss_gradient_and_approx_kl_match_a_loop():
    """d loss / d log pi = -r A w on tokens where the unclipped branch is the minimum, 0 where
    clipping took over; approx_kl = masked mean of r - 1 - log r (k3 of KL(pi_old || pi))."""
    logp, old, mask, adv = rand_batch(7)
    w = (torch.rand_like(logp) + 0.5).requires_grad_(True)  # a weight must act as a constant
    x = logp.clone().requires_grad_(True)
    loss, stats = gm.policy_loss(x, old, adv, mask, clip_low=0.1, clip_high=0.15, importance_weights=w)
    loss.sum().backward()
    kl_sum = 0.0
    for b in range(logp.shape[0]):
        for t in range(logp.shape[1]):
            ratio, a, m = math.exp(float(logp[b, t] - old[b, t])), float(adv[b]), float(mask[b, t])
            clipped = min(max(ratio, 0.9), 1.15) * a
            want = 0.0 if clipped < ratio * a else -ratio * a * float(w[b, t].detach()) * m
            assert math.isclose(float(x.grad[b, t]), want, rel_tol=1e-4, abs_tol=1e-6)
            kl_sum += (ratio - 1 - math.log(ratio)) * m
    assert math.isclose(float(stats["approx_kl"]), kl_sum / float(mask.sum()), rel_tol=1e-4)
    assert w.grad is None and all(not v.requires_grad for v in stats.values())


def test_policy_loss_stays_finite_at_extreme_ratios():
    logp, old = torch.tensor([[0.0, -500.0]]), torch.tensor([[-500.0, 0.0]])
    loss, stats = gm.policy_loss(logp, old, torch.tensor([-1.0]), torch.ones(1, 2), 0.2, 0.28)
    assert torch.isfinite(loss).all() and all(math.isfinite(float(v)) for v in stats.values())
    # negative advantage, ratio e^20: the unclipped branch is the minimum (no upper clip for A < 0)
    assert math.isclose(float(loss[0, 0]), math.exp(20.0), rel_tol=1e-5)


def test_clip_higher_is_asymmetric():
    logp, old = torch.tensor([[math.log(1.25)]]), torch.zeros(1, 1)
    mask, pos = torch.ones(1, 1), torch.tensor([1.0])
    _, wide = gm.policy_loss(logp, old, pos, mask, clip_low=0.2, clip_high=0.28)
    _, narrow = gm.policy_loss(logp, old, pos, mask, clip_low=0.2, clip_high=0.2)
    assert float(wide["clip_fraction"]) == 0.0 and float(narrow["clip_fraction"]) == 1.0
    # the gradient is zero exactly where the clipped branch wins
    logp.requires_grad_(True)
    loss, _ = gm.policy_loss(logp, old, pos, mask, clip_low=0.2, clip_high=0.2)
    loss.sum().backward()
    assert float(logp.grad) == 0.0


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


def test_aggregations_match_loops():
    per_token, _, mask, _ = rand_batch(4)
    B, T = per_token.shape
    rows = [[(float(per_token[b, t]), float(mask[b, t])) for t in range(T)] for b in range(B)]
    token_mean = sum(x * m for r in rows for x, m in r) / sum(m for r in rows for _, m in r)
    seq_mean = statistics.fmean(sum(x * m for x, m in r) / sum(m for _, m in r) for r in rows)
    dr = sum(x * m for r in rows for x, m in r) / (16 * len(rows))
    for mode, want in [("token_mean", token_mean), ("seq_mean_token_mean", seq_mean),
                       ("seq_mean_token_sum_norm", dr)]:
        got = gm.aggregate_loss(per_token, mask, mode, norm_constant=16)
        assert math.isclose(float(got), want, rel_tol=1e-5), mode
    with pytest.raises(ValueError):
        gm.aggregate_loss(per_token, mask, "seq_mean_token_sum_norm")


@pytest.mark.parametrize("mode", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"])
def test_split_with_global_counts_gives_the_whole_batch_gradient(mode):
    """Two micro-batches (or ranks) with the mini-batch's global counts sum to the gradient of
    one big batch: what the learner relies on across micro-batches and data-parallel ranks."""
    logp, old, mask, adv = rand_batch(5, B=8)
    kw = {"norm_constant": 5.0}

    def grad_of(parts):
        x = logp.clone().requires_grad_(True)
        total = 0
        for rows, counts in parts:
            loss, _ = gm.policy_loss(x[rows], old[rows], adv[rows], mask[rows], 0.2, 0.28)
            total = total + gm.aggregate_loss(loss, mask[rows], mode, **kw, **counts)
        total.backward()
        return x.grad

    whole = grad_of([(slice(0, 8), {})])
    counts = {"global_token_count": float(mask.sum()), "global_seq_count": 8.0}
    split = grad_of([(slice(0, 3), counts), (slice(3, 8), counts)])
    assert_close(split, whole, rtol=1e-5, atol=1e-7)


def test_logprobs_and_entropy_from_logits():
    g = torch.Generator().manual_seed(6)
    logits = torch.randn(2, 3, 7, generator=g) * 3
    tokens = torch.randint(0, 7, (2, 3), generator=g)
    got = gm.logprobs_from_logits(logits, tokens, temperature=0.7)
    ent = gm.entropy_from_logits(logits)
    for b in range(2):
        for t in range(3):
            scaled = [float(v) / 0.7 for v in logits[b, t]]
            z = math.log(sum(math.exp(v) for v in scaled))
            assert math.isclose(float(got[b, t]), scaled[int(tokens[b, t])] - z, rel_tol=1e-5)
            raw = [float(v) for v in logits[b, t]]
            zr = math.log(sum(math.exp(v) for v in raw))
            probs = [math.exp(v - zr) for v in raw]
            assert math.isclose(float(ent[b, t]), -sum(p * math.log(p) for p in probs), rel_tol=1e-5)


def test_logprobs_from_logits_can_be_chunked_over_tokens():
    g = torch.Generator().manual_seed(8)
    logits = torch.randn(2, 6, 11, generator=g)
    tokens = torch.randint(0, 11, (2, 6), generator=g)
    whole = gm.logprobs_from_logits(logits, tokens, temperature=1.3)
    chunks = [gm.logprobs_from_logits(logits[:, i:i + 2], tokens[:, i:i + 2], temperature=1.3)
              for i in range(0, 6, 2)]
    assert_close(torch.cat(chunks, dim=1), whole)


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
