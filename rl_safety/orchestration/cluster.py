"""The Ray cluster a command runs on, and where its actors go.

`connect` is the one place that starts or joins Ray: every command (GRPO, SFT, DGR / ThinkSafe,
eval, the judges, the toy table) attaches to `cluster.address` or starts a local Ray through it.

Placement: one bundle = one device ({"CPU": 1} on CPU; {"GPU": 1, "CPU": 1} on GPU), plus the
group's custom resources (`cluster.learner_resources` / `rollout_resources`), which pin a group to
the nodes that declare them. Learner rank i takes bundle i of the learner group; rollout engine i
takes the bundles `engine_placement(i, ...)` names. GRPO's two layouts: *separate*
(rollout engines get a placement group of their own) and *colocated* (rollout engine i shares
bundle i with learner rank i; vLLM sleeps while the learner trains, on GPU).
`cluster.placement_strategy` spreads or packs each group's bundles over the nodes.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any

from rl_safety.config.cluster import ClusterSection
from rl_safety.config.grpo import GRPOConfig
from rl_safety.errors import UserError


class ClusterError(UserError, RuntimeError):
    """The cluster cannot hold the configured run; raised before any actor starts."""


def connect(cluster: ClusterSection, devices: int = 1) -> None:
    """Attach to `cluster.address`, or start a local Ray that never attaches to another one on the
    machine. A local Ray declares at least `devices` + 1 CPUs: Ray's CPU count is a scheduling
    budget, and a laptop or CI box has fewer cores than actors (`cluster.num_cpus` pins it)."""
    import ray

    if ray.is_initialized():
        return
    local = {"num_cpus": cluster.num_cpus or max(os.cpu_count() or 1, devices + 1), "include_dashboard": False}
    ray.init(address=cluster.address or "local", log_to_driver=True, **({} if cluster.address else local))


def uses_gpu(cluster: ClusterSection, source: str) -> bool:
    """Whether the command's actors take GPUs (`cluster.device`; auto: when Ray sees any)."""
    import ray

    gpus = int(ray.cluster_resources().get("GPU", 0))
    if cluster.device == "gpu" and gpus == 0:
        raise ClusterError(f"{source}: cluster.device=gpu but the Ray cluster has no GPU")
    return gpus > 0 if cluster.device == "auto" else cluster.device == "gpu"


def device_bundles(count: int, use_gpu: bool, resources: dict[str, float]) -> list[dict[str, float]]:
    """`count` bundles of one device each, plus the group's custom `resources`."""
    return [_add({"CPU": 1, "GPU": 1} if use_gpu else {"CPU": 1}, resources)] * count


@dataclass(frozen=True)
class EnginePlacement:
    """Where rollout engine i goes in its placement group."""

    bundles: list[int]  # one per tensor-parallel rank; the engine actor sits in the first
    actor_holds_device: bool  # TP 1: the engine computes in its own process, on its bundle's GPU
    executor_env: dict[str, str]  # TP > 1: where vLLM's Ray executor puts the engine's workers


def engine_placement(engine: int, tensor_parallel_size: int, share: float) -> EnginePlacement:
    """Engine `engine`'s bundles: `tensor_parallel_size` consecutive ones, disjoint from every
    other engine's. With TP > 1 vLLM starts one Ray worker per rank in the engine's placement
    group and, unless told otherwise, takes "the first N bundles with a GPU" -- the same bundles
    for every engine. `VLLM_RAY_BUNDLE_INDICES` names the engine's own (as OpenRLHF does), and
    `VLLM_RAY_PER_WORKER_GPUS` asks for `share` of each, the share the layout gives rollout
    workers (all of a GPU when separate, part of it when colocated with a learner). The engine
    actor then holds no GPU itself: its workers hold them."""
    bundles = list(range(engine * tensor_parallel_size, (engine + 1) * tensor_parallel_size))
    if tensor_parallel_size == 1:
        return EnginePlacement(bundles, actor_holds_device=True, executor_env={})
    return EnginePlacement(bundles, actor_holds_device=False, executor_env={
        "VLLM_RAY_BUNDLE_INDICES": ",".join(map(str, bundles)), "VLLM_RAY_PER_WORKER_GPUS": f"{share:g}"})


