"""vLLM engine actors (`RolloutEngine`), started and called one way for every command: GRPO's
rollout, eval, DGR / ThinkSafe generation and the judges."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rl_safety.config.cluster import ClusterSection, RolloutClusterSection
from rl_safety.config.engine import EngineSection, SamplingSection
from rl_safety.orchestration import cluster as ray_cluster
from rl_safety.orchestration.actor_group import ActorGroup, actor_seed
from rl_safety.rollout.vllm_engine import Completion, RolloutEngine


def start_engines(model_path: str, engine: EngineSection, cluster: ClusterSection, *, dtype: str, seed: int,
                  max_model_len: int | None, use_gpu: bool, placement: Any | None = None, share: float = 1.0,
                  tag: str | None = None, trust_remote_code: bool = False, sleep_level: int | None = None,
                  max_lora_rank: int | None = None, weight_sync: str | None = None, name: str | None = None,
                  namespace: str | None = None, what: str = "vLLM rollout engines") -> ActorGroup:
    """`engine.num_engines` RolloutEngine actors (not yet waited for: `wait_started`). With a
    placement group, engine i sits in its own bundles (`cluster.engine_placement`) using `share`
    of each; without one it asks for a CPU, and a GPU when it runs on one alone (tensor
    parallelism lets vLLM's Ray executor place its workers). `weight_sync`: the backend that
    receives a learner's weights (`cluster.weight_sync_transport`); None for engines that only
    generate."""
    tp = engine.tensor_parallel_size

    def options(i: int) -> dict[str, Any]:
        if placement is not None:
            where = ray_cluster.engine_placement(i, tp, share)
            return ray_cluster.in_bundle(placement, where.bundles[0], share, use_gpu and where.actor_holds_device)
        return {"num_cpus": 1, "num_gpus": 1 if use_gpu and tp == 1 else 0}

    def engine_kwargs(i: int) -> dict[str, Any]:
        executor_env = ray_cluster.engine_placement(i, tp, share).executor_env if placement is not None else {}
        return {"seed": actor_seed(seed, i), "executor_env": executor_env}

    return ActorGroup(
        "rollout", RolloutEngine, engine.num_engines, what=what, options=options, tag=tag, name=name,
        namespace=namespace, start_timeout_s=cluster.start_timeout_s, call_timeout_s=cluster.call_timeout_s,
        kwargs=dict(model_path=model_path, engine=engine, dtype=dtype, max_model_len=max_model_len, use_gpu=use_gpu,
                    trust_remote_code=trust_remote_code, sleep_level=sleep_level, max_lora_rank=max_lora_rank,
                    weight_sync=weight_sync),
        rank_kwargs=engine_kwargs,
    )


def generate(engines: ActorGroup, token_ids: list[list[int]], seeds: list[int], n: int,
             sampling: SamplingSection, what: str = "generating (vLLM)") -> list[list[Completion]]:
    """`n` completions of each prompt, the prompts split evenly over the engines; request i is
    sampled with `seeds[i]` whichever engine serves it."""
    return engines.shard("generate", {"prompt_token_ids": token_ids, "seeds": seeds}, what=what, n=n,
                         sampling=sampling)


@contextmanager
def generation_engines(model_path: str, engine: EngineSection, cluster: RolloutClusterSection, *, source: str,
                       dtype: str, seed: int, max_model_len: int, trust_remote_code: bool = False
                       ) -> Iterator[tuple[ActorGroup, bool]]:
    """(engines, uses GPU) of a command that only generates (eval, DGR / ThinkSafe): on
    `cluster.address` (or a local Ray), in a placement group of their own, removed on exit."""
    ray_cluster.connect(cluster, engine.devices)
    use_gpu = ray_cluster.uses_gpu(cluster, source)
    bundles = ray_cluster.device_bundles(engine.devices, use_gpu, cluster.rollout_resources)
    ray_cluster.check_capacity(bundles, use_gpu, source, f"{engine.num_engines} engine(s) x tensor_parallel_size "
                                                         f"{engine.tensor_parallel_size}")
    group = ray_cluster.placement_group(bundles, cluster.placement_strategy, cluster.start_timeout_s,
                                        "rollout engines")
    engines = None
    try:
        engines = start_engines(model_path, engine, cluster, dtype=dtype, seed=seed, max_model_len=max_model_len,
                                use_gpu=use_gpu, placement=group, trust_remote_code=trust_remote_code)
        yield engines.wait_started(), use_gpu
    finally:
        if engines is not None:
            engines.kill()
        ray_cluster.remove(group)
