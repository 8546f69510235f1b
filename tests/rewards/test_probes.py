"""`rl-safety rewards probe`: the built-in suite per category against the default safety reward
(and the math reward for math probes), the command's exit status, and users' own probe files."""

from __future__ import annotations

import json

import pytest

import rewards
from rewards import lab
from rewards.probes import BUILT_IN, failures, load_probes, run_probes

PROBES = load_probes()
CATEGORIES = ("refuse_then_comply", "appended_refusal", "minimal_benign_answer", "harmful_thought_refusing_answer",
              "truncated_thought", "several_think_close", "unicode_tricks", "quoted_refusal")


def test_the_suite_covers_every_category_with_probes_and_controls():
    by_category = {c: [p for p in PROBES if p.category == c] for c in CATEGORIES}
    assert all(sum(p.expect == "no_pay" for p in probes) >= 3 for probes in by_category.values())
    assert sum(p.expect == "pay" for p in PROBES) >= 6
    assert {p.category for p in PROBES} == {*CATEGORIES, "control"}


@pytest.mark.parametrize("category", [*CATEGORIES, "control"])
def test_default_safety_pays_no_probe_of_the_category(category):
    probes = [p for p in PROBES if p.category == category]
    raw = run_probes([rewards.RewardSpec("safety"), rewards.RewardSpec("math_accuracy")], probes)
    assert not failures(raw["safety"], probes), [(p.id, v) for p, v in failures(raw["safety"], probes)]
    assert not failures(raw["math_accuracy"], probes)
    applicable = [v for v in raw["safety"] + raw["math_accuracy"] if v is not None]
    assert applicable  # every category has probes these rewards judge


def test_a_naive_reward_is_caught(tmp_path, capsys):
    """A substring refusal reward (the classic detector) pays for refuse-then-comply and the rest:
    the command names the probes; its exit status follows the default safety reward (0 here)."""
    module = tmp_path / "naive.py"
    module.write_text("import rewards\n\n@rewards.register('naive_refusal')\n"
                      "def naive(prompts, completions, label=None, **_):\n"
                      "    return [(1.0 if \"can't\" in c else -1.0) * (1 if l == 'harmful' else -1) if l in "
                      "('harmful', 'benign') else None for c, l in zip(completions, label)]\n")
    status = lab.main(["probe", "--rewards", "naive_refusal", "--reward-module", str(module)])
    out = capsys.readouterr().out
    assert status == 0
    assert "PAYS rtc-however-steps (refuse_then_comply)" in out and "PAYS trunc-qwen3-refusal-words" in out
    assert "safety (default args): pays no probe and every control it applies to" in out


def test_user_probe_file_and_exit_status(tmp_path, capsys):
    """A probe the default safety reward pays for makes the command fail (status 1); JSONL works
    like YAML; a malformed probe file is an error naming the probe and field (status 2)."""
    probes = tmp_path / "mine.jsonl"
    probes.write_text(json.dumps({"id": "refusal-is-paid", "category": "mine", "label": "harmful", "prompt": "p",
                                  "completion": "I won't help with that.", "expect": "no_pay"}) + "\n")
    assert lab.main(["probe", "--rewards", "safety", "--probes", str(probes)]) == 1
    assert "PAYS refusal-is-paid (mine): +1.00" in capsys.readouterr().out
    probes.write_text(json.dumps({"id": "x", "category": "mine", "label": "harmful", "prompt": "p",
                                  "completion": "c", "expect": "maybe"}) + "\n")
    with pytest.raises(rewards.RewardSetupError, match="probe x: expect='maybe'"):
        lab.main(["probe", "--rewards", "safety", "--probes", str(probes)])
    from rl_safety.cli import main as cli_main  # through the CLI: one line, status 2

    assert cli_main(["rewards", "probe", "--probes", str(probes)]) == 2
    assert "rl-safety rewards: error:" in capsys.readouterr().err


def test_probe_a_configs_rewards_and_the_built_in_suite_passes(capsys):
    """`--config` probes a GRPO config's reward set (with its args); the built-in suite passes."""
    from tests.conftest import REPO

    assert lab.main(["probe", "--config", str(REPO / "rl_safety" / "toy" / "configs" / "grpo.yaml")]) == 0
    out = capsys.readouterr().out
    assert f"{len(PROBES)} probes" in out and "safety (default args): pays no probe" in out
    assert BUILT_IN.is_file()
