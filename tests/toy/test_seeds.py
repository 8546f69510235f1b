"""`toy table --seeds`: what a seed varies, and the mean and 95% interval over seeds (pure functions;
the table itself runs in tests/toy/test_table.py)."""

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


def test_seed_summary_and_markdown():
    seed0 = {"base": {"toy_harmful refusal": 0.0}, "grpo": {"toy_harmful refusal": 90.0, "train FLOPs": 2e12}}
    seed1 = {"base": {"toy_harmful refusal": 0.0}, "grpo": {"toy_harmful refusal": 80.0, "train FLOPs": 4e12}}
    seed2 = {"base": {"toy_harmful refusal": 0.0}}  # grpo failed in this seed
    summary = seed_summary([seed0, seed1, seed2])
    assert summary["grpo"]["toy_harmful refusal"]["values"] == [90.0, 80.0]
    assert summary["grpo"]["toy_harmful refusal"]["half_width"] == pytest.approx(12.706 * math.sqrt(50) / math.sqrt(2))
    assert summary["grpo"]["train FLOPs"]["mean"] == 3e12
    table = seed_markdown(summary, 3)
    assert "| grpo (2 seeds) | 85.0 [21.5, 100.0] | 3e+12 |" in table  # 85 +- 63.5, clipped
    assert "| base | 0.0 [0.0, 0.0] | – |" in table


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


def test_seeds_below_one_are_refused_before_any_work(tmp_path):
    from rl_safety.config import ConfigError
    from rl_safety.toy.cli import main

    with pytest.raises(ConfigError, match="--seeds must be at least 1, got 0"):
        main(["table", "--output-dir", str(tmp_path), "--seeds", "0"])
    assert not any(tmp_path.iterdir())
