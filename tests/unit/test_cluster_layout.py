"""Bundles of the placement groups: one device each, plus the group's custom resources."""

from __future__ import annotations

import pytest

from rl_safety.config import ConfigError, GRPOConfig, load_config
from rl_safety.orchestration.cluster import custom_resources_needed, group_bundles


def config(tmp_path, *overrides: str) -> GRPOConfig:
    path = tmp_path / "c.yaml"
    path.write_text("model: {path: m}\ndata: {train: d.jsonl}\nrewards: [{name: safety}]\n")
    return load_config(GRPOConfig, path, ["learner.num_ranks=2", "learner.micro_batch_size=1",
                                          "rollout.num_engines=2", *overrides])


def test_each_group_gets_its_own_custom_resources(tmp_path):
    cfg = config(tmp_path, "cluster.learner_resources={trainer: 1}", "cluster.rollout_resources={sampler: 0.5}")
    learner, rollout = group_bundles(cfg, use_gpu=True)
    assert learner == [{"CPU": 1, "GPU": 1, "trainer": 1}] * 2
    assert rollout == [{"CPU": 1, "GPU": 1, "sampler": 0.5}] * 2
    assert custom_resources_needed(cfg) == {"trainer": 2, "sampler": 1.0}


def test_colocated_bundles_carry_both_groups_resources(tmp_path):
    cfg = config(tmp_path, "cluster.placement=colocated", "cluster.learner_resources={pod: 1}",
                 "cluster.rollout_resources={pod: 1, fast: 1}")
    learner, rollout = group_bundles(cfg, use_gpu=False)
    assert learner == rollout == [{"CPU": 1, "pod": 2, "fast": 1}] * 2
    assert custom_resources_needed(cfg) == {"pod": 4, "fast": 2}


@pytest.mark.parametrize("value,message", [("{GPU: 1}", "'GPU' is set by the layout"),
                                           ("{node_b: 0}", "resource 'node_b': amount must be > 0")])
def test_bad_custom_resources_name_the_key(tmp_path, value, message):
    with pytest.raises(ConfigError, match=message) as err:
        config(tmp_path, f"cluster.learner_resources={value}")
    assert "cluster.learner_resources" in str(err.value)
