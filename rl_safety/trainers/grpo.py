"""GRPO, driven by a single controller. One step reads top to bottom as its dataflow:

    prompts -> generate (vLLM actors) -> score (reward actors) [-> drop/refill flat groups]
            -> old / reference logprobs (learners) -> check rollout vs learner logprobs
            -> advantages -> update (DeepSpeed learners) -> weight sync (learners -> vLLM)

The math lives in `rl_safety.algorithms.grpo_math`, the placement in
`rl_safety.orchestration.cluster`, the workers in `rl_safety.learner` / `rl_safety.rollout`.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import rewards
from rl_safety import preflight
from rl_safety.algorithms import grpo_math
from rl_safety.config.grpo import GRPOConfig
from rl_safety.config.loader import dump_config
from rl_safety.data.prompts import PromptExample, PromptSampler, build_prompts, load_rows
from rl_safety.ledger import CostLedger
from rl_safety.orchestration import cluster
from rl_safety.orchestration.reward_pool import RewardPool, RewardWorker, load_reward_specs
from rl_safety.rollout.vllm_engine import Completion
from rl_safety.runs import RunDirectory

log = logging.getLogger("rl_safety.grpo")


class WeightSyncError(RuntimeError):
    """vLLM and the learner disagree on the logprobs of the same tokens: the weights vLLM
    samples with are not the learner's (a broken sync), or numerics differ beyond the bound."""


class ActorFailure(RuntimeError):
    """A Ray actor died or raised; the message names which one and where."""


@dataclass
class Sample:
    prompt: PromptExample
    completion: Completion
    group: int  # index of the prompt's group in this step


# ----------------------------------------------------------------------------------- actors
def _get(futures: Any, what: str) -> Any:
    import ray

    try:
        return ray.get(futures)
    except ray.exceptions.RayActorError as err:
        raise ActorFailure(f"{what}: a Ray actor died ({err.__class__.__name__}): {err}") from err
    except ray.exceptions.RayTaskError as err:
        raise ActorFailure(f"{what} failed: {err}") from err


