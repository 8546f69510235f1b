"""Policy losses, KL estimators and loss aggregation against independent references: plain-Python
loops written from the papers' formulas, and exact KLs of small categoricals."""

from __future__ import annotations

import math
import statistics

import pytest
import torch
from torch.testing import assert_close

from rl_safety.algorithms import losses
from rl_safety.algorithms.grpo_math import LOG_RATIO_BOUND
from rl_safety.config.grpo import AlgorithmSection
from tests.algorithms.batches import rand_batch


def per_token(adv: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return adv[:, None].expand_as(like).clone()


# ------------------------------------------------------------------------------------------ KL
def test_kl_estimators_match_formulas():
    logp, ref, _, _ = rand_batch(1)
    for est in ("k1", "k2", "k3", "k3+"):
        got = losses.kl_estimate(logp, ref, est)
        for b in range(logp.shape[0]):
            for t in range(logp.shape[1]):
                x, r = float(logp[b, t]), float(ref[b, t])
                k3 = math.exp(r - x) - (r - x) - 1
                want = {"k1": x - r, "k2": 0.5 * (x - r) ** 2, "k3": k3, "k3+": k3}[est]
                assert math.isclose(float(got[b, t]), want, rel_tol=1e-4, abs_tol=1e-6)
    assert (losses.kl_estimate(logp, ref, "k3") >= 0).all()
    with pytest.raises(ValueError, match="unknown KL estimator"):
        losses.kl_estimate(logp, ref, "k4")


def exact_kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """KL(p || q) of two categoricals from their logits, by its definition."""
    p, log_p, log_q = p_logits.softmax(-1), p_logits.log_softmax(-1), q_logits.log_softmax(-1)
    return (p * (log_p - log_q)).sum()


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3", "k3+"])
def test_kl_estimators_expected_value_and_gradient_on_a_categorical(estimator):
    """Exact expectations over tokens y ~ pi of a 6-way categorical (sum over y weighted by a
    detached pi(y), as sampling does): the value of k1 / k3 / k3+ is KL(pi || ref); as a loss,
    k1's gradient is 0, k2's and k3+'s is grad KL(pi || ref), k3's is grad KL(ref || pi)."""
    g = torch.Generator().manual_seed(0)
    theta = (torch.randn(6, generator=g, dtype=torch.float64) * 1.5).requires_grad_(True)
    ref_logits = torch.randn(6, generator=g, dtype=torch.float64) * 1.5
    pi = theta.softmax(-1)
    log_pi, log_ref = theta.log_softmax(-1), ref_logits.log_softmax(-1)
    expected = (pi.detach() * losses.kl_estimate(log_pi, log_ref, estimator)).sum()
    (grad,) = torch.autograd.grad(expected, theta)
    expected = expected.detach()

    reverse = exact_kl(theta, ref_logits)  # KL(pi || ref)
    forward = exact_kl(ref_logits, theta)  # KL(ref || pi)
    (grad_reverse,) = torch.autograd.grad(reverse, theta)
    (grad_forward,) = torch.autograd.grad(forward, theta)
    assert float((grad_reverse - grad_forward).abs().max()) > 0.05  # the two directions do differ here

    if estimator in ("k1", "k3", "k3+"):
        assert math.isclose(float(expected), float(reverse.detach()), rel_tol=1e-9)
    want = {"k1": torch.zeros(6, dtype=torch.float64), "k2": grad_reverse, "k3+": grad_reverse,
            "k3": grad_forward}[estimator]
    assert_close(grad, want, rtol=1e-9, atol=1e-12)


def test_k3_plus_has_k3_value_and_k2_gradient_per_token():
    logp, ref, _, _ = rand_batch(11)
    x = logp.clone().requires_grad_(True)
    plus = losses.kl_estimate(x, ref, "k3+", k3_clamp=10.0)
    (grad,) = torch.autograd.grad(plus.sum(), x)
    assert_close(plus.detach(), losses.kl_estimate(logp, ref, "k3"))
    assert_close(grad, logp - ref)  # d/dx of (x - ref)^2 / 2


def test_k3_clamp_and_extreme_log_ratios():
    logp = torch.tensor([0.0, -200.0, -1e4, -3.0, 0.0])
    ref = torch.tensor([-200.0, 0.0, 0.0, 0.0, -3.0])
    k3 = losses.kl_estimate(logp, ref, "k3")
    assert torch.isfinite(k3).all() and (k3 >= 0).all()
    bound = LOG_RATIO_BOUND  # log(ref/pi) clamped to +-bound before exp()
    assert math.isclose(float(k3[0]), math.exp(-bound) + bound - 1, rel_tol=1e-5)
    assert math.isclose(float(k3[1]), math.exp(bound) - bound - 1, rel_tol=1e-5)
    # verl clamps the value at 10 (e^3 - 3 - 1 = 16.1 -> 10); no gradient flows where it binds
    x = logp.clone().requires_grad_(True)
    clamped = losses.kl_estimate(x, ref, "k3", k3_clamp=10.0)
    (grad,) = torch.autograd.grad(clamped.sum(), x)
    clamped = clamped.detach()
    assert clamped[:4].tolist() == [10.0] * 4
    assert math.isclose(float(clamped[4]), math.exp(-3) - 1 + 3, rel_tol=1e-6)
    assert grad[:4].tolist() == [0.0] * 4 and float(grad[4]) != 0.0


def test_kl_reward_penalty_is_coef_times_estimate_on_the_mask():
    logp, ref, mask, _ = rand_batch(12)
    x = logp.clone().requires_grad_(True)
    got = losses.kl_reward_penalty(x, ref, mask, "k1", coef=0.3)
    assert not got.requires_grad
    for b in range(logp.shape[0]):
        for t in range(logp.shape[1]):
            want = 0.3 * float(logp[b, t] - ref[b, t]) * float(mask[b, t])
            assert math.isclose(float(got[b, t]), want, rel_tol=1e-5, abs_tol=1e-7)


# ------------------------------------------------------------------------------ policy losses
def test_ppo_clip_matches_a_loop():
    logp, old, mask, adv = rand_batch(2)
    cfg = AlgorithmSection(clip_low=0.2, clip_high=0.28, dual_clip=None)
    loss, stats = losses.ppo_clip(logp, old, per_token(adv, logp), mask, cfg)
    for b in range(logp.shape[0]):
        for t in range(logp.shape[1]):
            ratio, a = math.exp(float(logp[b, t] - old[b, t])), float(adv[b])
            unclipped, clipped = ratio * a, min(max(ratio, 0.8), 1.28) * a
            assert math.isclose(float(loss[b, t]), -min(unclipped, clipped), rel_tol=1e-4, abs_tol=1e-6)
            assert float(stats["clip_fraction"][b, t]) == float(clipped < unclipped)
            assert math.isclose(float(stats["approx_kl"][b, t]), ratio - 1 - math.log(ratio), rel_tol=1e-3,
                                abs_tol=1e-7)  # k3 of KL(pi_old || pi)
    assert float(stats["dual_clip_fraction"].sum()) == 0.0


def test_ppo_clip_gradient_matches_a_loop():
    """d loss / d log pi = -r A on tokens where the unclipped branch is the minimum, 0 where
    clipping took over."""
    logp, old, mask, adv = rand_batch(7)
    cfg = AlgorithmSection(clip_low=0.1, clip_high=0.15, dual_clip=None)
    x = logp.clone().requires_grad_(True)
    loss, stats = losses.ppo_clip(x, old, per_token(adv, logp), mask, cfg)
    loss.sum().backward()
    for b in range(logp.shape[0]):
        for t in range(logp.shape[1]):
            ratio, a = math.exp(float(logp[b, t] - old[b, t])), float(adv[b])
            clipped = min(max(ratio, 0.9), 1.15) * a
            want = 0.0 if clipped < ratio * a else -ratio * a
            assert math.isclose(float(x.grad[b, t]), want, rel_tol=1e-4, abs_tol=1e-6)
    assert not any(v.requires_grad for v in stats.values())


def test_dual_clip_bounds_the_loss_of_negative_advantages():
    """Dual-clip PPO (Ye et al. 2020; verl clip_ratio_c): for A < 0 the loss is
    min(-min(r A, clip(r) A), -c A), with zero gradient where c binds; A >= 0 is plain PPO."""
    ratios = [0.5, 1.0, 1.2, 2.9, 3.1, 10.0, 1e4]
    advs = [-1.0, -0.3, 0.0, 0.7]
    logp = torch.tensor([[math.log(r) for r in ratios]] * len(advs), requires_grad=True)
    old = torch.zeros_like(logp)
    adv = torch.tensor(advs)[:, None].expand(len(advs), len(ratios))
    cfg = AlgorithmSection(clip_low=0.2, clip_high=0.28, dual_clip=3.0)
    loss, stats = losses.ppo_clip(logp, old, adv, torch.ones_like(logp), cfg)
    loss.sum().backward()
    loss = loss.detach()
    for i, a in enumerate(advs):
        for j, r in enumerate(ratios):
            ppo = -min(r * a, min(max(r, 0.8), 1.28) * a)
            dual = a < 0 and ppo > -3.0 * a
            want = -3.0 * a if dual else ppo
            assert math.isclose(float(loss[i, j]), want, rel_tol=1e-5, abs_tol=1e-6), (a, r)
            assert float(stats["dual_clip_fraction"][i, j]) == float(dual)
            if dual:
                assert float(logp.grad[i, j]) == 0.0
    assert float(stats["dual_clip_fraction"].sum()) == 6  # A in {-1, -0.3} x r in {3.1, 10, 1e4}
    # without dual-clip, the negative-advantage loss grows with the ratio without bound
    plain, _ = losses.ppo_clip(logp.detach(), old, adv, torch.ones_like(logp),
                               AlgorithmSection(clip_low=0.2, clip_high=0.28, dual_clip=None))
    assert math.isclose(float(plain[0, -1]), 1e4, rel_tol=1e-4)


def test_clip_higher_is_asymmetric():
    logp, old = torch.tensor([[math.log(1.25)]], requires_grad=True), torch.zeros(1, 1)
    mask, pos = torch.ones(1, 1), torch.ones(1, 1)
    _, wide = losses.ppo_clip(logp, old, pos, mask, AlgorithmSection(clip_low=0.2, clip_high=0.28))
    loss, narrow = losses.ppo_clip(logp, old, pos, mask, AlgorithmSection(clip_low=0.2, clip_high=0.2))
    assert float(wide["clip_fraction"]) == 0.0 and float(narrow["clip_fraction"]) == 1.0
    loss.sum().backward()  # the gradient is zero exactly where the clipped branch wins
    assert float(logp.grad) == 0.0


def test_policy_losses_stay_finite_at_extreme_ratios():
    logp, old = torch.tensor([[0.0, -500.0]]), torch.tensor([[-500.0, 0.0]])
    neg = torch.full((1, 2), -1.0)
    for name in ("ppo_clip", "gspo"):
        for dual in (None, 3.0):
            cfg = AlgorithmSection(dual_clip=dual)
            loss, stats = losses.POLICY_LOSSES.get(name)(logp, old, neg, torch.ones(1, 2), cfg)
            assert torch.isfinite(loss).all() and all(torch.isfinite(v).all() for v in stats.values())
    loss, _ = losses.ppo_clip(logp, old, neg, torch.ones(1, 2), AlgorithmSection(dual_clip=None))
    assert math.isclose(float(loss[0, 0]), math.exp(20.0), rel_tol=1e-5)  # ratio clamped at e^20


def test_gspo_sequence_ratio_loss_and_gradient_match_a_loop():
    """GSPO: s_i = exp(mean_t log(pi / pi_old)) over the response; with seq_mean_token_mean the
    loss is mean_i -min(s_i A_i, clip(s_i) A_i), and d/d log pi_{i,t} = -s_i A_i / |y_i| / B where
    the unclipped branch is the minimum, else 0."""
    logp, old, mask, adv = rand_batch(13, B=8, T=6)
    cfg = AlgorithmSection(clip_low=0.05, clip_high=0.08, dual_clip=None, policy_loss="gspo",
                           loss_aggregation="seq_mean_token_mean")
    x = logp.clone().requires_grad_(True)
    per_tok, stats = losses.gspo(x, old, per_token(adv, logp), mask, cfg)
    total = losses.aggregate("seq_mean_token_mean", per_tok, mask, norm_constant=6.0)
    total.backward()
    per_tok, total = per_tok.detach(), total.detach()
    B, want_total = logp.shape[0], 0.0
    for b in range(B):
        tokens = [t for t in range(logp.shape[1]) if mask[b, t]]
        s = math.exp(statistics.fmean(float(logp[b, t] - old[b, t]) for t in tokens))
        a = float(adv[b])
        unclipped, clipped = s * a, min(max(s, 0.95), 1.08) * a
        seq_loss = -min(unclipped, clipped)
        want_total += seq_loss / B
        for t in range(logp.shape[1]):
            if mask[b, t]:
                assert math.isclose(float(per_tok[b, t]), seq_loss, rel_tol=1e-5, abs_tol=1e-7)
                assert float(stats["clip_fraction"][b, t]) == float(clipped < unclipped)
            want_grad = 0.0 if (clipped < unclipped or not mask[b, t]) else -s * a / len(tokens) / B
            assert math.isclose(float(x.grad[b, t]), want_grad, rel_tol=1e-4, abs_tol=1e-7)
    assert math.isclose(float(total), want_total, rel_tol=1e-5)


# -------------------------------------------------------------------------------- aggregation
def test_aggregations_match_loops():
    per_tok, _, mask, _ = rand_batch(4)
    B, T = per_tok.shape
    rows = [[(float(per_tok[b, t]), float(mask[b, t])) for t in range(T)] for b in range(B)]
    token_mean = sum(x * m for r in rows for x, m in r) / sum(m for r in rows for _, m in r)
    seq_mean = statistics.fmean(sum(x * m for x, m in r) / sum(m for _, m in r) for r in rows)
    dr = sum(x * m for r in rows for x, m in r) / (16 * len(rows))
    for mode, want in [("token_mean", token_mean), ("seq_mean_token_mean", seq_mean),
                       ("seq_mean_token_sum_norm", dr)]:
        got = losses.aggregate(mode, per_tok, mask, norm_constant=16)
        assert math.isclose(float(got), want, rel_tol=1e-5), mode
    with pytest.raises(ValueError, match="unknown loss aggregation 'token_sum'; registered: seq_mean"):
        losses.aggregate("token_sum", per_tok, mask, norm_constant=16)


def test_fully_masked_sequences_are_not_counted():
    """A sequence with no token in the loss (all dropped, e.g. overlong: filter) does not count
    as a sequence: seq_mean_* average over the 2 sequences that remain, not 3."""
    per_tok = torch.tensor([[1.0, 3.0], [100.0, 100.0], [2.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0], [0.0, 0.0], [1.0, 0.0]])
    assert losses.loss_counts(mask) == (3.0, 2.0)
    assert float(losses.aggregate("seq_mean_token_mean", per_tok, mask, 4.0)) == pytest.approx((2.0 + 2.0) / 2)
    assert float(losses.aggregate("seq_mean_token_sum_norm", per_tok, mask, 4.0)) == pytest.approx(6.0 / (4 * 2))
    assert float(losses.aggregate("token_mean", per_tok, mask, 4.0)) == pytest.approx(6.0 / 3)


@pytest.mark.parametrize("mode", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"])
@pytest.mark.parametrize("counts", [{}, {"global_tokens": 0.0, "global_sequences": 0.0}])
def test_an_all_masked_batch_gives_zero_not_nan(mode, counts):
    x = torch.randn(3, 4, requires_grad=True)
    loss = losses.aggregate(mode, x * 2, torch.zeros(3, 4), norm_constant=4.0, **counts)
    loss.backward()
    loss = loss.detach()
    assert float(loss) == 0.0 and torch.equal(x.grad, torch.zeros(3, 4))


@pytest.mark.parametrize("mode", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"])
def test_split_with_global_counts_gives_the_whole_batch_gradient(mode):
    """Two micro-batches (or ranks) with the mini-batch's global counts sum to the gradient of
    one big batch: what the learner relies on across micro-batches and data-parallel ranks. A
    fully masked row sits in one piece and must not change the count."""
    logp, old, mask, adv = rand_batch(5, B=8)
    mask[2] = 0
    cfg = AlgorithmSection(dual_clip=3.0)

    def grad_of(parts):
        x = logp.clone().requires_grad_(True)
        total = 0
        for rows, counts in parts:
            loss, _ = losses.ppo_clip(x[rows], old[rows], per_token(adv, logp)[rows], mask[rows], cfg)
            total = total + losses.aggregate(mode, loss, mask[rows], 5.0, **counts)
        total.backward()
        return x.grad

    whole = grad_of([(slice(0, 8), {})])
    tokens, sequences = losses.loss_counts(mask)
    assert sequences == 7.0
    counts = {"global_tokens": tokens, "global_sequences": sequences}
    split = grad_of([(slice(0, 3), counts), (slice(3, 8), counts)])
    assert_close(split, whole, rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------- the whole loss
def test_grpo_loss_combines_policy_loss_weights_and_kl_as_a_loop_does():
    logp, old, mask, adv = rand_batch(14)
    ref = old - 0.1
    w = torch.rand_like(logp) + 0.5
    cfg = AlgorithmSection(kl_coef=0.1, kl_estimator="k2", clip_low=0.2, clip_high=0.28, dual_clip=None)
    batch = {"response_mask": mask, "old_logprobs": old, "advantages": per_token(adv, logp),
             "importance_weights": w, "ref_logprobs": ref}
    loss, sums = losses.grpo_loss(logp, batch, cfg, norm_constant=5.0)
    total = tokens = clipped_tokens = kl_sum = 0.0
    for b in range(logp.shape[0]):
        for t in range(logp.shape[1]):
            if not mask[b, t]:
                continue
            ratio, a = math.exp(float(logp[b, t] - old[b, t])), float(adv[b])
            unclipped, clipped = ratio * a, min(max(ratio, 0.8), 1.28) * a
            kl = 0.5 * float(logp[b, t] - ref[b, t]) ** 2
            total += -min(unclipped, clipped) * float(w[b, t]) + 0.1 * kl
            tokens += 1
            clipped_tokens += clipped < unclipped
            kl_sum += kl
    assert math.isclose(float(loss), total / tokens, rel_tol=1e-5)
    assert sums["token_count"] == tokens
    assert sums["clip_fraction_sum"] == clipped_tokens
    assert math.isclose(sums["kl_sum"], kl_sum, rel_tol=1e-5)
    assert set(sums) == {"token_count", "clip_fraction_sum", "dual_clip_fraction_sum", "approx_kl_sum", "kl_sum"}
