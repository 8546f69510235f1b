"""GRPO on a two-node Ray cluster: rollout engine on one node, learners on the other, the
learners' process group and the learner -> vLLM weight-sync group formed with addresses from Ray."""

from __future__ import annotations

import json

import pytest

from tests.integration.local_ray_cluster import run_grpo_cli
from tests.integration.test_grpo_trainer import read_metrics, write_config

pytestmark = pytest.mark.integration


def test_rollout_and_learners_run_on_the_nodes_they_are_pinned_to(tmp_path, tiny_models, prompt_file,
                                                                  two_node_cluster):
    config = write_config(tmp_path, tiny_models["tied"], prompt_file, {
        "run.total_steps": 2, "learner.num_ranks": 2,
        "cluster.rollout_resources": {"node_a": 1}, "cluster.learner_resources": {"node_b": 1},
    })
    result = run_grpo_cli(config, two_node_cluster)
    assert result.returncode == 0, result.stderr[-4000:]
    run_dir = tmp_path / "runs" / "t"

    placement = json.loads((run_dir / "placement.json").read_text())
    actors, nodes = placement["actors"], placement["nodes"]
    assert placement["judges"] == []  # this run's rewards call no judge model
    node_of = {name.rsplit("-", 1)[0]: where["node_id"] for name, where in actors.items()}
    assert "node_a" in nodes[node_of["rollout-0"]]["resources"]
    assert "node_b" in nodes[node_of["learner-0"]]["resources"]
    assert node_of["learner-1"] == node_of["learner-0"]
    assert node_of["rollout-0"] != node_of["learner-0"]

    # The weights crossed nodes after every update: vLLM samples from the learner's weights.
    metrics = read_metrics(run_dir)
    assert [m["step"] for m in metrics] == [0, 1]
    assert all(m["rollout_learner_logprob_diff"] < 1e-4 for m in metrics), metrics
    assert metrics[-1]["train/grad_norm"] > 0


def test_custom_resources_the_cluster_lacks_fail_before_any_actor(tmp_path, tiny_models, prompt_file,
                                                                 two_node_cluster):
    config = write_config(tmp_path, tiny_models["tied"], prompt_file, {"cluster.learner_resources": {"node_c": 1}})
    result = run_grpo_cli(config, two_node_cluster, timeout_s=180)
    assert result.returncode != 0
    assert "need 2 of resource 'node_c' but the Ray cluster has 0" in result.stderr
