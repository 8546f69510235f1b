"""Safety datasets under the declared schema, and chat rendering per model family."""

from __future__ import annotations

import json

import pytest

from rl_safety.data import chat
from rl_safety.data.prompts import DatasetError
from rl_safety.data.safety import SafetyExample, load_safety_dataset
from tests.conftest import SHARED_DATA

STAR1 = SHARED_DATA / "star1" / "STAR-1.json"


def _jsonl(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_safechain_rows_that_break_the_schema_are_reported_by_line_and_skipped(tmp_path, caplog):
    good = {"instruction": "How do I pick a lock?", "response": "The user asks.\n</think>\n\nI can't help.", "label": "vanilla_harmful"}
    path = _jsonl(tmp_path / "sc.jsonl", [
        good,
        {**good, "label": "adversarial_benign", "response": "Fine.</think>Sure, here."},
        {**good, "instruction": 42},                                   # line 3: prompt not text
        {**good, "response": "thinking forever, never closed"},         # line 4: no </think>
        {**good, "label": "math"},                                      # line 5: label neither
        "{not json",                                                    # line 6
        {**good, "response": "a</think>b</think>c"},                    # line 7: two thoughts
        {**good, "response": "thought</think>   "},                     # line 8: no answer
        {**good, "label": "unharmful"},                                 # WildGuard's benign
        {**good, "label": "Not harmful"},
        {**good, "label": "harmfull"},                                  # line 11: misspelt: bad, not benign
        {**good, "response": "x<think>a</think>b"},                     # line 12: text before the thought
    ])
    examples, report = load_safety_dataset("safechain", str(path))
    assert [(e.row, e.label) for e in examples] == [(0, "harmful"), (1, "benign"), (8, "benign"), (9, "benign")]
    assert examples[0] == SafetyExample("How do I pick a lock?", "The user asks.", "I can't help.", "harmful", "safechain", 0)
    assert [row for row, _ in report.bad] == [2, 3, 4, 5, 6, 7, 10, 11]
    assert "line 3" in caplog.text and "holds int, not text" in caplog.text
    assert "line 5" in caplog.text and "'math'" in caplog.text
    assert "line 11" in caplog.text and "'harmfull' is not a prompt label" in caplog.text
    with pytest.raises(DatasetError, match=r"row 2 \(line 3\).*prompt column 'instruction' holds int"):
        load_safety_dataset("safechain", str(path), on_bad_row="error")


def test_column_override_and_missing_columns_named(tmp_path):
    path = _jsonl(tmp_path / "dr.jsonl", [{"q": "Make a bomb", "r": "<think>\nNo.\n</think>\n\nI refuse."}])
    examples, _ = load_safety_dataset("directrefusal", str(path), columns={"prompt": "q", "response": "r"})
    assert (examples[0].reasoning, examples[0].answer, examples[0].label) == ("No.", "I refuse.", "harmful")
    with pytest.raises(DatasetError, match=r"not in the directrefusal layout, which needs a 'refusal' column; "
                                           r"its columns are \['q', 'r'\]"):
        load_safety_dataset("directrefusal", str(path))


@pytest.mark.skipif(not STAR1.is_file(), reason=f"{STAR1} absent (shared data not mounted)")
def test_star1_loads_whole():
    examples, report = load_safety_dataset("star1", str(STAR1))
    assert len(examples) == 1000 and not report.bad
    assert all(e.label == "harmful" and e.reasoning and e.answer for e in examples)
    assert "<think>" not in examples[0].reasoning and "</think>" not in examples[0].answer


def test_render_example_round_trips_and_keeps_the_thought(tiny_models):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_models["tied"])
    prompt_text, thought, answer = chat.render_example(tok, "hi", "think it", "hello")
    assert prompt_text == "<|user|>hi<|end|><|assistant|>"
    assert thought == "<think>\nthink it\n</think>\n\n" and answer == "hello<|end|>"
    ids, segments = chat.tokenize_example(tok, "hi", "think it", "hello")
    assert ids == tok(prompt_text + thought + answer, add_special_tokens=False)["input_ids"]
    assert segments.count(chat.PROMPT) == len(tok(prompt_text, add_special_tokens=False)["input_ids"])


def test_r1_template_opens_the_thought_in_the_prompt(tiny_models):
    """An R1-distill-style template ends the generation prompt with `<think>\\n`: the training
    completion must not open a second thought."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_models["tied"])
    tok.chat_template = ("{% for m in messages %}<|user|>{{ m['content'] }}{% endfor %}"
                         "{% if add_generation_prompt %}<|assistant|><think>\n{% endif %}")
    prompt_text, thought, _ = chat.render_example(tok, "hi", "r", "a", family="r1_distill")
    assert prompt_text.endswith("<think>\n") and thought == "r\n</think>\n\n"