def check_capacity(bundles: list[dict[str, float]], use_gpu: bool, source: str, needs: str) -> None:
    """Fail before any actor starts when the cluster lacks the devices or custom resources of
    `bundles`; `needs` says what asks for them (named by config keys)."""
    import ray

    resources = ray.cluster_resources()
    kind = "GPU" if use_gpu else "CPU"
    have = int(resources.get(kind, 0))
    if len(bundles) > have:
        raise ClusterError(f"{source}: {needs} need {len(bundles)} {kind}(s) but the Ray cluster has {have}")
    total: dict[str, float] = {}
    for bundle in bundles:
        total = _add(total, {k: v for k, v in bundle.items() if k not in ("CPU", "GPU")})
    for name, amount in total.items():
        if resources.get(name, 0) < amount:
            raise ClusterError(
                f"{source}: cluster.learner_resources / rollout_resources need {amount:g} of resource "
                f"{name!r} but the Ray cluster has {resources.get(name, 0):g} (declare it with "
                f"`ray start --resources='{{\"{name}\": N}}'` on the nodes meant for it)"
            )


def placement_group(bundles: list[dict[str, float]], strategy: str, timeout_s: float, what: str) -> Any:
    """A placement group of `bundles`, reserved (or a ClusterError naming `what` it was for)."""
    import ray
    from ray.util.placement_group import placement_group as reserve, remove_placement_group

    group = reserve(bundles, strategy=strategy)
    ready, _ = ray.wait([group.ready()], timeout=timeout_s)
    if not ready:
        remove_placement_group(group)
        raise ClusterError(f"the cluster did not reserve {len(bundles)} bundle(s) {bundles[0]} ({strategy}) for the "
                           f"{what} within {timeout_s:g} s (cluster.start_timeout_s): are the devices held elsewhere?")
    return group


def remove(group: Any) -> None:
    from ray.util.placement_group import remove_placement_group

    remove_placement_group(group)


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


