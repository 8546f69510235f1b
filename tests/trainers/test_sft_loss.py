"""SFT's data path without DeepSpeed: the prompt carries no loss, packing changes nothing."""

from __future__ import annotations

import pytest
import torch

from rl_safety.data import chat
from rl_safety.data.safety import SafetyExample
from rl_safety.trainers.sft import IGNORE, collate, encode_examples, pack, token_nll

EXAMPLES = [SafetyExample("Make a bomb", "harmful", "I can't help.", "harmful", "t", 0),
            SafetyExample("Bake bread", "fine", "Knead it.", "benign", "t", 1),
            SafetyExample("Hi", "greet", "Hello!", "benign", "t", 2)]


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_models):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tiny_models["untied"]
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), AutoTokenizer.from_pretrained(path)


def test_prompt_tokens_carry_no_loss(model_and_tokenizer):
    """Labels are IGNORE exactly on the prompt; the gradient of the loss with respect to the
    logits that predict prompt tokens is exactly zero, and non-zero for every assistant token;
    the loss is the hand-computed mean NLL of the assistant tokens."""
    model, tok = model_and_tokenizer
    encoded, dropped = encode_examples(EXAMPLES, tok, family="auto", system_prompt=None, max_tokens=512, prompt_loss=False)
    assert dropped == 0
    for e, (ids, labels) in zip(EXAMPLES, encoded):
        _, segments = chat.tokenize_example(tok, e.prompt, e.reasoning, e.answer)
        assert [lab == IGNORE for lab in labels] == [s == chat.PROMPT for s in segments]
    batch = collate([[e] for e in encoded], tok.pad_token_id)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.detach().requires_grad_(True)
    nll, count = token_nll(logits, batch["labels"])
    (nll / count).backward()
    grad_norm_per_position = logits.grad[:, :-1].abs().sum(-1)  # position t predicts token t+1
    predicts_prompt = batch["labels"][:, 1:] == IGNORE
    assert torch.all(grad_norm_per_position[predicts_prompt] == 0)
    assert torch.all(grad_norm_per_position[~predicts_prompt] > 0)

    expected, n = 0.0, 0
    for r, (ids, labels) in enumerate(encoded):
        logp = torch.log_softmax(logits[r].detach().double(), -1)
        for t in range(1, len(ids)):
            if labels[t] != IGNORE:
                expected -= float(logp[t - 1, ids[t]])
                n += 1
    assert count == n and float(nll.detach()) / count == pytest.approx(expected / n, rel=1e-5)


def test_packing_gives_the_unpacked_loss(model_and_tokenizer):
    """Packed examples do not attend to each other: the summed NLL of one packed row equals the
    sum over the same examples padded one per row."""
    model, tok = model_and_tokenizer
    encoded, _ = encode_examples(EXAMPLES, tok, family="auto", system_prompt=None, max_tokens=512, prompt_loss=False)
    rows = pack(encoded, row_tokens=512)
    assert len(rows) == 1 and len(rows[0]) == 3
    packed = collate(rows, tok.pad_token_id)
    assert "attention_mask" not in packed and packed["position_ids"][0, len(encoded[0][0])] == 0
    unpacked = collate([[e] for e in encoded], tok.pad_token_id)
    with torch.no_grad():
        a, na = token_nll(model(input_ids=packed["input_ids"], position_ids=packed["position_ids"], use_cache=False).logits, packed["labels"])
        b, nb = token_nll(model(input_ids=unpacked["input_ids"], attention_mask=unpacked["attention_mask"]).logits, unpacked["labels"])
    assert na == nb
    assert float(a) == pytest.approx(float(b), rel=1e-5)


@pytest.mark.parametrize("examples, micro, accum, ranks", [(10, 1, 1, 8), (10, 2, 2, 1), (16, 2, 2, 2), (3, 4, 2, 2)])
def test_every_example_trains_once_per_epoch_and_the_last_step_is_padded(examples, micro, accum, ranks):
    """10 examples on 8 ranks train 10 (not 8): the last step is partial, its empty places None."""
    import numpy as np

    from rl_safety.trainers.sft import step_micro_batches

    order = np.random.default_rng(0).permutation(examples)
    per_step = micro * accum * ranks
    steps = -(-examples // per_step)
    seen = []
    for slot in range(steps):
        for rank in range(ranks):
            batches = step_micro_batches(order, slot, micro, accum, ranks, rank)
            assert len(batches) == accum and all(len(b) == micro for b in batches)
            seen += [i for b in batches for i in b]
    assert sorted(i for i in seen if i is not None) == list(range(examples))
    assert seen.count(None) == steps * per_step - examples
    assert [i for i in seen if i is not None] == list(order)  # in the epoch's order


def test_a_padding_row_adds_no_loss_and_no_gradient(model_and_tokenizer):
    """A micro-batch holding a real example and a padding row ([pad], [IGNORE]) gives the real
    example's loss and gradient alone."""
    model, tok = model_and_tokenizer
    encoded, _ = encode_examples(EXAMPLES[:1], tok, family="auto", system_prompt=None, max_tokens=512, prompt_loss=False)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    def loss_and_grads(rows):
        model.zero_grad()
        batch = collate(rows, pad)
        nll, count = token_nll(model(**{k: v for k, v in batch.items() if k != "labels"}).logits, batch["labels"])
        nll.backward()
        return nll.item(), count, [p.grad.clone() for p in model.parameters()]

    alone = loss_and_grads([[encoded[0]]])
    padded = loss_and_grads([[encoded[0]], [([pad], [IGNORE])]])
    assert padded[0] == pytest.approx(alone[0], rel=1e-5) and padded[1] == alone[1]
    for a, b in zip(alone[2], padded[2]):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)
