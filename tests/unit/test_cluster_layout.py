"""GRPO's layout as pure logic: bundles (one device each, plus custom resources), each engine's
bundles, the preflight, the weight-sync transport, how a colocated engine sleeps."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from rl_safety.config import ConfigError, GRPOConfig, load_config
from rl_safety.orchestration.cluster import (
    custom_resources_needed,
    engine_placement,
    group_bundles,
    weight_sync_transport,
)


def config(tmp_path, *overrides: str, base: tuple[str, ...] = ("learner.num_ranks=2", "learner.micro_batch_size=1",
                                                                  "rollout.num_engines=2")) -> GRPOConfig:
    path = tmp_path / "c.yaml"
    path.write_text("model: {path: m}\ndata: {train: d.jsonl}\nrewards: [{name: r}]\n")
    return load_config(GRPOConfig, path, [*base, *overrides])


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


@pytest.mark.parametrize("engines,tp,share", [(1, 2, 1.0), (2, 2, 1.0), (3, 4, 1.0), (2, 2, 0.4)])
def test_tensor_parallel_engines_get_disjoint_bundles_of_their_own(engines, tp, share):
    placements = [engine_placement(i, tp, share) for i in range(engines)]
    held = [b for p in placements for b in p.bundles]
    assert sorted(held) == list(range(engines * tp))  # every bundle of the group, none twice
    for p in placements:
        assert len(p.bundles) == tp and p.bundles == list(range(p.bundles[0], p.bundles[0] + tp))
        # vLLM's Ray executor puts rank k of the engine's workers in bundle p.bundles[k]
        assert [int(b) for b in p.executor_env["VLLM_RAY_BUNDLE_INDICES"].split(",")] == p.bundles
        assert float(p.executor_env["VLLM_RAY_PER_WORKER_GPUS"]) == share
        assert not p.actor_holds_device  # the workers hold the GPUs, not the engine actor


def test_a_single_device_engine_computes_in_its_own_bundle():
    p = engine_placement(3, 1, 0.4)
    assert p.bundles == [3] and p.actor_holds_device and p.executor_env == {}


def fake_cluster(monkeypatch, **resources):
    import ray

    monkeypatch.setattr(ray, "cluster_resources", lambda: dict(resources))


@pytest.mark.parametrize("overrides,message", [
    (["learner.num_ranks=2", "rollout.num_engines=2", "rollout.tensor_parallel_size=2"],
     r"c.yaml: learner.num_ranks=2 \+ rollout.num_engines=2 x rollout.tensor_parallel_size=2 "
     r"\(cluster.placement=separate\) need 6 GPU\(s\) but the Ray cluster has 4"),
    (["rollout.num_engines=1", "rollout.tensor_parallel_size=4", "learner.num_ranks=4", "cluster.placement=colocated"],
     r"c.yaml: learner.num_ranks=4 \(sharing their devices with rollout.num_engines=1 x "
     r"rollout.tensor_parallel_size=4, cluster.placement=colocated\) need 4 GPU\(s\) but the Ray cluster has 3"),
])
def test_preflight_rejects_engines_that_cannot_be_placed_naming_the_keys(tmp_path, monkeypatch, overrides, message):
    from rl_safety.orchestration.cluster import ClusterError, preflight

    cfg = config(tmp_path, "cluster.device=gpu", "learner.micro_batch_size=1", *overrides, base=())
    fake_cluster(monkeypatch, CPU=64, GPU=3 if "cluster.placement=colocated" in overrides else 4)
    with pytest.raises(ClusterError, match=message):
        preflight(cfg, "c.yaml")


def test_preflight_accepts_a_layout_that_fits(tmp_path, monkeypatch):
    from rl_safety.orchestration.cluster import preflight

    fake_cluster(monkeypatch, CPU=64, GPU=6)
    assert preflight(config(tmp_path, "cluster.device=gpu", "rollout.tensor_parallel_size=2"), "c.yaml") is True


def test_the_rewards_judges_count_in_the_preflight_and_in_the_devices_the_run_holds(tmp_path, monkeypatch):
    from rl_safety.orchestration.cluster import ClusterError, devices_needed, preflight

    guard = "rewards=[{name: guard_judge, args: {model: guard, engine: {tensor_parallel_size: 2}}}]"
    cfg = config(tmp_path, "cluster.device=gpu", "learner.num_ranks=1", "learner.micro_batch_size=1", guard,
                 base=())
    assert devices_needed(cfg) == 4  # cost.json's count: a learner, an engine and the judge's two
    fake_cluster(monkeypatch, CPU=64, GPU=3)
    message = (r"c.yaml: learner.num_ranks=1 \+ rollout.num_engines=1 x rollout.tensor_parallel_size=1 "
               r"\(cluster.placement=separate\) \+ 2 for the rewards' judge engines \(guard\) need 4 GPU\(s\) "
               r"but the Ray cluster has 3")
    with pytest.raises(ClusterError, match=message):
        preflight(cfg, "c.yaml")
    fake_cluster(monkeypatch, CPU=64, GPU=4)
    assert preflight(cfg, "c.yaml") is True


@pytest.mark.parametrize("placement,use_gpu,transport", [
    ("separate", False, "gloo"), ("colocated", False, "gloo"),  # vLLM's own backends need CUDA
    ("separate", True, "nccl"),  # every rank of the broadcast group on a GPU of its own
    ("colocated", True, "ipc"),  # learner rank i and engine i share a GPU: NCCL refuses that
])
def test_weight_sync_transport_follows_layout_and_device(placement, use_gpu, transport):
    assert weight_sync_transport(placement, use_gpu) == transport


def test_each_transport_has_its_learner_side_init_info():
    from rl_safety.rollout.weight_transfer import trainer_init_info

    for transport in ("gloo", "nccl", "ipc"):
        info = trainer_init_info(transport, rank=1, master_address="10.0.0.1", master_port=1234, world_size=3)
        assert info.backend == transport and info.rank == 1 and not info.is_sender
    assert trainer_init_info("ipc", rank=0, master_address="", master_port=0, world_size=3).packed  # bounded memory
    with pytest.raises(ValueError, match="unknown weight-sync backend 'tcp'"):
        trainer_init_info("tcp", rank=0, master_address="", master_port=0, world_size=3)


def test_a_colocated_engine_discards_its_weights_only_when_the_sync_rewrites_them_all():
    from rl_safety.rollout.vllm_engine import RolloutEngine, colocated_sleep_level

    assert colocated_sleep_level(full_weight_sync=True) == 2
    assert colocated_sleep_level(full_weight_sync=False) == 1  # LoRA adapter sync: the base must survive
    slept = []
    engine = RolloutEngine.__new__(RolloutEngine)  # the actor's state without a vLLM engine
    engine.llm = SimpleNamespace(sleep=lambda level: slept.append(level))
    engine.sleep_level, engine.asleep = colocated_sleep_level(True), False
    engine.sleep()
    engine.sleep()  # asleep already: not twice
    assert slept == [2] and engine.asleep
