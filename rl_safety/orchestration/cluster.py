"""Ray placement: which actor runs where, for the *separate* and *colocated* layouts.

One bundle = one device ({"CPU": 1} on CPU; {"GPU": 1, "CPU": 1} on GPU), plus the group's
custom resources (`cluster.learner_resources` / `rollout_resources`), which pin a group to the
nodes that declare them. Learner rank i takes bundle i of the learner group. Separate: rollout
workers get a placement group of their own. Colocated: rollout engine i shares bundle i with
learner rank i (vLLM sleeps while the learner trains, on GPU). `cluster.placement_strategy`
spreads or packs each group's bundles over the nodes. The same code runs on a local
`ray.init()` and on a cluster address.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any

from rl_safety.config.grpo import GRPOConfig
from rl_safety.errors import UserError


class ClusterError(UserError, RuntimeError):
    """The cluster cannot hold the configured run; raised before any actor starts."""


class StartTimeout(UserError, RuntimeError):
    """Actors that did not finish starting (loading their model, joining their group) within
    `cluster.start_timeout_s`; the message names them and what they wait for."""


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
        ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=True)


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
    for name, amount in custom_resources_needed(cfg).items():
        if resources.get(name, 0) < amount:
            raise ClusterError(
                f"{source}: cluster.learner_resources / rollout_resources need {amount:g} of resource "
                f"{name!r} but the Ray cluster has {resources.get(name, 0):g} (declare it with "
                f"`ray start --resources='{{\"{name}\": N}}'` on the nodes meant for it)"
            )
    return use_gpu


def group_bundles(cfg: GRPOConfig, use_gpu: bool) -> tuple[list[dict[str, float]], list[dict[str, float]]]:
    """(learner bundles, rollout bundles); colocated: one list of shared bundles, twice."""
    c = cfg.cluster
    device = {"CPU": 1, "GPU": 1} if use_gpu else {"CPU": 1}
    learner = _add(device, c.learner_resources)
    if c.placement == "colocated":
        shared = [_add(learner, c.rollout_resources)] * cfg.learner.num_ranks
        return shared, shared
    workers = cfg.rollout.num_engines * cfg.rollout.tensor_parallel_size
    return [learner] * cfg.learner.num_ranks, [_add(device, c.rollout_resources)] * workers


def _add(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    return {k: a.get(k, 0) + b.get(k, 0) for k in {**a, **b}}


def custom_resources_needed(cfg: GRPOConfig) -> dict[str, float]:
    """How much of each custom resource the layout's bundles reserve, over all nodes."""
    learner, rollout = group_bundles(cfg, use_gpu=False)
    groups = [learner] if cfg.cluster.placement == "colocated" else [learner, rollout]
    total: dict[str, float] = {}
    for bundle in (b for group in groups for b in group):
        total = _add(total, {k: v for k, v in bundle.items() if k != "CPU"})
    return total


def make_layout(cfg: GRPOConfig, use_gpu: bool) -> Layout:
    import ray
    from ray.util.placement_group import placement_group

    strategy = cfg.cluster.placement_strategy
    learner_bundles, rollout_bundles = group_bundles(cfg, use_gpu)
    learner_group = placement_group(learner_bundles, strategy=strategy)
    if cfg.cluster.placement == "colocated":
        rollout_group, learner_share, rollout_share = learner_group, 0.5, 0.4
    else:
        rollout_group = placement_group(rollout_bundles, strategy=strategy)
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


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports. The sockets stay bound until all are picked: ports asked for
    one after the other can come back equal, and two rendezvous stores on one port hang."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def free_port() -> int:
    return free_ports(1)[0]


def node_address_in(group: Any, index: int) -> tuple[str, int, int]:
    """(IP, two free ports) on the node that holds bundle `index`: rendezvous addresses come
    from Ray, never from a hard-coded host."""
    import ray

    @ray.remote(num_cpus=0)
    def probe() -> tuple[str, int, int]:
        return (ray.util.get_node_ip_address(), *free_ports(2))

    return ray.get(probe.options(**{**in_bundle(group, index, 0.0, False), "num_cpus": 0}).remote())


def wait_started(handles: dict[str, Any], what: str, timeout_s: float, hint=None) -> list[Any]:
    """Wait until every actor in {name: handle} has finished its constructor, at most `timeout_s`;
    returns the finished pings (`ray.get` them to surface a constructor that raised). Actors still
    starting raise StartTimeout naming them, `what` they do and `hint()` (why they may hang)."""
    import ray

    pings = {handle.__ray_ready__.remote(): name for name, handle in handles.items()}
    _, pending = ray.wait(list(pings), num_returns=len(pings), timeout=timeout_s)
    if pending:
        late = ", ".join(pings[ref] for ref in pending)
        raise StartTimeout(f"{what}: {late} not started after {timeout_s:g} s (cluster.start_timeout_s)"
                           + (hint() if hint else ""))
    return list(pings)


def _report_node(actor: Any) -> dict[str, Any]:
    """Runs inside an actor (through `__ray_call__`): where the actor really is."""
    import ray

    return {"node_id": ray.get_runtime_context().get_node_id(), "ip": ray.util.get_node_ip_address(),
            "pid": os.getpid()}


def locate(actors: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{actor name: {node_id, ip, pid}}, as each actor reports it."""
    import ray

    found = ray.get([handle.__ray_call__.remote(_report_node) for handle in actors.values()])
    return dict(zip(actors, found))


def nodes() -> dict[str, dict[str, Any]]:
    """{node id: {ip, alive, resources}} of the cluster's nodes."""
    import ray

    return {n["NodeID"]: {"ip": n["NodeManagerAddress"], "alive": n["Alive"], "resources": n["Resources"]}
            for n in ray.nodes()}


def dead_actors(actors: dict[str, Any], timeout_s: float = 10.0) -> list[str]:
    """Names of the actors that no longer exist. A busy actor (say a learner waiting in a
    collective for a dead peer) does not answer within the timeout and counts as alive."""
    import ray

    pings = {handle.__ray_ready__.remote(): name for name, handle in actors.items()}
    answered, _ = ray.wait(list(pings), num_returns=len(pings), timeout=timeout_s)
    dead = []
    for ref in answered:
        try:
            ray.get(ref)
        except ray.exceptions.RayActorError:
            dead.append(pings[ref])
    return sorted(dead)
