"""The token-budget learner's pieces (`rl_safety.learner.packing`): chunked logprobs / entropy
against a full fp32 log_softmax, first-fit-decreasing packing and length buckets by hand, the
layout chosen per attention implementation, and, on a real tiny Qwen2, concatenated and
length-bucket forwards against padded ones: logprobs, entropy and the GRPO loss's parameter
gradients against one plain padded forward of the whole batch."""

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


def test_length_buckets_by_hand():
    # longest first; a sequence joins the open bucket while rows x its longest <= 200 and it is at
    # least 0.9 x that longest: 90 and 88 (180 tokens); 61, 60, 57 (183); 33, 30 (66, 30 >= 29.7);
    # then each shorter one misses 0.9 x the previous: 18, 12, 9, 7, 4
    lengths = [7, 90, 12, 60, 61, 33, 88, 18, 9, 4, 30, 57]
    assert packing.length_buckets(lengths, 200) == [[1, 6], [4, 3, 11], [5, 10], [7], [2], [8], [0], [9]]
    assert packing.length_buckets([50, 50, 50, 50], 120) == [[0, 1], [2, 3]]  # the budget counts padded rows
    gen = torch.Generator().manual_seed(3)
    lengths = torch.randint(4, 300, (200,), generator=gen).tolist()
    buckets = packing.length_buckets(lengths, 600)
    assert sorted(i for b in buckets for i in b) == list(range(len(lengths)))
    for b in buckets:
        longest = max(lengths[i] for i in b)
        assert lengths[b[0]] == longest and len(b) * longest <= 600
        assert min(lengths[i] for i in b) >= 0.9 * longest  # at most 10% of a row is padding
    with pytest.raises(ValueError, match="65 tokens exceeds learner.max_tokens_per_micro_batch=64"):
        packing.length_buckets([3, 65], 64)


@pytest.mark.parametrize("attention,layout", [("sdpa", "length_buckets"), ("eager", "length_buckets"),
                                              ("flash_attention_2", "concatenated"),
                                              ("flash_attention_3", "concatenated"),
                                              ("kernels-community/flash-attn3", "concatenated")])
def test_auto_concatenates_only_for_a_varlen_attention_kernel(attention, layout):
    assert packing.layout_for(4096, "auto", attention) == layout
    assert packing.layout_for(None, "auto", attention) == "padded"  # no token budget
    for forced in ("concatenated", "length_buckets"):
        assert packing.layout_for(4096, forced, attention) == forced
    with pytest.raises(ValueError, match="needs a token budget"):
        packing.micro_batches(torch.ones(2, 3), "length_buckets", 2)


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



def whole_batch_gradient(model, batch, cfg) -> dict[str, torch.Tensor]:
    """The independent reference: one plain forward of the whole right-padded batch (batch-max
    width, attention mask), a full fp32 log_softmax, grpo_loss on all of it."""
    model.zero_grad()
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    log_p = torch.log_softmax(logits[:, :-1].float() / 0.8, dim=-1)
    logprobs = log_p.gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
    loss, _ = losses.grpo_loss(logprobs, batch, cfg, norm_constant=100.0)
    loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters()}


BUCKET_LENGTHS = [7, 90, 12, 60, 61, 33, 88, 18, 9, 4, 30, 57]  # 469 tokens


@pytest.mark.parametrize("layout", ["padded", "concatenated", "length_buckets"])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_each_layout_gives_the_whole_batch_forwards_gradient(model, layout, attention):
    """The GRPO loss with KL summed over the layout's micro-batches (<= 200 tokens; padded: pairs),
    as `Learner.train` sums them, against the whole batch in one plain padded forward (fp32)."""
    model.set_attn_implementation(attention)
    batch = ragged_batch(model, BUCKET_LENGTHS)
    cfg = AlgorithmSection(kl_coef=0.1)
    plan = packing.micro_batches(batch["attention_mask"], layout, 2, 200)
    assert 1 < len(plan) < len(BUCKET_LENGTHS) and max(len(rows) for rows in plan) >= 2
    computed = sum(packing.computed_tokens(packing.select_rows(batch, rows)["attention_mask"], layout) for rows in plan)
    if layout == "length_buckets":
        assert [len(rows) for rows in plan] == [2, 3, 2, 1, 1, 1, 1, 1]  # as test_length_buckets_by_hand
        assert sum(BUCKET_LENGTHS) / computed >= 0.9
    if layout == "concatenated":
        assert computed == sum(BUCKET_LENGTHS)
    got = loss_gradient(model, batch, plan, layout == "concatenated", cfg)
    want = whole_batch_gradient(model, batch, cfg)
    for name, grad in want.items():
        assert grad.abs().sum() > 0, name
        torch.testing.assert_close(got[name], grad, rtol=1e-4, atol=1e-7, msg=name)


@pytest.mark.parametrize("packed", [True, False])
def test_an_empty_micro_batch_has_no_loss_and_no_gradient(model, packed):
    batch = ragged_batch(model, LENGTHS)
    part = packing.select_rows(batch, [])
    assert part["input_ids"].shape == (1, 2) and part["response_mask"].sum() == 0
    model.zero_grad()
    logprobs, _ = packing.forward_logprobs(model, part["input_ids"], part["attention_mask"], 1.0, packed=packed)
    loss, _ = losses.grpo_loss(logprobs, part, AlgorithmSection(kl_coef=0.1), norm_constant=100.0)
    loss.backward()
    assert loss.item() == 0
    assert all(p.grad is None or (p.grad == 0).all() for p in model.parameters())


@pytest.mark.parametrize("layout", ["concatenated", "length_buckets"])
def test_sequence_logprobs_in_a_token_budget_layout_equal_padded_with_extra_empty_micro_batches(model, layout):
    model.set_attn_implementation("sdpa")
    batch = ragged_batch(model, BUCKET_LENGTHS, seed=1)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        padded = sequence_logprobs(model, ids, mask, 1.0, micro_batch_size=3, device="cpu")
        budget = sequence_logprobs(model, ids, mask, 1.0, micro_batch_size=3, device="cpu", layout=layout,
                                   max_tokens_per_micro_batch=200, common_count=lambda n: n + 2)
    real = batch["attention_mask"][:, 1:].bool()
    torch.testing.assert_close(budget[real], padded[real], rtol=0, atol=2e-5)
