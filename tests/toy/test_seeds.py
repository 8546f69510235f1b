"""`toy table --seeds`, `--shift` and `--sweep`: what a seed varies, the mean and 95% interval over
seeds, the summaries' markdown, and bad options refused before any work (pure functions; the
table itself runs in tests/toy/test_table.py)."""

import math
import random

import pytest

from rl_safety.toy.table import TOY_CONFIGS, mean_interval, seed_markdown, seed_overrides, seed_summary, split_overrides


def test_mean_interval_by_hand():
    mean, half = mean_interval([50.0, 60.0, 70.0])
    assert mean == 60.0 and half == pytest.approx(4.303 * 10.0 / math.sqrt(3))  # t(0.975, 2) x sd / sqrt(n)
    assert mean_interval([42.0]) == (42.0, None)


def test_interval_covers_the_true_mean_95_percent_of_the_time():
    """An independent check of the quantiles: simulated seeds of a normal metric."""
    rng = random.Random(0)
    for n in (2, 3, 5):
        trials = 20_000
        covered = 0
        for _ in range(trials):
            mean, half = mean_interval([rng.gauss(10.0, 3.0) for _ in range(n)])
            covered += abs(mean - 10.0) <= half
        assert covered / trials == pytest.approx(0.95, abs=0.006), n


def test_seed_summary_and_markdown(tmp_path):
    seed0 = {"base": {"toy_harmful refusal": 0.0}, "grpo": {"toy_harmful refusal": 90.0, "train FLOPs": 2e12},
             "dgr_sft": {"safety data NLL": 0.311}}
    seed1 = {"base": {"toy_harmful refusal": 0.0}, "grpo": {"toy_harmful refusal": 80.0, "train FLOPs": 4e12},
             "dgr_sft": {"safety data NLL": 0.289}}
    seed2 = {"base": {"toy_harmful refusal": 0.0}}  # grpo failed in this seed
    summary = seed_summary([seed0, seed1, seed2])
    assert summary["grpo"]["toy_harmful refusal"]["values"] == [90.0, 80.0]
    assert summary["grpo"]["toy_harmful refusal"]["half_width"] == pytest.approx(12.706 * math.sqrt(50) / math.sqrt(2))
    assert summary["grpo"]["train FLOPs"]["mean"] == 3e12
    from rl_safety.toy.shift import ForeignSet

    table = seed_markdown(summary, 3, ForeignSet(tmp_path / "f.jsonl", 2.0, 1.1, 1.996))
    assert "the foreign set: 2.00 nats per token from the base model's own refusals (asked 2; style level 1.100)" in table
    assert "| grpo (2 seeds) | 85.0 [21.5, 100.0] | 3e+12 |" in table  # 85 +- 63.5, clipped
    assert "| base | 0.0 [0.0, 0.0] | – | – |" in table
    assert "| dgr_sft (2 seeds) | – | – | 0.30 [0.16, 0.44] |" in table  # nats: two digits, no percent clip


def test_seed_overrides_are_keys_of_every_arms_config():
    from rl_safety.config import GRPOConfig, SFTConfig, load_config
    from rl_safety.refine.methods import data_methods
    from rl_safety.toy.grpo_arm import GRPO_CONFIG

    grouped = split_overrides(seed_overrides(2))
    assert load_config(SFTConfig, TOY_CONFIGS / "sft.yaml", grouped["sft"]).run.seed == 2
    assert load_config(GRPOConfig, GRPO_CONFIG, grouped["grpo"]).run.seed == 2
    for name, method in data_methods().items():
        if method.toy_config is not None:
            assert load_config(method.config, method.toy_config, grouped[name]).output.seed == 2


def test_each_sft_arm_takes_its_own_learning_rate_and_overrides_apply_in_order(tmp_path, monkeypatch):
    """An arm's rate comes from SFT_ARM_DEFAULTS where the rule gave it one, else from sft.yaml
    (every arm, on the shipped base); `sft.` overrides every arm (a learning-rate sweep moves
    them all), an arm's own prefix comes last."""
    from rl_safety.toy import table
    from rl_safety.toy.model import SHIPPED, BuildConfig
    from rl_safety.toy.table import ToyTable

    base, foreign = SHIPPED / f"base-{BuildConfig().key()}", tmp_path / "foreign.jsonl"
    rate = lambda overrides, arm: ToyTable(base, tmp_path, overrides, foreign).sft[arm].learner.learning_rate  # noqa: E731
    assert (rate([], "vanilla_sft"), rate([], "dgr_sft"), rate([], "thinksafe_sft")) == (1e-3, 1e-3, 1e-3)
    monkeypatch.setattr(table, "SFT_ARM_DEFAULTS", {"vanilla_sft": ["learner.learning_rate=2e-3"]})
    assert (rate([], "vanilla_sft"), rate([], "dgr_sft"), rate([], "thinksafe_sft")) == (2e-3, 1e-3, 1e-3)
    assert rate(["sft.learner.learning_rate=3e-4"], "vanilla_sft") == 3e-4
    assert rate(["sft.learner.learning_rate=3e-4", "dgr_sft.learner.learning_rate=5e-4"], "dgr_sft") == 5e-4
    assert rate(["dgr_sft.learner.learning_rate=5e-4"], "thinksafe_sft") == 1e-3


def test_seeds_below_one_are_refused_before_any_work(tmp_path):
    from rl_safety.config import ConfigError
    from rl_safety.toy.cli import main

    with pytest.raises(ConfigError, match="--seeds must be at least 1, got 0"):
        main(["table", "--output-dir", str(tmp_path), "--seeds", "0"])
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("args, message", [
    (["--sweep", "shift"], r"expected NAME=V1,V2,\.\.\."),
    (["--sweep", "shift=1,x"], "shift values are nats per token, got 'x'"),
    (["--sweep", "nope.key=1"], "override 'nope.key=1': expected CONFIG.key=value"),
    (["--shift", "0"], "shift 0.0: must be a positive number of nats per token"),
    (["--sweep", "shift=2,-1"], "shift -1.0: must be a positive number"),
])
def test_bad_sweeps_and_shifts_are_refused_before_any_work(tmp_path, args, message):
    from rl_safety.config import ConfigError
    from rl_safety.toy.cli import main

    with pytest.raises(ConfigError, match=message):
        main(["table", "--output-dir", str(tmp_path), *args])
    assert not any(tmp_path.iterdir())


def test_sweep_markdown_names_each_points_foreign_set_and_the_base_once(tmp_path):
    from rl_safety.toy.shift import ForeignSet
    from rl_safety.toy.table import sweep_markdown

    point = lambda v: seed_summary([{"base": {"arith": 93.0}, "vanilla_sft": {"arith": v}}])  # noqa: E731
    summary = {"shift=1": point(90.0), "shift=4": point(70.0)}
    foreign = {"shift=1": ForeignSet(tmp_path, 1.0, 0.5, 1.01), "shift=4": ForeignSet(tmp_path, 4.0, 2.0, 3.99)}
    md = sweep_markdown(summary, 1, foreign)
    assert "- shift=4: the foreign set: 3.99 nats per token" in md
    assert md.count("| base | 93.0 |") == 1 and md.count("base |") == 1
    assert "| shift=1 vanilla_sft | 90.0 |" in md and "| shift=4 vanilla_sft | 70.0 |" in md
