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