class Workers:
    """The run's actor groups, placed by `cluster.make_layout`."""

    def __init__(self, cfg: GRPOConfig, source: str) -> None:
        self.cfg = cfg
        self.adapter_sync = cfg.learner.lora is not None and cfg.learner.lora.sync == "adapter"
        cluster.start_ray(cfg)
        use_gpu = cluster.preflight(cfg, source)  # before any actor exists
        self.rollouts: list[Any] = []
        self.learners: list[Any] = []
        self.reference = None
        self.rewards = RewardPool([])
        self.actors: dict[str, Any] = {}  # every actor by its Ray name
        self.placement: dict[str, dict[str, Any]] = {}  # actor name -> {node_id, ip, pid}
        self.layout = cluster.make_layout(cfg, use_gpu)
        try:
            self._start(cfg, self.layout, use_gpu)
        except BaseException:
            self.shutdown()  # no orphaned actors or placement groups holding the devices
            raise

    def _start(self, cfg: GRPOConfig, layout: cluster.Layout, use_gpu: bool) -> None:
        import ray

        from rl_safety.learner.deepspeed_learner import Learner, build_lock_hint
        from rl_safety.learner.logprobs import ReferencePolicy
        from rl_safety.rollout.vllm_engine import RolloutEngine, checked_max_model_len

        tag = uuid.uuid4().hex[:6]  # actor names must be unique in the Ray namespace
        learner_ip, ds_port, sync_port = cluster.node_address_in(layout.learner_group, 0)

        ro = cfg.rollout
        max_model_len = checked_max_model_len(
            cfg.model.path, ro.max_model_len, cfg.data.max_prompt_tokens, ro.max_new_tokens,
            explicit_key="rollout.max_model_len", budget_keys="data.max_prompt_tokens + rollout.max_new_tokens",
            trust_remote_code=cfg.model.trust_remote_code)
        rollout_cls = ray.remote(RolloutEngine)
        self.rollouts = [
            rollout_cls.options(**cluster.in_bundle(
                layout.rollout_group, i * ro.tensor_parallel_size, layout.rollout_share, use_gpu
            ), name=f"rollout-{i}-{tag}").remote(
                cfg.model.path, dtype=cfg.model.dtype, seed=cfg.run.seed + i,
                tensor_parallel_size=ro.tensor_parallel_size, max_model_len=max_model_len,
                use_gpu=use_gpu, gpu_memory_utilization=ro.gpu_memory_utilization,
                kv_cache_memory_mb=ro.kv_cache_memory_mb, enforce_eager=ro.enforce_eager,
                sleep_mode=cfg.cluster.placement == "colocated",
                trust_remote_code=cfg.model.trust_remote_code,
                weight_transfer_backend="nccl" if use_gpu else "gloo",
                max_lora_rank=cfg.learner.lora.rank if self.adapter_sync else None,
            )
            for i in range(ro.num_engines)
        ]
        learner_cls = ray.remote(Learner)
        n = cfg.learner.num_ranks
        # Learner rank 0 leaves a fifth of its bundle to the reference policy.
        self.learners = [
            learner_cls.options(
                **cluster.in_bundle(layout.learner_group, r, layout.learner_share * (0.8 if r == 0 else 1), use_gpu),
                name=f"learner-{r}-{tag}",
            ).remote(cfg, r, n, learner_ip, ds_port, use_gpu)
            for r in range(n)
        ]
        self.reference = None
        if cfg.algorithm.kl_coef > 0 and cfg.learner.lora is None:
            self.reference = ray.remote(ReferencePolicy).options(
                **cluster.in_bundle(layout.learner_group, 0, layout.learner_share * 0.2, use_gpu),
                name=f"reference-{tag}").remote(
                cfg.model.path, cfg.model.dtype, ro.temperature, cfg.learner.micro_batch_size,
                cfg.model.trust_remote_code,
            )
        reward_cls = ray.remote(num_cpus=0)(RewardWorker)
        sections = [r.model_dump() for r in cfg.rewards]
        self.rewards = RewardPool([
            reward_cls.options(name=f"reward-{i}-{tag}").remote(sections, cfg.reward_modules)
            for i in range(cfg.cluster.reward_workers)
        ], timeout_s=cfg.cluster.reward_timeout_s)
        # Construction errors (a model that does not load, a bad reward module) surface here;
        # an actor that has not started within cluster.start_timeout_s stops the run, named.
        deadline = cfg.cluster.start_timeout_s
        _get(cluster.wait_started({f"rollout-{i}-{tag}": h for i, h in enumerate(self.rollouts)},
                                  "starting the vLLM rollout engines", deadline), "starting the vLLM rollout engines")
        _get(cluster.wait_started({f"learner-{r}-{tag}": h for r, h in enumerate(self.learners)},
                                  f"starting the DeepSpeed learners (model {cfg.model.path}, process group at "
                                  f"{learner_ip}:{ds_port})", deadline, build_lock_hint), "starting the DeepSpeed learners")
        if self.reference is not None:
            _get(cluster.wait_started({f"reference-{tag}": self.reference}, "starting the reference policy", deadline),
                 "starting the reference policy")
        _get(cluster.wait_started({f"reward-{i}-{tag}": w for i, w in enumerate(self.rewards.workers)},
                                  "starting the reward workers", deadline), "starting the reward workers")
        groups = {"rollout": self.rollouts, "learner": self.learners, "reward": self.rewards.workers}
        self.actors = {f"{role}-{i}-{tag}": h for role, handles in groups.items() for i, h in enumerate(handles)}
        if self.reference is not None:
            self.actors[f"reference-{tag}"] = self.reference
        self.placement = cluster.locate(self.actors)

        if not self.adapter_sync:
            workers = ro.num_engines * ro.tensor_parallel_size
            offsets = [1 + i * ro.tensor_parallel_size for i in range(ro.num_engines)]
            # gloo binds its own free port (0); NCCL's rendezvous takes the probed one.
            _get([learner.init_weight_sync.remote(
                self.rollouts, learner_ip, sync_port if use_gpu else 0, 1 + workers, offsets,
                "nccl" if use_gpu else "gloo",
            ) for learner in self.learners], "forming the learner -> vLLM weight-sync group")

    def learners_call(self, method: str, *args: Any, what: str) -> list[Any]:
        return _get([getattr(h, method).remote(*args) for h in self.learners], what)

    def sync_weights(self, adapter_dir: Path, version: int) -> None:
        """Learner -> vLLM: full weights (LoRA merged) through the weight-transfer engine, or,
        with `lora.sync=adapter`, the adapter alone, saved on the run's (shared) path."""
        if not self.adapter_sync:
            self.learners_call("sync_weights", what="weight sync learner -> vLLM")
            return
        path = adapter_dir / f"v{version}"
        self.learners_call("save_adapter", str(path), what="saving the LoRA adapter")
        _get([e.load_adapter.remote(str(path), version) for e in self.rollouts], "loading the LoRA adapter in vLLM")
        stale = adapter_dir / f"v{version - 2}"
        if stale.exists():
            import shutil

            shutil.rmtree(stale)

    def shutdown(self) -> None:
        import ray

        for handle in [*self.rollouts, *self.learners, *self.rewards.workers,
                       *([self.reference] if self.reference else [])]:
            ray.kill(handle)
        groups = {id(self.layout.learner_group): self.layout.learner_group,
                  id(self.layout.rollout_group): self.layout.rollout_group}
        for group in groups.values():
            ray.util.remove_placement_group(group)


