"""Ray placement: which actor runs where, for the *separate* and *colocated* layouts.

One bundle = one device ({"CPU": 1} on CPU; {"GPU": 1, "CPU": 1} on GPU). Learner rank i takes
bundle i of the learner group. Separate: rollout workers get a placement group of their own.
Colocated: rollout engine i shares bundle i with learner rank i (vLLM sleeps while the learner
trains, on GPU). The same code runs on a local `ray.init()` and on a cluster address.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any

from rl_safety.config.grpo import GRPOConfig


class ClusterError(RuntimeError):
    """The cluster cannot hold the configured run; raised before any actor starts."""


@dataclass
class Layout:
    use_gpu: bool
    learner_group: Any  # PlacementGroup
    rollout_group: Any  # PlacementGroup (the learner one when colocated)
    learner_share: float  # fraction of a bundle each actor asks for
    rollout_share: float


def bundles_needed(cfg: GRPOConfig) -> int:
    workers = cfg.rollout.num_engines * cfg.rollout.tensor_parallel_size
    return cfg.learner.num_ranks + (0 if cfg.cluster.placement == "colocated" else workers)


def start_ray(cfg: GRPOConfig) -> None:
    import ray

    if ray.is_initialized():
        return
    if cfg.cluster.address:
        ray.init(address=cfg.cluster.address, log_to_driver=True)
    else:
        # A laptop or CI box has fewer cores than actors; Ray's CPU count is a scheduling
        # budget, so declare enough for the layout unless the user pinned it.
        cpus = cfg.cluster.num_cpus or max(os.cpu_count() or 1, bundles_needed(cfg) + 1)
        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=True)


def preflight(cfg: GRPOConfig, source: str) -> bool:
    """Check the cluster can place the run; returns whether to use GPUs."""
    import ray

    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 0))
    device = cfg.cluster.device
    use_gpu = gpus > 0 if device == "auto" else device == "gpu"
    if use_gpu and gpus == 0:
        raise ClusterError(f"{source}: cluster.device=gpu but the Ray cluster has no GPU")
    have, kind = (gpus, "GPU") if use_gpu else (cpus, "CPU")
    if cfg.learner.num_ranks > have:
        raise ClusterError(
            f"{source}: learner.num_ranks={cfg.learner.num_ranks} but the Ray cluster has only "
            f"{have} {kind}(s)"
        )
    need = bundles_needed(cfg)
    if need > have:
        raise ClusterError(
            f"{source}: the {cfg.cluster.placement} layout needs {need} {kind}(s) "
            f"({cfg.learner.num_ranks} learner ranks + rollout workers) but the cluster has {have}"
        )
    return use_gpu


def make_layout(cfg: GRPOConfig, use_gpu: bool) -> Layout:
    import ray
    from ray.util.placement_group import placement_group

    bundle = {"CPU": 1, "GPU": 1} if use_gpu else {"CPU": 1}
    strategy = cfg.cluster.placement_strategy
    learner_group = placement_group([dict(bundle)] * cfg.learner.num_ranks, strategy=strategy)
    if cfg.cluster.placement == "colocated":
        rollout_group, learner_share, rollout_share = learner_group, 0.5, 0.4
    else:
        workers = cfg.rollout.num_engines * cfg.rollout.tensor_parallel_size
        rollout_group = placement_group([dict(bundle)] * workers, strategy=strategy)
        learner_share, rollout_share = 0.75, 1.0
    ready = [learner_group.ready()] + ([rollout_group.ready()] if rollout_group is not learner_group else [])
    ray.get(ready, timeout=600)
    return Layout(use_gpu, learner_group, rollout_group, learner_share, rollout_share)


def in_bundle(group: Any, index: int, share: float, use_gpu: bool) -> dict[str, Any]:
    """`.options(...)` that put an actor in bundle `index` of `group`, using `share` of it."""
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    options: dict[str, Any] = {
        "num_cpus": share,
        "scheduling_strategy": PlacementGroupSchedulingStrategy(
            placement_group=group, placement_group_bundle_index=index,
            placement_group_capture_child_tasks=True,
        ),
    }
    if use_gpu:
        options["num_gpus"] = share
    return options


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def node_address_in(group: Any, index: int) -> tuple[str, int, int]:
    """(IP, two free ports) on the node that holds bundle `index`: rendezvous addresses come
    from Ray, never from a hard-coded host."""
    import ray

    @ray.remote(num_cpus=0)
    def probe() -> tuple[str, int, int]:
        return ray.util.get_node_ip_address(), free_port(), free_port()

    return ray.get(probe.options(**{**in_bundle(group, index, 0.0, False), "num_cpus": 0}).remote())
