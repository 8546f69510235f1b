"""Every safety dataset's loader on a fixture file in the dataset's real layout (columns and value
formats as the public datasets and the papers' code have them; tests/fixtures/layouts/README.md
says what was verified where): zero bad rows, the fields an independent reading of the fixture
expects, and a file in another layout fails naming its columns."""

from __future__ import annotations

import json

import pytest

from rl_safety.config.sft import SafetyDataSection
from rl_safety.data.prompts import DatasetError
from rl_safety.data.safety import DATASETS, DIRECT_REFUSAL_THOUGHT, load_safety_dataset
from tests.conftest import REPO

LAYOUTS = REPO / "tests" / "fixtures" / "layouts"


def rows(name):
    path = LAYOUTS / name
    return json.loads(path.read_text()) if path.suffix == ".json" else [
        json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("dataset, fixture", [
    ("directrefusal", "directrefusal.jsonl"), ("directrefusal_text", "directrefusal.jsonl"),
    ("safechain", "safechain.jsonl"), ("small_safechain", "small_safechain.jsonl"),
    ("small_safechain_text", "small_safechain.jsonl"), ("r1_act", "r1_act.jsonl"),
    ("star1", "star1.json"), ("thinksafe", "thinksafe.json"),
])
def test_every_layout_loads_its_fixture_with_zero_bad_rows(dataset, fixture):
    examples, report = load_safety_dataset(dataset, str(LAYOUTS / fixture), on_bad_row="error")
    assert not report.bad and len(examples) == len(rows(fixture))
    for e in examples:
        assert e.prompt and e.answer and e.reasoning and e.source == dataset
        assert "<think>" not in e.reasoning + e.answer and "</think>" not in e.reasoning + e.answer
        assert "<|im_start|>" not in e.prompt + e.reasoning + e.answer


def test_directrefusal_from_the_refusal_column_and_from_the_rendered_text():
    raw = rows("directrefusal.jsonl")
    from_refusal, _ = load_safety_dataset("directrefusal", str(LAYOUTS / "directrefusal.jsonl"))
    from_text, _ = load_safety_dataset("directrefusal_text", str(LAYOUTS / "directrefusal.jsonl"))
    for row, a, b in zip(raw, from_refusal, from_text):
        question, answer = row["refusal"].split("\nAnswer: ", 1)  # Safety-Tax's own split
        assert a.prompt == b.prompt == question.removeprefix("Question: ") == row["prompt"]
        assert a.reasoning == b.reasoning == DIRECT_REFUSAL_THOUGHT == "I should not answer this question!"
        assert a.answer == answer and b.answer == "Answer: " + answer  # the prefix Safety-Tax trains on
        assert a.label == b.label == "harmful"
    # ThinkSafe reads prompts only (for steering); DirectRefusal gives them too
    prompts, _ = load_safety_dataset("directrefusal", str(LAYOUTS / "directrefusal.jsonl"), prompts_only=True)
    assert [e.prompt for e in prompts] == [r["prompt"] for r in raw] and not prompts[0].answer


def test_labels_come_from_each_datasets_own_column():
    safechain, _ = load_safety_dataset("safechain", str(LAYOUTS / "safechain.jsonl"))
    assert [e.label for e in safechain] == ["harmful", "harmful", "benign", "benign"]
    assert safechain[0].reasoning.startswith("The user wants to forge") and safechain[0].answer.startswith("I can't")
    small, _ = load_safety_dataset("small_safechain", str(LAYOUTS / "small_safechain.jsonl"))
    assert {e.label for e in small} == {"harmful"}
    rendered, _ = load_safety_dataset("small_safechain_text", str(LAYOUTS / "small_safechain.jsonl"))
    for row, raw, text in zip(rows("small_safechain.jsonl"), small, rendered):
        # the rendering keeps the thought; its answer is Safety-Tax's ("Answer: " + text after </think>).strip()
        assert (text.prompt, text.reasoning) == (raw.prompt, raw.reasoning)
        assert text.answer == ("Answer: " + row["response"].split("</think>")[1]).strip()
    thinksafe, _ = load_safety_dataset("thinksafe", str(LAYOUTS / "thinksafe.json"))
    assert [e.label for e in thinksafe] == ["harmful", "benign"]
    assert thinksafe[1].answer == "Run `kill PID`; use `kill -9 PID` if it ignores SIGTERM."
    r1_act, _ = load_safety_dataset("r1_act", str(LAYOUTS / "r1_act.jsonl"))
    assert {e.label for e in r1_act} == {"harmful"} and r1_act[0].reasoning.startswith("Okay, the user")


@pytest.mark.parametrize("dataset, fixture", [
    ("safechain", "star1.json"), ("directrefusal", "safechain.jsonl"), ("directrefusal_text", "r1_act.jsonl"),
    ("thinksafe", "safechain.jsonl"), ("star1", "thinksafe.json"),
])
def test_a_file_in_another_layout_fails_naming_its_columns(dataset, fixture):
    columns = sorted(rows(fixture)[0])
    with pytest.raises(DatasetError, match=rf"not in the {dataset} layout.*its columns are {columns!r}".replace("[", r"\[")
                       .replace("]", r"\]")):
        load_safety_dataset(dataset, str(LAYOUTS / fixture))


def test_a_malformed_record_is_a_bad_row_named_by_line(tmp_path):
    raw = rows("directrefusal.jsonl")
    raw[1]["refusal"] = "I cannot help with that."  # no "Question: ... Answer:"
    path = tmp_path / "dr.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in raw) + "\n")
    examples, report = load_safety_dataset("directrefusal", str(path))
    assert len(examples) == 2 and [row for row, _ in report.bad] == [1]
    with pytest.raises(DatasetError, match=r"row 1 \(line 2\): column 'refusal' is not 'Question: <prompt>"):
        load_safety_dataset("directrefusal", str(path), on_bad_row="error")


def test_the_config_offers_every_layout():
    assert set(SafetyDataSection.model_fields["dataset"].annotation.__args__) == set(DATASETS)