# ------------------------------------------------------------------------------- the trainer
class GRPOTrainer:
    def __init__(self, cfg: GRPOConfig, source: str = "<config>", resume: bool = False) -> None:
        from transformers import AutoTokenizer

        self.cfg, self.source = cfg, source
        self.run = RunDirectory(Path(cfg.run.output_dir) / cfg.run.name)
        self.run.create(resume)
        dump_config(cfg, self.run.root / "config.yaml")
        self.ledger = CostLedger(self.run.root, "grpo", model_path=cfg.model.path, resume=resume)
        # Unknown reward names or a broken reward file fail here, before any actor starts.
        self.reward_specs = load_reward_specs(cfg.rewards, cfg.reward_modules)
        self.tokenizer = AutoTokenizer.from_pretrained(cfg.model.path, trust_remote_code=cfg.model.trust_remote_code)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        rows = load_rows(cfg.data.train, cfg.data.split)
        self.prompts, dropped = build_prompts(
            rows, self.tokenizer, source=cfg.data.train, prompt_key=cfg.data.prompt_key,
            chat_template=cfg.model.chat_template, system_prompt=cfg.model.system_prompt,
            max_prompt_tokens=cfg.data.max_prompt_tokens,
        )
        if dropped:
            log.warning("%d prompts longer than data.max_prompt_tokens were dropped", dropped)
        self.sampler = PromptSampler(len(self.prompts), cfg.run.seed, cfg.data.shuffle)
        self.start_step = 0
        self.resume = resume
        log.info("batch plan: %s", cfg.batch_plan())
        self.workers = Workers(cfg, source)
        self.ledger.set_devices("gpu" if self.workers.layout.use_gpu else "cpu", cluster.bundles_needed(cfg))
        self.run.write_json("placement.json", {"actors": self.workers.placement, "nodes": cluster.nodes()})
        for name, where in self.workers.placement.items():
            log.info("%s runs on node %s (%s, pid %d)", name, where["node_id"][:12], where["ip"], where["pid"])
        if resume:
            self._restore()
        if cfg.run.tensorboard:
            self.run.add_tensorboard()
        if cfg.run.wandb_project:
            self.run.add_wandb(cfg.run.wandb_project, cfg.run.name, cfg.model_dump(mode="json"))

    # ---------------------------------------------------------------------------- the loop
    def train(self) -> Path:
        from ray.exceptions import RayActorError
        from tqdm import tqdm

        cfg = self.cfg
        bar = tqdm(total=cfg.run.total_steps, initial=self.start_step, desc="grpo",
                   disable=not cfg.run.progress_bar, dynamic_ncols=True)
        for step in range(self.start_step, cfg.run.total_steps):
            try:
                metrics = self.step(step)
                self.run.log_metrics(step, metrics)
                self.ledger.write()
                bar.set_postfix(reward=f"{metrics['reward/total/mean']:.3f}",
                                diff=f"{metrics['rollout_learner_logprob_diff']:.1e}")
                bar.update()
                last = step + 1 == cfg.run.total_steps
                if last or (cfg.run.save_every and (step + 1) % cfg.run.save_every == 0):
                    self.save_checkpoint(step)
            except (ActorFailure, RayActorError) as err:  # a reward worker's death is a RayActorError
                raise self._actor_lost(step, err) from err
        bar.close()
        self.run.close()
        final = self.run.root / "final"
        self.workers.learners_call("export_hf", str(final), what="exporting the final policy")
        return final

    def step(self, step: int) -> dict[str, Any]:
        cfg, a = self.cfg, self.cfg.algorithm
        timings: dict[str, float] = defaultdict(float)
        metrics: dict[str, Any] = {}

        # 1-2. generate and score, refilling groups with no reward spread (dynamic sampling)
        samples, raw, total, sampling_stats = self._collect_groups(step, timings)
        metrics.update(sampling_stats)

        # 3. tensors; old logprobs (current learner) and reference logprobs
        batch = build_batch(samples, self.pad_id)
        t = time.perf_counter()
        old = self._logprobs(batch, reference=False)
        ref = self._logprobs(batch, reference=True) if a.kl_coef > 0 else None
        timings["timing/logprobs"] += time.perf_counter() - t

        mask = batch["response_mask"]
        diff = float(((old - batch["rollout_logprobs"]).abs() * mask).sum() / mask.sum())
        metrics["rollout_learner_logprob_diff"] = diff
        if diff > cfg.run.logprob_diff_bound:
            raise WeightSyncError(
                f"step {step}: mean |vLLM logprob - learner logprob| = {diff:.3g} on the same tokens "
                f"exceeds run.logprob_diff_bound={cfg.run.logprob_diff_bound} ({self.source}). The "
                "rollout engines are not sampling from the learner's weights (or dtype/sampling "
                "settings differ). Checkpoints so far are kept in " + str(self.run.checkpoints)
            )

        # 4. advantages (shaped rewards), loss masks, importance weights
        lengths = torch.tensor([len(s.completion.token_ids) for s in samples], dtype=torch.float32)
        truncated = torch.tensor([s.completion.truncated for s in samples])
        if a.overlong == "penalty":
            penalty = grpo_math.overlong_penalty(lengths, cfg.rollout.max_new_tokens, a.overlong_buffer,
                                                 a.overlong_penalty_factor)
            total = total + penalty
            metrics["overlong_penalty/mean"] = float(penalty.mean())
        advantages = grpo_math.group_advantages(total, a.group_size, normalize_std=a.normalize_advantage_std)
        if a.overlong == "filter":
            mask = mask * grpo_math.overlong_filter_mask(truncated)[:, None]
        batch.update(response_mask=mask, advantages=advantages, old_logprobs=old, ref_logprobs=ref)
        if a.importance_correction != "none":
            batch["importance_weights"] = grpo_math.truncated_importance_weights(
                old, batch["rollout_logprobs"], mask, cap=a.importance_cap,
                level=a.importance_level, mode=a.importance_correction,
            )

        # 5. update
        t = time.perf_counter()
        train_stats = self._update(batch, step)
        timings["timing/train"] += time.perf_counter() - t
        # cost: every sequence (prompt + response) goes through each optimizer epoch, and
        # through forward-only passes for the old (and reference) logprobs
        sequence_tokens = int(batch["attention_mask"].sum())
        self.ledger.add_tokens(trained=sequence_tokens * a.epochs_per_step,
                               forward_only=sequence_tokens * (2 if ref is not None else 1))

        # 6. weight sync (learner -> vLLM)
        t = time.perf_counter()
        self.workers.sync_weights(self.run.root / "adapters", version=step + 1)
        timings["timing/weight_sync"] += time.perf_counter() - t

        # metrics and sampled rollouts; `raw` also holds rewards' diagnostics ("safety/guard_disagreement":
        # the share of harmful prompts on which the rule detector and the guard disagree)
        for name, values in raw.items():
            present = [v for v in values if v is not None]
            metrics[f"reward/{name}/mean"] = float(np.mean(present)) if present else float("nan")
            metrics[f"reward/{name}/std"] = float(np.std(present)) if present else float("nan")
            metrics[f"reward/{name}/coverage"] = len(present) / len(values)
        metrics["reward/total/mean"] = float(total.mean())
        metrics["reward/total/std"] = float(total.std(unbiased=False))
        metrics["advantage/mean"] = float(advantages.mean())
        metrics["advantage/std"] = float(advantages.std(unbiased=False))
        metrics["advantage/abs_mean"] = float(advantages.abs().mean())
        metrics["response_length/mean"] = float(lengths.mean())
        metrics["response_length/max"] = float(lengths.max())
        metrics["response_length/min"] = float(lengths.min())
        metrics["response_truncated/fraction"] = float(truncated.float().mean())
        tokens = train_stats.pop("token_count")
        metrics["clip_fraction"] = train_stats.pop("clip_tokens") / tokens
        metrics["entropy"] = train_stats.pop("entropy_sum") / tokens
        if "kl_sum" in train_stats:
            metrics["kl"] = train_stats.pop("kl_sum") / tokens
        metrics.update({f"train/{k}": v for k, v in train_stats.items()})
        metrics.update(timings)
        self.ledger.add_phase_times(timings)
        step_time = sum(timings.values())
        metrics["timing/step"] = step_time
        metrics["tokens_generated"] = float(lengths.sum())
        metrics["tokens_per_second"] = float(lengths.sum()) / step_time
        self._save_rollouts(step, samples, raw, total, advantages)
        return metrics

    # ------------------------------------------------------------------------- the pieces
    def _collect_groups(self, step: int, timings: dict[str, float]):
        """Generate and score groups; with dynamic sampling keep only groups whose rewards
        differ (a flat group has zero advantage: no signal) and draw more prompts until the
        batch is full or `max_sampling_rounds` is reached, then fill up with flat groups."""
        a = self.cfg.algorithm
        kept: list[tuple[list[Sample], dict, torch.Tensor]] = []
        flat: list[tuple[list[Sample], dict, torch.Tensor]] = []
        rounds = 0
        while len(kept) < a.prompts_per_step and rounds < (a.max_sampling_rounds if a.dynamic_sampling else 1):
            need = a.prompts_per_step - len(kept)
            prompts = [self.prompts[i] for i in self.sampler.take(need)]
            t = time.perf_counter()
            groups = self._generate(prompts, seed_base=(step, rounds))
            timings["timing/generation"] += time.perf_counter() - t
            t = time.perf_counter()
            samples = [Sample(p, c, g) for g, (p, cs) in enumerate(zip(prompts, groups)) for c in cs]
            raw = self._score(samples)
            total = torch.tensor(rewards.combine(raw, self.reward_specs, group_size=a.group_size), dtype=torch.float32)
            timings["timing/reward"] += time.perf_counter() - t
            keep = (grpo_math.dynamic_sampling_keep(total, a.group_size) if a.dynamic_sampling
                    else torch.ones(len(prompts), dtype=torch.bool))
            G = a.group_size
            for g in range(len(prompts)):
                part = slice(g * G, (g + 1) * G)
                entry = (samples[part], {k: v[part] for k, v in raw.items()}, total[part])
                (kept if keep[g] else flat).append(entry)
            rounds += 1
        groups = (kept + flat)[: a.prompts_per_step]
        stats = {}
        if a.dynamic_sampling:
            stats = {"dynamic_sampling/rounds": rounds,
                     "dynamic_sampling/flat_groups_dropped": len(flat) - max(0, a.prompts_per_step - len(kept)),
                     "dynamic_sampling/flat_groups_in_batch": max(0, a.prompts_per_step - len(kept))}
        samples, raw, totals = [], defaultdict(list), []
        for g, (group_samples, group_raw, group_total) in enumerate(groups):
            samples += [Sample(s.prompt, s.completion, g) for s in group_samples]
            for k, v in group_raw.items():
                raw[k] += v
            totals.append(group_total)
        return samples, dict(raw), torch.cat(totals), stats

    def _generate(self, prompts: list[PromptExample], seed_base: tuple[int, int]) -> list[list[Completion]]:
        ro, engines = self.cfg.rollout, self.workers.rollouts
        if self.cfg.cluster.placement == "colocated":
            _get([e.wake_up.remote() for e in engines], "waking the rollout engines")
        seeds = [hash((self.cfg.run.seed, *seed_base, p.index)) % (2**31) for p in prompts]
        size = -(-len(prompts) // len(engines))
        futures = [
            engine.generate.remote(
                [p.token_ids for p in prompts[i * size:(i + 1) * size]], self.cfg.algorithm.group_size,
                temperature=ro.temperature, top_p=ro.top_p, top_k=ro.top_k,
                max_new_tokens=ro.max_new_tokens, seeds=seeds[i * size:(i + 1) * size],
            )
            for i, engine in enumerate(engines) if i * size < len(prompts)
        ]
        groups = [g for part in _get(futures, "generating rollouts (vLLM)") for g in part]
        # cost: all generated tokens, also of groups dynamic sampling drops later
        self.ledger.add_tokens(generated=sum(len(c.token_ids) for g in groups for c in g),
                               prefilled=sum(len(p.token_ids) for p in prompts))
        if self.cfg.cluster.placement == "colocated":
            _get([e.sleep.remote() for e in engines], "putting the rollout engines to sleep")
        return groups

    def _score(self, samples: list[Sample]) -> dict[str, list[float | None]]:
        prompts = [s.prompt.text for s in samples]
        completions = [s.completion.text for s in samples]
        names = sorted({k for s in samples for k in s.prompt.columns})
        columns = {k: [s.prompt.columns.get(k) for s in samples] for k in names}
        pool = self.workers.rewards
        try:
            return pool.collect(pool.submit(prompts, completions, columns))
        except Exception as err:  # RayTaskError wrapping a RewardError: show the reward's message
            cause = getattr(err, "cause", None)
            if isinstance(cause, rewards.RewardError):
                raise cause from None
            raise

    def _logprobs(self, batch: dict[str, torch.Tensor], reference: bool) -> torch.Tensor:
        ids, attn = batch["input_ids"], batch["attention_mask"]
        if reference and self.workers.reference is not None:
            return _get(self.workers.reference.logprobs.remote(ids, attn), "reference logprobs")
        n = len(self.workers.learners)
        size = -(-ids.shape[0] // n)
        parts = _get([learner.logprobs.remote(ids[r * size:(r + 1) * size], attn[r * size:(r + 1) * size], reference)
                      for r, learner in enumerate(self.workers.learners)], "learner logprobs")
        return torch.cat(parts)

    def _update(self, batch: dict[str, Any], step: int) -> dict[str, float]:
        """Epochs x mini-batches of optimizer steps; each rank gets its slice of every
        mini-batch, plus the mini-batch's global token/sequence counts (see Learner.train)."""
        a, n = self.cfg.algorithm, self.cfg.learner.num_ranks
        size = batch["input_ids"].shape[0]
        rng = np.random.default_rng([self.cfg.run.seed, step])
        per_rank: list[list[dict[str, Any]]] = [[] for _ in range(n)]
        for _ in range(a.epochs_per_step):
            order = torch.from_numpy(rng.permutation(size))
            for chunk in order.chunk(a.mini_batches_per_step):
                mb = {k: v[chunk] for k, v in batch.items() if isinstance(v, torch.Tensor)}
                counts = {"global_tokens": float(mb["response_mask"].sum()), "global_sequences": float(len(chunk))}
                for r, rank_rows in enumerate(torch.arange(len(chunk)).chunk(n)):
                    per_rank[r].append({**{k: v[rank_rows] for k, v in mb.items()}, **counts})
        results = _get([learner.train.remote(per_rank[r]) for r, learner in enumerate(self.workers.learners)],
                       "training step (DeepSpeed learners)")
        merged = {k: sum(res[k] for res in results) for k in ("token_count", "clip_tokens", "entropy_sum")}
        if "kl_sum" in results[0]:
            merged["kl_sum"] = sum(res["kl_sum"] for res in results)
        # mean over the optimizer steps of this rollout batch
        merged["loss"] = sum(res["loss"] for res in results) / (a.epochs_per_step * a.mini_batches_per_step)
        merged["grad_norm"] = results[0]["grad_norm"]
        merged["learning_rate"] = results[0]["learning_rate"]
        return merged

    def _save_rollouts(self, step, samples, raw, total, advantages) -> None:
        keep = self.cfg.run.rollouts_saved_per_step
        if not keep:
            return
        rows = []
        for i, s in enumerate(samples[:keep]):
            rows.append({
                "step": step, "group": s.group, "prompt": s.prompt.text, "completion": s.completion.text,
                **{k: v for k, v in s.prompt.columns.items() if _jsonable(v)},
                "rewards": {k: v[i] for k, v in raw.items()}, "reward": float(total[i]),
                "advantage": float(advantages[i]), "prompt_tokens": len(s.prompt.token_ids),
                "response_tokens": len(s.completion.token_ids),
                "truncated": s.completion.truncated,
            })
        self.run.write_rollouts(step, rows)

    # --------------------------------------------------------------------------- checkpoints
    def save_checkpoint(self, step: int) -> Path:
        partial = self.run.partial_checkpoint(step)
        self.workers.learners_call("save_checkpoint", str(partial), "deepspeed",
                                   what=f"saving the step {step} checkpoint")
        state = {"step": step, "sampler": self.sampler.state(),
                 "python_random": repr(random.getstate())}
        return self.run.commit_checkpoint(step, state, self.cfg.run.keep_checkpoints)

    def _actor_lost(self, step: int, err: Exception) -> ActorFailure:
        """The error that ends a run whose actor died: which actor, on which node, and where
        to resume from (a checkpoint being written when it happened stays uncommitted)."""
        dead = cluster.dead_actors(self.workers.actors)
        where = "; ".join(
            f"actor {name} died on node {self.workers.placement[name]['node_id'][:12]} "
            f"({self.workers.placement[name]['ip']}, pid {self.workers.placement[name]['pid']})"
            for name in dead
        ) or "an actor failed"
        latest = self.run.latest_checkpoint()
        resume = (f"last complete checkpoint: {latest[0]} (after step {latest[1]['step']}); continue with "
                  f"`rl-safety grpo --config {self.source} --resume`" if latest else "no complete checkpoint yet")
        return ActorFailure(f"step {step}: {where}. {resume}.\nCause: {err}")

    def _restore(self) -> None:
        found = self.run.latest_checkpoint()
        if found is None:
            raise FileNotFoundError(f"--resume: no complete checkpoint under {self.run.checkpoints}")
        path, state = found
        self.workers.learners_call("load_checkpoint", str(path), "deepspeed",
                                   what=f"loading checkpoint {path}")
        self.sampler.restore(state["sampler"])
        self.start_step = state["step"] + 1
        self.run.truncate_metrics(state["step"])
        # vLLM still holds the starting weights: bring it to the checkpoint's.
        self.workers.sync_weights(self.run.root / "adapters", version=self.start_step)
        log.info("resumed from %s at step %d", path, self.start_step)


def build_batch(samples: list[Sample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded prompt+response tensors. Token-level tensors are shifted [B, L-1]: entry t
    belongs to token t+1, so response token j of a prompt of length p sits at t = p - 1 + j."""
    lengths = [len(s.prompt.token_ids) + len(s.completion.token_ids) for s in samples]
    L = max(lengths)
    B = len(samples)
    input_ids = torch.full((B, L), pad_id, dtype=torch.long)
    attention_mask = torch.zeros(B, L, dtype=torch.long)
    response_mask = torch.zeros(B, L - 1)
    rollout_logprobs = torch.zeros(B, L - 1)
    for i, s in enumerate(samples):
        p, r = len(s.prompt.token_ids), len(s.completion.token_ids)
        input_ids[i, :p] = torch.tensor(s.prompt.token_ids)
        input_ids[i, p:p + r] = torch.tensor(s.completion.token_ids, dtype=torch.long)
        attention_mask[i, :p + r] = 1
        response_mask[i, p - 1:p - 1 + r] = 1
        rollout_logprobs[i, p - 1:p - 1 + r] = torch.tensor(s.completion.logprobs)
    return {"input_ids": input_ids, "attention_mask": attention_mask,
            "response_mask": response_mask, "rollout_logprobs": rollout_logprobs}


def _jsonable(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool, type(None), list, dict))


def run_grpo(cfg: GRPOConfig, source: str, resume: bool = False, allow_config_change: list[str] = ()) -> Path:
    """Train; with `run.max_restarts`, a run that lost an actor starts every actor afresh and
    resumes from its last checkpoint (redoing the steps since), as `--resume` would."""
    preflight.check_grpo(cfg, source, resume, list(allow_config_change))
    for restart in range(cfg.run.max_restarts + 1):
        trainer = GRPOTrainer(cfg, source, resume)
        completed = False
        try:
            final = trainer.train()
            completed = True
            return final
        except ActorFailure as err:
            if restart == cfg.run.max_restarts or trainer.run.latest_checkpoint() is None:
                raise
            log.warning("%s\nrestart %d of run.max_restarts=%d from the last checkpoint",
                        err, restart + 1, cfg.run.max_restarts)
            resume = True
        finally:
            trainer.run.close()
            trainer.ledger.finish(trainer.workers.actors, complete=completed)  # cost.json, also of a failed run
            trainer.workers.shutdown()
    raise AssertionError("unreachable: the last attempt returns or raises")
