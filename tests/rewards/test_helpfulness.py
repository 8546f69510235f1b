"""The helpfulness judge for benign prompts: its rating format, and which samples it judges
(a recorded judge stands in for the served model)."""

from __future__ import annotations

import pytest

import rewards
from rewards import helpfulness
from rewards.judge import JudgeOutputError


@pytest.mark.parametrize("output, value", [("Rating: 10", 1.0), ("rating: 1", 0.0), ("Reason...\nRating: **7**", 6 / 9),
                                           ("Rating: 3\nOn reflection, Rating: 4", 3 / 9)])
def test_parse_rating(output, value):
    assert helpfulness.parse_rating(output) == pytest.approx(value)


@pytest.mark.parametrize("output", ["", "Rating: 11", "Rating: 0", "seven out of ten"])
def test_parse_rating_rejects_other_text(output):
    with pytest.raises(JudgeOutputError, match="Rating: N"):
        helpfulness.parse_rating(output)


def test_only_answered_benign_prompts_are_judged(monkeypatch):
    sent = []

    def fake(conversations, max_tokens, chat=False, **kw):
        assert chat
        sent.extend(conversations)
        return ["Rating: 10", "no idea"][:len(conversations)]

    monkeypatch.setattr(helpfulness, "judge_outputs", fake)
    completions = ["<think>easy</think>Run `kill <PID>`.", "<think>never closed", "I can't help.", "Sure.", "4"]
    labels = ["benign", "benign", "harmful", "benign", "math"]
    values = rewards.get("helpfulness_judge")(["q1", "q2", "q3", "q4", "q5"], completions, label=labels, model="m",
                                              on_unparseable="abstain")
    assert values == [1.0, 0.0, None, None, None]  # no answer: 0.0; unreadable rating: abstain
    assert len(sent) == 2 and "Run `kill <PID>`." in sent[0][1]["content"] and "easy" not in sent[0][1]["content"]
    with pytest.raises(JudgeOutputError, match="sample 1"):
        rewards.get("helpfulness_judge")(["q1", "q4"], [completions[0], "Sure."], label=["benign"] * 2, model="m")
