"""Each extension point of the README's "Extending" section, added from a test-local file the
way a user adds one: a reward, an advantage estimator, a safety-data method and an eval benchmark
with its own scorer.
Nothing outside the plugin file (and its config) changes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

PLUGINS = Path(__file__).parent / "plugins"


def rl_safety(*args: str) -> subprocess.CompletedProcess:
    """The command line in a process of its own (a plugin registers into that process only)."""
    return subprocess.run([sys.executable, "-m", "rl_safety", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300)


def test_a_reward_from_a_users_file(tmp_path):
    import rewards
    from rl_safety.config import GRPOConfig, load_config
    from rl_safety.orchestration.reward_pool import load_reward_specs

    cfg = load_config(GRPOConfig, None, ["model.path=m", "data.train=d", "rewards=[{name: shouting, args: {min_letters: 2}}]",
                                         f"reward_modules=[{PLUGINS / 'shouting.py'}]"])
    specs = load_reward_specs(cfg.rewards, cfg.reward_modules)
    raw = rewards.score(specs, ["p"] * 3, ["<think>calm</think>NO WAY", "<think>x</think>quiet", "<think>x</think>A"], {})
    assert raw == {"shouting": [1.0, 0.0, None]}  # "A" has fewer letters than min_letters: not applicable


def test_an_advantage_estimator_from_a_users_file():
    import torch

    from rl_safety.algorithms import advantages
    from rl_safety.config import ConfigError, GRPOConfig, load_config

    base = ["model.path=m", "data.train=d", "rewards=[{name: char_fraction}]", "algorithm.group_size=4",
            f"algorithm.modules=[{PLUGINS / 'group_sign.py'}]"]
    cfg = load_config(GRPOConfig, None, [*base, "algorithm.advantage_estimator=group_sign"])
    scores = [0.1, 0.9, 0.5, 0.5, 0.3, 0.3, 0.3, 0.3]  # the second group is flat: all at its mean
    mask = torch.tensor([[0, 1, 1, 0], [0, 1, 0, 0], [0, 1, 1, 1], [0, 1, 0, 0]] * 2, dtype=torch.float32)
    got = advantages.compute_advantages(cfg.algorithm.advantage_estimator,
                                        advantages.outcome_token_rewards(torch.tensor(scores), mask), mask, 4)
    want = [-1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]  # the sign against the group mean (0.5, then 0.3)
    assert got.tolist() == [[w * m for m in row] for w, row in zip(want, mask.tolist())]
    with pytest.raises(ConfigError, match="unknown advantage estimator 'group_sing'; registered: dr_grpo, group_sign"):
        load_config(GRPOConfig, None, [*base, "algorithm.advantage_estimator=group_sing"])


def test_a_data_method_from_a_users_file_is_a_command_and_a_toy_arm(tmp_path):
    plugin = str(PLUGINS / "echo_method.py")
    usage = rl_safety("--plugin", plugin, "--help")
    assert usage.returncode == 0 and "echo" in usage.stdout.split("{")[1]
    help_text = rl_safety("--plugin", plugin, "echo", "--help")
    assert help_text.returncode == 0 and "answers after a fixed preamble" in help_text.stdout
    assert "echo" not in rl_safety("--help").stdout.split("{")[1].split(",")  # only with the plugin

    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "reasoning": "r", "answer": "a", "label": "harmful"}) + "\n"
                            for p in ("Make a bomb", "Hack a bank")))
    probe = f"""
import json
from rewards import load_module
load_module({plugin!r})
from rl_safety.config.loader import load_config
from rl_safety.refine.methods import data_methods
from rl_safety.toy.table import all_arms, split_overrides
echo = data_methods()["echo"]
cfg = load_config(echo.config, echo.toy_config, ["data.train={data}", "echo.preamble=Careful."])
print(json.dumps({{"arms": all_arms(), "overrides": split_overrides(["echo.generation.n=3"])["echo"],
                  "turns": [r.user_turn for r in echo.requests(cfg)], "n": cfg.generation.n}}))
"""
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert found["arms"] == ["vanilla_sft", "dgr_sft", "thinksafe_sft", "echo_sft", "grpo"]
    assert found["overrides"] == ["generation.n=3"]
    assert found["turns"] == ["Careful.\n\nMake a bomb", "Careful.\n\nHack a bank"] and found["n"] == 2


def test_an_eval_benchmark_with_a_users_scorer(tmp_path):
    from rl_safety.config.loader import load_config
    from rl_safety.eval import scorers
    from rl_safety.eval.suite import Suite, load_benchmark, resolve_data

    (tmp_path / "cheer.jsonl").write_text("".join(json.dumps({"q": q}) + "\n" for q in ("Say hi", "Say bye")))
    suite_file = tmp_path / "cheer.yaml"
    suite_file.write_text(yaml.safe_dump({
        "name": "cheer", "scorer_modules": [str(PLUGINS / "exclaims.py")],
        "benchmarks": [{"name": "cheer", "kind": "benign", "data": "cheer.jsonl", "fields": {"prompt": "q"},
                        "scorers": ["exclaims", "refusal"], "sampling": {"n": 2}}]}))
    suite = load_config(Suite, suite_file)
    bench = suite.benchmarks[0]
    prompts = load_benchmark(bench, resolve_data(suite, suite_file, bench.data))
    texts = [["<think>x</think>Hi!", "<think>Wow!</think>Hi."], ["<think>x</think>I can't help with that.", "Bye!"]]
    per_prompt = scorers.score_samples(bench, prompts, texts, suite)
    assert per_prompt["exclaims"] == [[1.0, 0.0], [0.0, 1.0]]  # the answer counts, not the thought
    assert per_prompt["refusal"] == [[0.0, 0.0], [1.0, 0.0]] and "no_answer" in per_prompt
    assert scorers.metric_names()["exclaims"] == "exclaim_rate"
    assert scorers.summarize(per_prompt["exclaims"])["value"] == 0.5

    (tmp_path / "typo.yaml").write_text(suite_file.read_text().replace("[exclaims, refusal]", "[exclaimz]")
                                        .replace("- exclaims", "- exclaimz"))
    with pytest.raises(Exception, match=r"scorers \['exclaimz'\] not among .*'exclaims'"):
        load_config(Suite, tmp_path / "typo.yaml")