def node_address_in(group: Any, index: int, timeout_s: float) -> tuple[str, int, int]:
    """(IP, two free ports) on the node that holds bundle `index`: rendezvous addresses come
    from Ray, never from a hard-coded host."""
    import ray

    @ray.remote(num_cpus=0)
    def probe() -> tuple[str, int, int]:
        return (ray.util.get_node_ip_address(), *free_ports(2))

    try:
        return ray.get(probe.options(**{**in_bundle(group, index, 0.0, False), "num_cpus": 0}).remote(),
                       timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        raise ClusterError(f"no answer within {timeout_s:g} s (cluster.start_timeout_s) from the node of "
                           f"bundle {index}, asked for a rendezvous address") from None


def nodes() -> dict[str, dict[str, Any]]:
    """{node id: {ip, alive, resources}} of the cluster's nodes."""
    import ray

    return {n["NodeID"]: {"ip": n["NodeManagerAddress"], "alive": n["Alive"], "resources": n["Resources"]}
            for n in ray.nodes()}


def _add(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    return {k: a.get(k, 0) + b.get(k, 0) for k in {**a, **b}}


# ----------------------------------------------------------------------------- GRPO's layout
def weight_sync_transport(placement: str, use_gpu: bool) -> str:
    """How full weights travel from the learner to vLLM, by layout and device (the one place
    this is chosen; vLLM's weight-transfer backends and rl-safety's gloo one):

    - CPU: "gloo" (`rl_safety.rollout.weight_transfer`): vLLM's own backends need CUDA.
    - GPU, separate: "nccl", one broadcast group of learner rank 0 and every engine worker,
      each on a GPU of its own.
    - GPU, colocated: "ipc". Learner rank i and engine worker i share a GPU, and NCCL refuses
      two ranks of one communicator on one device; vLLM's CUDA-IPC backend instead hands each
      worker handles to the learner's tensors on its own GPU."""
    if not use_gpu:
        return "gloo"
    return "ipc" if placement == "colocated" else "nccl"


@dataclass
class Layout:
    use_gpu: bool
    learner_group: Any  # PlacementGroup
    rollout_group: Any  # PlacementGroup (the learner one when colocated)
    learner_share: float  # fraction of a bundle each actor asks for
    rollout_share: float
    weight_sync: str  # `weight_sync_transport` of this layout

    def remove(self) -> None:
        for group in {id(g): g for g in (self.learner_group, self.rollout_group)}.values():
            remove(group)


def reward_judges(cfg: GRPOConfig) -> list[Any]:
    """The model servers GRPO's rewards call (judge engines, a moderation classifier:
    `rewards.JudgeDemand`), each counted once. They start on first use, beside the layout's
    placement groups, and hold devices for the rest of the run."""
    import rewards

    return rewards.judge_demands([(r.name, r.args) for r in cfg.rewards])


def devices_needed(cfg: GRPOConfig) -> int:
    """The devices a GRPO run holds: its layout's bundles and its rewards' judges (cost.json's
    device count, so GRPO's device-hours include the judges')."""
    layout = cfg.learner.num_ranks + (0 if cfg.cluster.placement == "colocated" else cfg.rollout.devices)
    return layout + sum(judge.devices for judge in reward_judges(cfg))


def group_bundles(cfg: GRPOConfig, use_gpu: bool) -> tuple[list[dict[str, float]], list[dict[str, float]]]:
    """(learner bundles, rollout bundles); colocated: one list of shared bundles, twice."""
    c = cfg.cluster
    if c.placement == "colocated":
        shared = device_bundles(cfg.learner.num_ranks, use_gpu, _add(c.learner_resources, c.rollout_resources))
        return shared, shared
    return (device_bundles(cfg.learner.num_ranks, use_gpu, c.learner_resources),
            device_bundles(cfg.rollout.devices, use_gpu, c.rollout_resources))


def custom_resources_needed(cfg: GRPOConfig) -> dict[str, float]:
    """How much of each custom resource the layout's bundles reserve, over all nodes."""
    learner, rollout = group_bundles(cfg, use_gpu=False)
    total: dict[str, float] = {}
    for bundle in learner + ([] if cfg.cluster.placement == "colocated" else rollout):
        total = _add(total, {k: v for k, v in bundle.items() if k != "CPU"})
    return total


def layout_demand(cfg: GRPOConfig, judges: list[Any]) -> str:
    """The devices GRPO's layout and its rewards' `judges` take, in config keys (for the
    preflight's message)."""
    r = cfg.rollout
    engines = f"rollout.num_engines={r.num_engines} x rollout.tensor_parallel_size={r.tensor_parallel_size}"
    if cfg.cluster.placement == "colocated":
        demand = (f"learner.num_ranks={cfg.learner.num_ranks} (sharing their devices with {engines}, "
                  "cluster.placement=colocated)")
    else:
        demand = f"learner.num_ranks={cfg.learner.num_ranks} + {engines} (cluster.placement=separate)"
    return "".join([demand, *(f" + {judge.devices} for the rewards' {judge.what}" for judge in judges)])


def preflight(cfg: GRPOConfig, source: str) -> bool:
    """Check the cluster can place the run, its rewards' judges included, before any actor
    starts; returns whether to use GPUs."""
    use_gpu = uses_gpu(cfg.cluster, source)
    learner, rollout = group_bundles(cfg, use_gpu)
    judges = reward_judges(cfg)
    judge_bundles = device_bundles(sum(judge.devices for judge in judges), use_gpu, {})
    check_capacity(learner + ([] if cfg.cluster.placement == "colocated" else rollout) + judge_bundles, use_gpu,
                   source, layout_demand(cfg, judges))
    return use_gpu


def make_layout(cfg: GRPOConfig, use_gpu: bool) -> Layout:
    c = cfg.cluster
    learner_bundles, rollout_bundles = group_bundles(cfg, use_gpu)
    learner_group = placement_group(learner_bundles, c.placement_strategy, c.start_timeout_s, "learner ranks")
    weight_sync = weight_sync_transport(c.placement, use_gpu)
    if c.placement == "colocated":
        return Layout(use_gpu, learner_group, learner_group, learner_share=0.5, rollout_share=0.4,
                      weight_sync=weight_sync)
    try:
        rollout_group = placement_group(rollout_bundles, c.placement_strategy, c.start_timeout_s, "rollout engines")
    except BaseException:
        remove(learner_group)
        raise
    return Layout(use_gpu, learner_group, rollout_group, learner_share=0.75, rollout_share=1.0,
                  weight_sync=weight_sync)
