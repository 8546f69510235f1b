"""GRPO's actors, started on the run's layout (`cluster.make_layout`) and stopped together:
vLLM rollout engines, DeepSpeed learner ranks, the reference policy (KL without LoRA) and the
reward workers, with the learner -> vLLM weight sync wired between them."""

from __future__ import annotations

import logging
import shutil
import uuid
from pathlib import Path
from typing import Any

from rl_safety.config.grpo import GRPOConfig
from rl_safety.orchestration import cluster
from rl_safety.orchestration.actor_group import ActorGroup
from rl_safety.orchestration.engines import start_engines
from rl_safety.orchestration.reward_pool import start_reward_workers

log = logging.getLogger("rl_safety.grpo")


class GRPOWorkers:
    def __init__(self, cfg: GRPOConfig, source: str) -> None:
        self.cfg = cfg
        self.adapter_sync = cfg.learner.lora is not None and cfg.learner.lora.sync == "adapter"
        cluster.connect(cfg.cluster, cluster.devices_needed(cfg))
        use_gpu = cluster.preflight(cfg, source)  # before any actor exists
        self.groups: dict[str, ActorGroup] = {}
        self.layout = cluster.make_layout(cfg, use_gpu)
        try:
            self._start(cfg, self.layout)
        except BaseException:
            self.shutdown()  # no orphaned actors or placement groups holding the devices
            raise

    def _start(self, cfg: GRPOConfig, layout: cluster.Layout) -> None:
        from rl_safety.learner.deepspeed_learner import Learner
        from rl_safety.learner.model import build_lock_hint
        from rl_safety.learner.logprobs import ReferencePolicy
        from rl_safety.rollout.vllm_engine import checked_max_model_len, colocated_sleep_level

        tag = uuid.uuid4().hex[:6]  # actor names must be unique in the Ray namespace
        c, ro, use_gpu = cfg.cluster, cfg.rollout, layout.use_gpu
        timeouts = {"start_timeout_s": c.start_timeout_s, "call_timeout_s": c.call_timeout_s}
        learner_ip, ds_port, sync_port = cluster.node_address_in(layout.learner_group, 0, c.start_timeout_s)
        max_model_len = checked_max_model_len(
            cfg.model.path, ro.max_model_len, cfg.data.max_prompt_tokens, ro.max_new_tokens,
            explicit_key="rollout.max_model_len", budget_keys="data.max_prompt_tokens + rollout.max_new_tokens",
            trust_remote_code=cfg.model.trust_remote_code)
        self.groups["rollout"] = start_engines(
            cfg.model.path, ro, c, dtype=cfg.model.dtype, seed=cfg.run.seed, max_model_len=max_model_len,
            use_gpu=use_gpu, placement=layout.rollout_group, share=layout.rollout_share, tag=tag,
            trust_remote_code=cfg.model.trust_remote_code,
            sleep_level=colocated_sleep_level(not self.adapter_sync) if c.placement == "colocated" else None,
            max_lora_rank=cfg.learner.lora.rank if self.adapter_sync else None,
            weight_sync=None if self.adapter_sync else layout.weight_sync)
        n = cfg.learner.num_ranks
        # Learner rank 0 leaves a fifth of its bundle to the reference policy.
        self.groups["learner"] = ActorGroup(
            "learner", Learner, n, tag=tag, **timeouts,
            what=f"DeepSpeed learners (model {cfg.model.path}, process group at {learner_ip}:{ds_port})",
            options=lambda r: cluster.in_bundle(layout.learner_group, r,
                                                layout.learner_share * (0.8 if r == 0 else 1), use_gpu),
            kwargs=dict(cfg=cfg, world_size=n, master_addr=learner_ip, master_port=ds_port, use_gpu=use_gpu),
            rank_kwargs=lambda r: {"rank": r})
        if cfg.algorithm.kl_coef > 0 and cfg.learner.lora is None:
            self.groups["reference"] = ActorGroup(
                "reference", ReferencePolicy, 1, what="reference policy", tag=tag, **timeouts,
                options=lambda r: cluster.in_bundle(layout.learner_group, 0, layout.learner_share * 0.2, use_gpu),
                kwargs=dict(model_path=cfg.model.path, dtype=cfg.model.dtype, temperature=ro.temperature,
                            micro_batch_size=cfg.learner.micro_batch_size, device="cuda" if use_gpu else "cpu",
                            trust_remote_code=cfg.model.trust_remote_code,
                            max_tokens_per_micro_batch=cfg.learner.max_tokens_per_micro_batch))
        self.groups["reward"] = start_reward_workers(cfg, tag)
        for role, group in self.groups.items():  # construction errors surface here, naming the group
            group.wait_started(hint=build_lock_hint if role == "learner" else None)
        sync = "LoRA adapter files" if self.adapter_sync else layout.weight_sync
        log.info("weight sync learner -> vLLM: %s (cluster.placement=%s on %s)", sync, c.placement,
                 "GPU" if use_gpu else "CPU")
        if not self.adapter_sync:
            # gloo and NCCL form one group: learner rank 0, then each engine's workers at its
            # offset; CUDA IPC needs no group. gloo binds its own free port (0); NCCL's
            # rendezvous takes the probed one.
            offsets = None if sync == "ipc" else [1 + i * ro.tensor_parallel_size for i in range(ro.num_engines)]
            self.learners.call_all("init_weight_sync", self.rollouts.handles, learner_ip,
                                   sync_port if sync == "nccl" else 0, 1 + ro.devices, offsets, sync,
                                   what=f"setting up the learner -> vLLM weight sync ({sync})")

    @property
    def rollouts(self) -> ActorGroup:
        return self.groups["rollout"]

    @property
    def learners(self) -> ActorGroup:
        return self.groups["learner"]

    @property
    def reference(self) -> ActorGroup | None:
        return self.groups.get("reference")

    @property
    def rewards(self) -> ActorGroup:
        return self.groups["reward"]

    @property
    def actors(self) -> dict[str, Any]:
        """Every actor of the run by its Ray name."""
        return {name: handle for group in self.groups.values() for name, handle in group.actors.items()}

    @property
    def placement(self) -> dict[str, dict[str, Any]]:
        """{actor name: {node_id, ip, pid}}."""
        return {name: where for group in self.groups.values() for name, where in group.placement.items()}

    def dead(self) -> list[str]:
        """'actor NAME died on node N (IP, pid P)' for every actor of the run that is gone."""
        return [line for group in self.groups.values() for line in group.dead()]

    def sync_weights(self, adapter_dir: Path, version: int) -> None:
        """Learner -> vLLM: full weights (LoRA merged) through the weight-transfer engine, or,
        with `lora.sync=adapter`, the adapter alone, saved on the run's (shared) path."""
        if not self.adapter_sync:
            self.learners.call_all("sync_weights", what="weight sync learner -> vLLM")
            return
        path = adapter_dir / f"v{version}"
        self.learners.call_all("save_adapter", str(path), what="saving the LoRA adapter")
        self.rollouts.call_all("load_adapter", str(path), version, what="loading the LoRA adapter in vLLM")
        shutil.rmtree(adapter_dir / f"v{version - 2}", ignore_errors=True)

    def shutdown(self) -> None:
        for group in self.groups.values():
            group.kill()
        self.layout.remove()
