"""The registry, validated scoring and weighted composition."""

from __future__ import annotations

import math

import pytest

import rewards
from rewards import RewardError, RewardSpec


@pytest.fixture
def scratch_rewards():
    """Register test rewards under temporary names and remove them afterwards."""
    from rewards.registry import _REGISTRY

    added: list[str] = []

    def add(name, fn):
        rewards.register(name)(fn)
        added.append(name)
        return fn

    yield add
    for name in added:
        _REGISTRY.pop(name, None)


def test_builtin_rewards_registered():
    for name in ("safety", "math_accuracy", "gsm8k_accuracy", "multiple_choice", "think_format",
                 "overlong_penalty", "cosine_length", "repetition_penalty", "guard_judge"):
        assert name in rewards.names()
    assert callable(rewards.get("safety"))


def test_import_is_cheap():
    import subprocess
    import sys

    code = ("import sys, rewards; heavy = [m for m in ('torch', 'vllm', 'ray', 'transformers', 'math_verify', 'sympy') "
            "if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_duplicate_name_and_unknown_name(scratch_rewards):
    scratch_rewards("t_dup", lambda prompts, completions, **kw: [0.0] * len(prompts))
    with pytest.raises(ValueError, match="t_dup"):
        rewards.register("t_dup")(lambda prompts, completions, **kw: [1.0] * len(prompts))
    with pytest.raises(rewards.RewardSetupError, match="no reward named 'nope'.*safety"):
        rewards.get("nope")


def test_load_module(tmp_path):
    path = tmp_path / "my_rewards.py"
    path.write_text("import rewards\n\n@rewards.register('t_user_len')\n"
                    "def f(prompts, completions, **kw):\n    return [float(len(c)) for c in completions]\n")
    try:
        rewards.load_module(path)
        rewards.load_module(path)  # a second load (driver and worker) is a no-op, not a duplicate
        assert rewards.get("t_user_len")(["p"], ["abc"]) == [3.0]
    finally:
        from rewards.registry import _REGISTRY

        _REGISTRY.pop("t_user_len", None)


def test_load_module_errors_name_the_path(tmp_path):
    with pytest.raises(rewards.RewardSetupError, match="missing.py does not exist"):
        rewards.load_module(tmp_path / "missing.py")
    broken = tmp_path / "broken.py"
    broken.write_text("import rewards\nraise RuntimeError('boom')\n")
    with pytest.raises(rewards.RewardSetupError, match=r"broken\.py failed to import: RuntimeError: boom"):
        rewards.load_module(broken)
    exits = tmp_path / "exits.py"
    exits.write_text("import sys\nsys.exit(0)\n")  # would end the whole command with status 0
    with pytest.raises(rewards.RewardSetupError, match=r"exits\.py called sys.exit\(0\)"):
        rewards.load_module(exits)


def test_check_args_refuses_misspelt_and_missing_arguments():
    rewards.check_args("overlong_penalty", {"max_length": 10, "cache_length": 2})
    with pytest.raises(rewards.RewardSetupError, match="takes no argument 'max_lenght'"):
        rewards.check_args("overlong_penalty", {"max_lenght": 10, "cache_length": 2})
    with pytest.raises(rewards.RewardSetupError, match="needs argument.*cache_length"):
        rewards.check_args("overlong_penalty", {"max_length": 10})


def test_a_reward_that_exits_is_a_reward_error(scratch_rewards):
    import sys

    scratch_rewards("t_exit", lambda prompts, completions, **kw: sys.exit(3))
    with pytest.raises(rewards.RewardError, match=r"'t_exit' called sys.exit\(3\)"):
        rewards.score([rewards.RewardSpec("t_exit")], ["p"], ["c"], {})


def test_score_passes_columns_and_args(scratch_rewards):
    def seen(prompts, completions, label, scale=1.0, **kw):
        return [scale * (l == "x") for l in label]

    scratch_rewards("t_cols", seen)
    raw = rewards.score([RewardSpec("t_cols", args={"scale": 2.0})], ["a", "b"], ["c", "d"],
                        {"label": ["x", "y"], "other": [1, 2]})
    assert raw == {"t_cols": [2.0, 0.0]}


@pytest.mark.parametrize("values, message", [
    ([1.0, math.nan], r"'t_bad' returned nan for sample 1"),
    ([math.inf, 0.0], r"'t_bad' returned inf for sample 0"),
    ([1.0], r"'t_bad' returned 1 values for 2 samples"),
    (None, r"'t_bad' returned NoneType, expected a list"),
    (0.5, r"'t_bad' returned float, expected a list"),
    ([None, "1.0"], r"'t_bad' returned '1.0' \(str\) for sample 1"),
    ([[1.0], 2.0], r"'t_bad' returned \[1.0\] \(list\) for sample 0"),
])
def test_bad_outputs_name_the_reward(scratch_rewards, values, message):
    scratch_rewards("t_bad", lambda prompts, completions, **kw: values)
    with pytest.raises(RewardError, match=message):
        rewards.score([RewardSpec("t_bad")], ["a", "b"], ["c", "d"], {})


def test_exception_inside_reward_is_chained(scratch_rewards):
    def broken(prompts, completions, **kw):
        raise ZeroDivisionError("division by zero")

    scratch_rewards("t_raises", broken)
    with pytest.raises(RewardError, match="'t_raises' raised ZeroDivisionError") as info:
        rewards.score([RewardSpec("t_raises")], ["a"], ["b"], {})
    assert isinstance(info.value.__cause__, ZeroDivisionError)


def test_numbers_of_any_kind_and_none_are_accepted(scratch_rewards):
    import numpy as np

    scratch_rewards("t_mixed", lambda prompts, completions, **kw: [True, 2, np.float32(0.5), None])
    assert rewards.score([RewardSpec("t_mixed")], ["p"] * 4, ["c"] * 4, {}) == {"t_mixed": [1.0, 2.0, 0.5, None]}


def test_combine_weights_and_none():
    specs = [RewardSpec("a", weight=1.0), RewardSpec("b", weight=0.5)]
    raw = {"a": [1.0, None, -1.0], "b": [2.0, 4.0, None]}
    # 1 + 0.5*2 = 2; None contributes 0: 0.5*4 = 2; -1 + 0 = -1
    assert rewards.combine(raw, specs) == [2.0, 2.0, -1.0]


def test_combine_all_none_is_an_error():
    with pytest.raises(RewardError, match="sample 1"):
        rewards.combine({"a": [1.0, None], "b": [0.0, None]}, [RewardSpec("a"), RewardSpec("b")])


def test_combine_missing_reward_is_an_error():
    with pytest.raises(RewardError, match="'b' has no scores"):
        rewards.combine({"a": [1.0]}, [RewardSpec("a"), RewardSpec("b")])


def test_combine_batch_and_group_normalization():
    # batch: values 1, 3 (None skipped): mean 2, std 1 -> -1, +1
    assert rewards.combine({"a": [1.0, None, 3.0], "b": [0.0, 1.0, 0.0]},
                           [RewardSpec("a", normalize="batch"), RewardSpec("b")]) == [-1.0, 1.0, 1.0]
    # groups of 2: (0, 2) -> (-1, 1); (5, 5) constant -> (0, 0); weight 2
    assert rewards.combine({"a": [0.0, 2.0, 5.0, 5.0]}, [RewardSpec("a", weight=2.0, normalize="group")],
                           group_size=2) == [-2.0, 2.0, 0.0, 0.0]
    with pytest.raises(RewardError, match="group_size"):
        rewards.combine({"a": [0.0, 1.0, 2.0]}, [RewardSpec("a", normalize="group")], group_size=2)
    with pytest.raises(ValueError, match="normalize='z'"):
        RewardSpec("a", normalize="z")


def test_chat_message_completions():
    completions = [[{"role": "assistant", "content": "<think>ok</think>\\boxed{4}"}]]
    assert rewards.get("math_accuracy")(["2+2?"], completions, answer=["4"]) == [1.0]


def test_a_rewards_validator_checks_argument_values():
    """Beyond names, a reward may register a validator for its argument values: safety checks its
    payoffs are numbers and its guard settings are a guard's."""
    rewards.check_args("safety", {"harmful_refusal": 2.0, "guard": {"model": "m"}})
    with pytest.raises(rewards.RewardSetupError, match="reward 'safety': harmful_refusal='1' is not a number"):
        rewards.check_args("safety", {"harmful_refusal": "1"})
    with pytest.raises(rewards.RewardSetupError, match="reward 'safety' takes no argument 'harmful_refusl'"):
        rewards.check_args("safety", {"harmful_refusl": 5})


@pytest.mark.parametrize("weight", [math.nan, math.inf, -math.inf])
def test_weights_must_be_finite(weight):
    with pytest.raises(ValueError, match="is not a finite number"):
        RewardSpec("safety", weight=weight)


def test_diagnostics_are_reported_beside_the_reward_and_not_added(scratch_rewards):
    scratch_rewards("t_diag", lambda prompts, completions, **kw: rewards.Scores(
        [1.0, 2.0], diagnostics={"agree": [1.0, None]}))
    raw = rewards.score([RewardSpec("t_diag")], ["p", "q"], ["a", "b"], {})
    assert raw == {"t_diag": [1.0, 2.0], "t_diag/agree": [1.0, None]}
    assert rewards.combine(raw, [RewardSpec("t_diag", weight=2.0)]) == [2.0, 4.0]
    scratch_rewards("t_bad_diag", lambda prompts, completions, **kw: rewards.Scores([1.0], diagnostics={"x": [math.nan]}))
    with pytest.raises(RewardError, match="'t_bad_diag/x' returned nan for sample 0"):
        rewards.score([RewardSpec("t_bad_diag")], ["p"], ["a"], {})


def test_the_judges_rewards_call_are_counted_once_per_shared_server(monkeypatch):
    from rewards import judge

    guard = {"model": "llama-guard", "engine": {"num_engines": 2, "tensor_parallel_size": 2}}
    demands = rewards.judge_demands([
        ("guard_judge", guard),
        ("safety", {"guard": guard}),  # the same guard, same settings: one set of engines
        ("helpfulness_judge", {"model": "qwen-judge"}),  # defaults filled in: 1 engine, dtype auto
        ("beaver_dam", {}),  # the moderation classifier, its default model
        ("safety", {}),  # no guard: no judge
        ("think_format", {}),  # no judge at all
    ])
    assert [(d.what, d.devices) for d in demands] == [
        ("judge engines (llama-guard)", 4), ("judge engines (qwen-judge)", 1),
        ("moderation classifier (PKU-Alignment/beaver-dam-7b)", 1)]
    # the key counted is the one the reward starts its engines under
    started = []
    monkeypatch.setattr(judge, "shared_judge", lambda demand, start: started.append(demand))
    judge.judge_engines("qwen-judge", None, "auto")
    assert started == [demands[1]]
