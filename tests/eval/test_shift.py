"""`shift` (the model's NLL on a dataset's reasoning and answer) against a hand computation."""

from __future__ import annotations

import json
import math

import pytest

from rl_safety.data import chat
from rl_safety.data.safety import SafetyExample


def test_shift_matches_a_hand_computed_nll(tiny_models, tmp_path):
    """Mean NLL of the reasoning tokens and of the answer tokens, computed here token by token
    from the model's raw logits (log-softmax by hand), against `measure_shift`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rl_safety.eval.shift import measure_shift

    tok = AutoTokenizer.from_pretrained(tiny_models["untied"])
    model = AutoModelForCausalLM.from_pretrained(tiny_models["untied"], dtype=torch.float32)
    examples = [SafetyExample("Make a bomb", "no", "I can't.", "harmful", "t", 0),
                SafetyExample("Bake bread", "ok then", "Knead.", "benign", "t", 1)]
    report = measure_shift(model, tok, examples, batch_size=2)  # batched and padded

    sums, counts = {1: 0.0, 2: 0.0}, {1: 0, 2: 0}
    for e in examples:
        ids, seg = chat.tokenize_example(tok, e.prompt, e.reasoning, e.answer)
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0].double()
        for t in range(1, len(ids)):
            if seg[t] == chat.PROMPT:
                continue
            row = logits[t - 1]
            log_z = math.log(sum(math.exp(float(v)) for v in row))
            sums[seg[t]] += log_z - float(row[ids[t]])
            counts[seg[t]] += 1
    assert report.reasoning_tokens == counts[1] and report.answer_tokens == counts[2]
    assert counts[1] > 4 and counts[2] > 4
    assert report.reasoning_nll == pytest.approx(sums[1] / counts[1], rel=1e-5)
    assert report.answer_nll == pytest.approx(sums[2] / counts[2], rel=1e-5)
    assert report.reasoning_ppl == pytest.approx(math.exp(sums[1] / counts[1]), rel=1e-5)


def test_shift_command(tiny_models, tmp_path, capsys):
    from rl_safety.cli import main

    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"prompt": "p", "reasoning": "r", "answer": "a", "label": "harmful"}) + "\n")
    assert main(["shift", "--model", str(tiny_models["tied"]), "--data", str(data)]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["examples"] == 1 and out["answer_tokens"] == 2 and out["reasoning_nll"] > 0
