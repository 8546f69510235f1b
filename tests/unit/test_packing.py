"""The padding-free learner's pieces (`rl_safety.learner.packing`): chunked logprobs / entropy
against a full fp32 log_softmax, first-fit-decreasing packing, and, on a real tiny Qwen2,
packed forwards against padded ones: logprobs, entropy and the GRPO loss's parameter gradients."""

from __future__ import annotations

import math

import pytest
import torch

from rl_safety.algorithms import losses
from rl_safety.config.grpo import AlgorithmSection
from rl_safety.learner import packing
from rl_safety.learner.logprobs import sequence_logprobs


def reference_logprobs(logits: torch.Tensor, targets: torch.Tensor, temperature: float):
    """Plain full-vocabulary fp32 log_softmax: logprob of each target and entropy."""
    log_p = torch.log_softmax(logits.float() / temperature, dim=-1)
    return log_p.gather(-1, targets[:, None]).squeeze(-1), -(log_p.exp() * log_p).sum(-1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_chunked_logprobs_entropy_and_gradient_equal_a_full_log_softmax(dtype, temperature):
    gen = torch.Generator().manual_seed(0)
    logits = (torch.randn(300, 97, generator=gen) * 4).to(dtype).requires_grad_()
    targets = torch.randint(0, 97, (300,), generator=gen)
    upstream = torch.randn(300, generator=gen)  # an arbitrary loss sum_t u_t logp_t

    logprobs, entropy = packing.chunked_logprobs(logits, targets, temperature, chunk=64, with_entropy=True)
    (grad,) = torch.autograd.grad((logprobs * upstream).sum(), logits)
    ref_logits = logits.detach().float().requires_grad_()
    ref_logprobs, ref_entropy = reference_logprobs(ref_logits, targets, temperature)
    (ref_grad,) = torch.autograd.grad((ref_logprobs * upstream).sum(), ref_logits)

    assert logprobs.dtype == entropy.dtype == torch.float32 and not entropy.requires_grad
    torch.testing.assert_close(logprobs, ref_logprobs.detach(), rtol=0, atol=1e-5)
    torch.testing.assert_close(entropy, ref_entropy.detach(), rtol=0, atol=1e-5)
    assert grad.dtype == dtype  # the gradient comes back in the logits' dtype, as autograd's would
    # bf16: the gradient is the fp32 one rounded to bf16 (relative error 2^-8)
    torch.testing.assert_close(grad.float(), ref_grad, rtol=1e-5 if dtype == torch.float32 else 8e-3,
                               atol=1e-6 if dtype == torch.float32 else 1e-4)
    assert packing.chunked_logprobs(logits, targets, temperature)[1] is None


def test_chunked_logprobs_and_entropy_by_hand():
    g = torch.Generator().manual_seed(6)
    logits = torch.randn(6, 7, generator=g) * 3
    tokens = torch.randint(0, 7, (6,), generator=g)
    got, entropy = packing.chunked_logprobs(logits, tokens, temperature=0.7, chunk=4, with_entropy=True)
    for t in range(6):
        scaled = [float(v) / 0.7 for v in logits[t]]
        z = math.log(sum(math.exp(v) for v in scaled))
        assert math.isclose(float(got[t]), scaled[int(tokens[t])] - z, rel_tol=1e-5)
        probs = [math.exp(v - z) for v in scaled]
        assert math.isclose(float(entropy[t]), -sum(p * math.log(p) for p in probs), rel_tol=1e-5, abs_tol=1e-6)


def test_first_fit_decreasing_by_hand():
    # longest first, each into the first bin with room: 5 -> A, 4 -> B, 3 -> A (full), 3 -> B,
    # 2 -> C (B has 1 left), 1 -> B
    assert packing.first_fit_decreasing([5, 4, 3, 3, 2, 1], 8) == [[0, 2], [1, 3, 5], [4]]
    lengths = [17, 3, 64, 9, 33, 1, 40, 22, 8, 60]
    bins = packing.first_fit_decreasing(lengths, 64)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= 64 for b in bins)
    assert len(bins) == 5  # 277 tokens need >= 5 bins of 64
    with pytest.raises(ValueError, match="65 tokens exceeds learner.max_tokens_per_micro_batch=64"):
        packing.first_fit_decreasing([3, 65], 64)


@pytest.fixture(scope="module")
def model(tiny_models):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(tiny_models["untied"], dtype=torch.float32).eval()


