"""Where a command's actors run: the Ray cluster, devices, placement, and how long to wait for
them. Every command has a `cluster` section; each adds the fields of the actor groups it starts."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from rl_safety.config.loader import Section


def _custom_resources(value: dict[str, float]) -> dict[str, float]:
    for name, amount in value.items():
        if name in ("CPU", "GPU", "memory", "object_store_memory"):
            raise ValueError(f"{name!r} is set by the layout (one device per bundle); name a custom resource")
        if not amount > 0:
            raise ValueError(f"resource {name!r}: amount must be > 0, got {amount}")
    return value


class ClusterSection(Section):
    address: str | None = Field(None, min_length=1,
                                description="Ray cluster address ('auto', host:port or ray://...); None starts Ray locally")
    device: Literal["auto", "cpu", "gpu"] = Field("auto", description="auto: gpu when Ray sees GPUs")
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        "PACK", description="how each actor group's bundles spread over the nodes")
    num_cpus: int | None = Field(None, ge=1, description="local Ray only: logical CPUs to declare")
    start_timeout_s: float = Field(1800, gt=0, description="seconds an actor may take to be placed and start (load its "
                                                        "model, join its process group) before the run stops, naming it")
    call_timeout_s: float = Field(14400, gt=0, description="wait at most this long for any one call on the actors")


class LearnerClusterSection(ClusterSection):
    learner_resources: dict[str, float] = Field(
        default_factory=dict,
        description="custom Ray resources added to every learner bundle, e.g. {trainer_node: 1} pins the "
                    "learners to nodes started with `ray start --resources='{\"trainer_node\": N}'`",
    )

    _check_learner = field_validator("learner_resources")(_custom_resources)


class RolloutClusterSection(ClusterSection):
    rollout_resources: dict[str, float] = Field(
        default_factory=dict, description="custom Ray resources added to every rollout engine bundle (as above)")

    _check_rollout = field_validator("rollout_resources")(_custom_resources)


class GRPOClusterSection(LearnerClusterSection, RolloutClusterSection):
    placement: Literal["separate", "colocated"] = "separate"
    reward_workers: int = Field(1, ge=1, description="Ray actors scoring rewards")
    reward_timeout_s: float = Field(
        1800.0, gt=0, description="longest wait for a step's rewards (a guard judge's first call loads its model)",
    )
