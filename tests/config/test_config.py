"""Config loading and validation: every mistake names the key and where it came from."""

from __future__ import annotations

import pytest
import yaml

from rl_safety.config import ConfigError, GRPOConfig, load_config, parse_overrides

BASE = {
    "model": {"path": "some/model"},
    "data": {"train": "prompts.jsonl"},
    "rewards": [{"name": "char_fraction"}],
}


def write(tmp_path, data) -> str:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_defaults_and_overrides_are_typed(tmp_path):
    cfg = load_config(GRPOConfig, write(tmp_path, BASE),
                      ["algorithm.group_size=4", "run.name=x", "learner.adam_betas=[0.9,0.95]", "model.dtype=float32"])
    assert cfg.algorithm.group_size == 4 and isinstance(cfg.algorithm.group_size, int)
    assert cfg.run.name == "x"
    assert cfg.learner.adam_betas == (0.9, 0.95)
    assert cfg.learner.zero_stage == 2  # default kept


def test_unknown_key_names_key_and_file(tmp_path):
    path = write(tmp_path, {**BASE, "algorithm": {"group_sise": 4}})
    with pytest.raises(ConfigError) as err:
        load_config(GRPOConfig, path)
    assert "algorithm.group_sise" in str(err.value) and path in str(err.value)


def test_wrong_type_from_override_says_overrides(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(GRPOConfig, write(tmp_path, BASE), ["learner.num_ranks=two"])
    assert "learner.num_ranks" in str(err.value) and "overrides" in str(err.value)


@pytest.mark.parametrize("overrides,needle", [
    (["algorithm.group_size=1"], "group_size"),
    (["learner.num_ranks=3"], "learner.num_ranks=3"),
    (["learner.micro_batch_size=5"], "micro_batch_size"),
    (["cluster.placement=colocated", "learner.num_ranks=2"], "colocated"),
    (["algorithm.clip_high=0.1"], "clip_high"),
    (["learner.zero_stage=5"], "learner.zero_stage"),
])
def test_impossible_combinations_fail(tmp_path, overrides, needle):
    with pytest.raises(ConfigError) as err:
        load_config(GRPOConfig, write(tmp_path, BASE), overrides)
    assert needle in str(err.value)


def test_missing_file_and_bad_override_syntax(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(GRPOConfig, tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["algorithm.group_size"])


def test_batch_plan_states_the_arithmetic(tmp_path):
    cfg = load_config(GRPOConfig, write(tmp_path, BASE),
                      ["algorithm.prompts_per_step=4", "algorithm.group_size=8", "algorithm.mini_batches_per_step=2",
                       "learner.num_ranks=2", "learner.micro_batch_size=4"])
    plan = cfg.batch_plan()
    assert "32 sequences per step" in plan and "8 sequences per rank" in plan and "(2 accumulation" in plan