def ragged_batch(model, lengths: list[int], prompt: int = 4, seed: int = 0) -> dict:
    """A right-padded GRPO micro-batch (as `rollout.batch.build_batch` makes) of very different
    lengths, with made-up advantages, old and reference logprobs."""
    gen = torch.Generator().manual_seed(seed)
    b, width = len(lengths), max(lengths)
    vocab = model.config.vocab_size
    input_ids = torch.full((b, width), 0, dtype=torch.long)
    attention_mask = torch.zeros(b, width, dtype=torch.long)
    response_mask = torch.zeros(b, width - 1)
    for i, n in enumerate(lengths):
        input_ids[i, :n] = torch.randint(1, vocab, (n,), generator=gen)
        attention_mask[i, :n] = 1
        response_mask[i, prompt - 1 : n - 1] = 1
    shifted = (b, width - 1)
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "response_mask": response_mask,
             "advantages": torch.randn(shifted, generator=gen) * response_mask,
             "old_logprobs": -torch.rand(shifted, generator=gen) * 5,
             "ref_logprobs": -torch.rand(shifted, generator=gen) * 5}
    tokens, sequences = losses.loss_counts(response_mask)
    return {**batch, "global_tokens": tokens, "global_sequences": sequences}


LENGTHS = [7, 90, 12, 5, 61, 33, 90, 18, 9, 4]


def loss_gradient(model, batch, plan: list[list[int]], packed: bool, cfg) -> dict[str, torch.Tensor]:
    """d(sum over the plan's micro-batches of grpo_loss) / d parameters, as `Learner.train` sums them."""
    model.zero_grad()
    for rows in plan:
        part = packing.select_rows(batch, rows)
        logprobs, _ = packing.forward_logprobs(model, part["input_ids"], part["attention_mask"], 0.8, packed)
        loss, _ = losses.grpo_loss(logprobs, part, cfg, norm_constant=100.0)
        loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_forward_equals_padded_logprobs_entropy_and_gradients(model, attention):
    model.set_attn_implementation(attention)
    batch = ragged_batch(model, LENGTHS)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        padded, padded_entropy = packing.forward_logprobs(model, ids, mask, 0.8, packed=False, with_entropy=True)
        packed, packed_entropy = packing.forward_logprobs(model, ids, mask, 0.8, packed=True, with_entropy=True)
        # one sequence at a time: no padding, no packing, the independent reference
        alone = [packing.forward_logprobs(model, ids[i : i + 1, :n], mask[i : i + 1, :n], 0.8, packed=False)[0][0]
                 for i, n in enumerate(LENGTHS)]
    real = torch.zeros_like(padded, dtype=torch.bool)
    for i, n in enumerate(LENGTHS):
        real[i, : n - 1] = True
        torch.testing.assert_close(packed[i, : n - 1], alone[i], rtol=0, atol=2e-5)
        torch.testing.assert_close(padded[i, : n - 1], alone[i], rtol=0, atol=2e-5)
    torch.testing.assert_close(packed[real], padded[real], rtol=0, atol=2e-5)
    torch.testing.assert_close(packed_entropy[real], padded_entropy[real], rtol=0, atol=2e-5)
    assert (packed[~real] == 0).all()

    # the GRPO loss with KL, summed over packed micro-batches of <= 100 tokens vs padded pairs
    cfg = AlgorithmSection(kl_coef=0.1)
    plan = packing.micro_batches(mask, 2, 100)
    assert [len(rows) for rows in plan] == [2, 2, 3, 3]  # 329 tokens: the short ones fill the gaps
    packed_grads = loss_gradient(model, batch, plan, True, cfg)
    padded_grads = loss_gradient(model, batch, packing.micro_batches(mask, 2, None), False, cfg)
    for name, grad in padded_grads.items():
        assert grad.abs().sum() > 0, name
        torch.testing.assert_close(packed_grads[name], grad, rtol=1e-4, atol=1e-7, msg=name)


def test_an_empty_micro_batch_has_no_loss_and_no_gradient(model):
    batch = ragged_batch(model, LENGTHS)
    part = packing.select_rows(batch, [])
    assert part["input_ids"].shape == (1, 2) and part["response_mask"].sum() == 0
    model.zero_grad()
    logprobs, _ = packing.forward_logprobs(model, part["input_ids"], part["attention_mask"], 1.0, packed=True)
    loss, _ = losses.grpo_loss(logprobs, part, AlgorithmSection(kl_coef=0.1), norm_constant=100.0)
    loss.backward()
    assert loss.item() == 0
    assert all(p.grad is None or (p.grad == 0).all() for p in model.parameters())


def test_sequence_logprobs_packed_equals_padded_with_extra_empty_micro_batches(model):
    batch = ragged_batch(model, LENGTHS, seed=1)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        padded = sequence_logprobs(model, ids, mask, 1.0, micro_batch_size=3, device="cpu")
        packed = sequence_logprobs(model, ids, mask, 1.0, micro_batch_size=3, device="cpu",
                                   max_tokens_per_micro_batch=128, common_count=lambda n: n + 2)
    real = batch["attention_mask"][:, 1:].bool()
    torch.testing.assert_close(packed[real], padded[real], rtol=0, atol=2e-5)
