"""GRPO, driven by a single controller. `GRPOTrainer.step` reads top to bottom as its dataflow:

    prompts -> generate (vLLM actors) -> score (reward actors) [-> drop/refill flat groups]
            -> old / reference logprobs (learners) -> check rollout vs learner logprobs
            -> advantages -> update (DeepSpeed learners) -> weight sync (learners -> vLLM)

The logprob passes start as soon as the batch's samples are fixed: before scoring (they run on
the learners while the reward actors score) unless dynamic sampling decides the batch by the
scores. On-policy (`old_logprobs_from_update`) there is no old-logprob pass: the update's forward
gives the old logprobs, and the rollout-vs-learner check runs after the update, before the sync.

The math lives in `rl_safety.algorithms` (advantage estimators, losses, `grpo_math`), the actors
and their placement in `rl_safety.orchestration.grpo_workers`, the rollout batch in
`rl_safety.rollout.batch`, what a step reports in `rl_safety.trainers.grpo_metrics`.
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import rewards
from rl_safety import preflight
from rl_safety.algorithms import grpo_math
from rl_safety.algorithms.advantages import compute_advantages, outcome_token_rewards
from rl_safety.algorithms.losses import kl_reward_penalty, loss_counts
from rl_safety.config.grpo import GRPOConfig
from rl_safety.config.loader import dump_config
from rl_safety.data.prompts import PromptExample, PromptSampler, build_prompts, load_rows
from rl_safety.ledger import CostLedger
from rl_safety.orchestration import cluster
from rl_safety.orchestration.actor_group import ActorFailure, Pending, sample_seed
from rl_safety.orchestration.engines import generate
from rl_safety.orchestration.grpo_workers import GRPOWorkers
from rl_safety.orchestration import reward_pool
from rl_safety.rollout.batch import RolloutBatch, Sample, build_batch
from rl_safety.rollout.vllm_engine import Completion
from rl_safety.runs import RunDirectory
from rl_safety.trainers.grpo_metrics import (importance_metrics, merge_learner_stats, rollout_rows, step_metrics,
                                             timed)

log = logging.getLogger("rl_safety.grpo")


class WeightSyncError(RuntimeError):
    """vLLM and the learner disagree on the logprobs of the same tokens: the weights vLLM
    samples with are not the learner's (a broken sync), or numerics differ beyond the bound."""


def old_logprobs_from_update(cfg: GRPOConfig) -> bool:
    """Whether the update's own forward can stand in for the old-logprob pass (verl and TRL take
    old = logprobs.detach() then): the batch's only optimizer step sees the weights that sampled
    it (one epoch, one mini-batch), that forward is the policy (no dropout: `learner.dropout`),
    and nothing before the update needs the old logprobs (KL in the reward enters the advantages).
    `algorithm.recompute_old_logprobs=always` keeps the pass."""
    a = cfg.algorithm
    return (a.recompute_old_logprobs == "auto" and a.epochs_per_step == 1 and a.mini_batches_per_step == 1
            and not cfg.learner.dropout and not (a.kl_coef > 0 and a.kl_placement == "reward"))


@dataclass
class LogprobPasses:
    """A batch and its logprob passes in flight on the learners: old (unless the update gives
    them) and reference (with KL)."""

    samples: list[Sample]
    batch: dict[str, torch.Tensor]
    old: Pending | None
    reference: Pending | None


class GRPOTrainer:
    def __init__(self, cfg: GRPOConfig, source: str = "<config>", resume: bool = False) -> None:
        from transformers import AutoTokenizer

        self.cfg, self.source = cfg, source
        self.run = RunDirectory(Path(cfg.run.output_dir) / cfg.run.name)
        self.run.create(resume)
        dump_config(cfg, self.run.root / "config.yaml")
        self.ledger = CostLedger(self.run.root, "grpo", model_path=cfg.model.path, resume=resume)
        # Unknown reward names or a broken reward file fail here, before any actor starts.
        self.reward_specs = reward_pool.load_reward_specs(cfg.rewards, cfg.reward_modules)
        tokenizer = AutoTokenizer.from_pretrained(cfg.model.path, trust_remote_code=cfg.model.trust_remote_code)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.prompts, dropped = build_prompts(
            load_rows(cfg.data.train, cfg.data.split), tokenizer, source=cfg.data.train,
            prompt_key=cfg.data.prompt_key, chat_template=cfg.model.chat_template,
            system_prompt=cfg.model.system_prompt, max_prompt_tokens=cfg.data.max_prompt_tokens)
        if dropped:
            log.warning("%d prompts longer than data.max_prompt_tokens were dropped", dropped)
        self.sampler = PromptSampler(len(self.prompts), cfg.run.seed, cfg.data.shuffle)
        self.start_step = 0
        log.info("batch plan: %s", cfg.batch_plan())
        self.workers = GRPOWorkers(cfg, source)
        self.ledger.set_devices("gpu" if self.workers.layout.use_gpu else "cpu", cluster.devices_needed(cfg))
        judges = [{"what": judge.what, "devices": judge.devices} for judge in cluster.reward_judges(cfg)]
        self.run.write_json("placement.json", {"actors": self.workers.placement, "judges": judges,
                                               "nodes": cluster.nodes()})
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
                if step + 1 == cfg.run.total_steps or (cfg.run.save_every and (step + 1) % cfg.run.save_every == 0):
                    self.save_checkpoint(step)
            except ActorFailure as err:
                raise self._actor_lost(step, err) from err
        bar.close()
        self.run.close()
        final = self.run.root / "final"
        self.workers.learners.call_all("export_hf", str(final), what="exporting the final policy")
        return final

    def step(self, step: int) -> dict[str, Any]:
        cfg, a = self.cfg, self.cfg.algorithm
        timings: dict[str, float] = {}

        # 1-2. generate, score and shape rewards, refilling groups with no reward spread (dynamic
        # sampling); the logprob passes start once the batch's samples are fixed (before scoring
        # without dynamic sampling)
        recompute_old = not old_logprobs_from_update(cfg)
        rollout, metrics, passes = self._collect_groups(step, timings, recompute_old)
        samples, total = rollout.samples, rollout.rewards
        if passes is None:
            passes = self._start_logprob_passes(samples, recompute_old)
        elif any(s.completion is not t.completion for s, t in zip(samples, passes.samples, strict=True)):
            raise AssertionError("the batch differs from the samples whose logprob passes started before scoring")
        batch = passes.batch
        metrics["logprobs/overlapped_with_reward"] = float(
            not a.dynamic_sampling and (passes.old is not None or passes.reference is not None))

        # 3. old logprobs (current learner) and reference logprobs; vLLM's must match the learner's
        with timed(timings, "logprobs"):  # the wait left after scoring
            old = self.workers.learners.result(passes.old) if passes.old is not None else None
            ref = self.workers.learners.result(passes.reference) if passes.reference is not None else None
        mask = batch["response_mask"]
        if ref is not None:  # how far the sampling policy has moved from the reference (0 at step 0)
            metrics["reference_rollout_logprob_diff"] = float(
                ((ref - batch["rollout_logprobs"]).abs() * mask).sum() / mask.sum())
        if old is not None:
            self._check_learner_logprobs(step, old, batch, metrics, updated=False)

        # 4. advantages (from the shaped rewards, minus the KL to the reference with
        #    kl_placement=reward), loss mask, importance weights
        lengths = torch.tensor([len(s.completion.token_ids) for s in samples], dtype=torch.float32)
        truncated = torch.tensor([s.completion.truncated for s in samples])
        if a.overlong == "penalty":
            metrics["overlong_penalty/mean"] = float(rollout.penalty.mean())
        token_rewards = outcome_token_rewards(total, mask)
        kl_penalty = None
        if ref is not None and a.kl_placement == "reward":
            kl_penalty = kl_reward_penalty(old, ref, mask, a.kl_estimator, a.kl_coef, a.k3_clamp)
            token_rewards = token_rewards - kl_penalty
            metrics["kl"] = float(kl_penalty.sum() / a.kl_coef / mask.sum())
            metrics["kl_penalty/mean"] = float(kl_penalty.sum(dim=1).mean())
        advantages = compute_advantages(a.advantage_estimator, token_rewards, mask, a.group_size)
        sequence_advantages = advantages.sum(dim=1) / mask.sum(dim=1)
        loss_mask = mask * grpo_math.overlong_filter_mask(truncated)[:, None] if a.overlong == "filter" else mask
        if old is None and not loss_mask.any():  # no token in the loss: no update forward to take them from
            with timed(timings, "logprobs"):
                old = self.workers.learners.shard("logprobs", self._sequences(batch), what="learner logprobs",
                                                  every_actor=True)
            self._check_learner_logprobs(step, old, batch, metrics, updated=False)
        metrics["train/old_logprobs_recomputed"] = float(old is not None)
        batch.update(response_mask=loss_mask, advantages=advantages, old_logprobs=old,
                     ref_logprobs=ref if a.kl_placement == "loss" else None,
                     rows=torch.arange(len(samples)))
        if old is not None and a.importance_correction != "none":
            batch["importance_weights"] = self._importance_weights(old, batch)

        # 5. update (on-policy without old logprobs: the learners take them from its forward and
        # return them); cost: every sequence goes through each optimizer epoch and through the
        # forward-only passes for the old (and reference) logprobs
        with timed(timings, "train"):
            train_stats, reused_old = self._update(batch, step)
        if old is None:
            old = reused_old
            self._check_learner_logprobs(step, old, batch, metrics, updated=True)
        if a.importance_correction != "none":
            # the weights the update used: sent with the batch, or (on-policy) computed in the
            # learners from the same old logprobs and function
            weights = batch.get("importance_weights")
            if weights is None:
                weights = self._importance_weights(old, batch)
            metrics.update(importance_metrics(
                weights,
                grpo_math.importance_ratios(old, batch["rollout_logprobs"], loss_mask, a.importance_level),
                loss_mask, a.importance_cap))
        sequence_tokens = int(batch["attention_mask"].sum())
        self.ledger.add_tokens(trained=sequence_tokens * a.epochs_per_step,
                               forward_only=sequence_tokens * (int(metrics["train/old_logprobs_recomputed"])
                                                               + (ref is not None)))

        # 6. weight sync (learner -> vLLM)
        with timed(timings, "weight_sync"):
            self.workers.sync_weights(self.run.root / "adapters", version=step + 1)

        self.ledger.add_phase_times(timings)
        # `raw` also holds rewards' diagnostics ("safety/guard_disagreement": the share of harmful
        # prompts on which the rule detector and the guard disagree)
        metrics.update(step_metrics(rollout.raw, total, sequence_advantages, lengths, truncated, train_stats, timings))
        if cfg.run.rollouts_saved_per_step:
            self.run.write_rollouts(step, rollout_rows(
                step, samples, rollout.raw, total, sequence_advantages, cfg.run.rollouts_saved_per_step,
                kl_penalty.sum(dim=1) if kl_penalty is not None else None))
        return metrics

    # ------------------------------------------------------------------------- the pieces
    def _collect_groups(self, step: int, timings: dict[str, float], recompute_old: bool
                        ) -> tuple[RolloutBatch, dict[str, float], LogprobPasses | None]:
        """Generate, score and shape rewards (overlong penalty) group by group. With dynamic
        sampling, keep the groups whose shaped rewards differ (a flat group has zero advantage: no
        signal), drawing ceil(prompts_per_step x dynamic_sampling_oversample) prompts a round
        (DAPO) until enough are kept or max_sampling_rounds is reached; `grpo_math.fill_batch`
        then pads with flat groups or stops, as dynamic_sampling_shortfall says.

        Without dynamic sampling the one round's samples are the batch: its logprob passes
        (returned) start on the learners before scoring, so scoring and the passes overlap. With
        it, the batch is known only from the last round's scores, and the passes start after."""
        cfg, a = self.cfg, self.cfg.algorithm
        per_round = (math.ceil(a.prompts_per_step * a.dynamic_sampling_oversample) if a.dynamic_sampling
                     else a.prompts_per_step)
        kept: list[RolloutBatch] = []
        flat: list[RolloutBatch] = []
        rounds = 0
        passes = None
        colocated = self.cfg.cluster.placement == "colocated"
        if colocated:  # vLLM sleeps while the learner has the devices: from after the last round to here
            self.workers.rollouts.call_all("wake_up", what="waking the rollout engines")
        while len(kept) < a.prompts_per_step and rounds < (a.max_sampling_rounds if a.dynamic_sampling else 1):
            prompts = [self.prompts[i] for i in self.sampler.take(per_round)]
            with timed(timings, "generation"):
                completions = self._generate(prompts, step, rounds)
            samples = [Sample(p, c, g) for g, (p, group) in enumerate(zip(prompts, completions)) for c in group]
            if not a.dynamic_sampling:  # these samples are the batch: the learners start on it now
                if colocated:
                    self.workers.rollouts.call_all("sleep", what="putting the rollout engines to sleep")
                passes = self._start_logprob_passes(samples, recompute_old)
            with timed(timings, "reward"):
                raw = self._score(samples)
                total = torch.tensor(rewards.combine(raw, self.reward_specs, group_size=a.group_size),
                                     dtype=torch.float32)
                # all shaping before the filter: a penalty can give a flat group spread, or take it away
                penalty = torch.zeros_like(total)
                if a.overlong == "penalty":
                    lengths = torch.tensor([len(s.completion.token_ids) for s in samples], dtype=torch.float32)
                    penalty = grpo_math.overlong_penalty(lengths, cfg.rollout.max_new_tokens, a.overlong_buffer,
                                                         a.overlong_penalty_factor)
            keep = (grpo_math.dynamic_sampling_keep(total + penalty, a.group_size) if a.dynamic_sampling
                    else torch.ones(len(prompts), dtype=torch.bool))
            for g, group in enumerate(RolloutBatch(samples, raw, total + penalty, penalty).split(a.group_size)):
                (kept if keep[g] else flat).append(group)
            rounds += 1
        if colocated and a.dynamic_sampling:  # not between rounds: a sleep that discards the weights waits for the next sync
            self.workers.rollouts.call_all("sleep", what="putting the rollout engines to sleep")
        groups, counts = grpo_math.fill_batch(
            kept, flat, a.prompts_per_step, a.dynamic_sampling_shortfall,
            context=f"step {step}, after {rounds} sampling round(s) of {per_round} prompts: ")
        stats = {}
        if a.dynamic_sampling:
            stats = {"dynamic_sampling/rounds": rounds, "dynamic_sampling/prompts_drawn": rounds * per_round,
                     **{f"dynamic_sampling/{k}": v for k, v in counts.items()}}
            if counts["padded_flat_groups"]:
                log.warning("step %d: %d of %d groups in the batch are flat (no reward spread) after %d sampling "
                            "round(s) (algorithm.dynamic_sampling_shortfall=pad)", step,
                            counts["padded_flat_groups"], a.prompts_per_step, rounds)
        return RolloutBatch.join(groups), stats, passes

    def _generate(self, prompts: list[PromptExample], step: int, round_: int) -> list[list[Completion]]:
        seeds = [sample_seed(self.cfg.run.seed, step, round_, p.index) for p in prompts]
        groups = generate(self.workers.rollouts, [p.token_ids for p in prompts], seeds, self.cfg.algorithm.group_size,
                          self.cfg.rollout, what="generating rollouts (vLLM)")
        # cost: all generated tokens, also of groups dynamic sampling drops later
        self.ledger.add_tokens(generated=sum(len(c.token_ids) for g in groups for c in g),
                               prefilled=sum(len(p.token_ids) for p in prompts))
        return groups

    def _score(self, samples: list[Sample]) -> dict[str, list[float | None]]:
        names = sorted({k for s in samples for k in s.prompt.columns})
        columns = {k: [s.prompt.columns.get(k) for s in samples] for k in names}
        return reward_pool.score(self.workers.rewards, [s.prompt.text for s in samples],
                                 [s.completion.text for s in samples], columns)

    @staticmethod
    def _sequences(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}

    def _start_logprob_passes(self, samples: list[Sample], recompute_old: bool) -> LogprobPasses:
        """The batch of `samples` and, submitted without waiting, its old-logprob pass (when
        `recompute_old`) and reference pass (KL; each rank on its shard: its replica of the
        frozen start, or with LoRA its adapter-disabled policy)."""
        batch = build_batch(samples, self.pad_id)
        learners, sequences = self.workers.learners, self._sequences(batch)
        old = (learners.submit_shards("logprobs", sequences, what="learner logprobs", every_actor=True)
               if recompute_old else None)
        reference = (learners.submit_shards("logprobs", sequences, what="reference logprobs", every_actor=True,
                                            reference=True) if self.cfg.algorithm.kl_coef > 0 else None)
        return LogprobPasses(samples, batch, old, reference)

    def _check_learner_logprobs(self, step: int, old: torch.Tensor, batch: dict[str, torch.Tensor],
                                metrics: dict[str, Any], updated: bool) -> None:
        """vLLM's logprobs of the sampled tokens against the learner's (`old`, [B, T], over the
        response tokens): above run.logprob_diff_bound, WeightSyncError. `updated`: they came
        from the update's forward, which the learners have applied (not checkpointed, not synced)."""
        cfg = self.cfg
        mask = batch["response_mask"]
        diff = float(((old - batch["rollout_logprobs"]).abs() * mask).sum() / mask.sum())
        metrics["rollout_learner_logprob_diff"] = diff
        if diff > cfg.run.logprob_diff_bound:
            applied = (" This step's update, computed in the same forward, is applied in the learners but was "
                       "neither checkpointed nor sent to vLLM." if updated else "")
            raise WeightSyncError(
                f"step {step}: mean |vLLM logprob - learner logprob| = {diff:.3g} on the same tokens "
                f"exceeds run.logprob_diff_bound={cfg.run.logprob_diff_bound} ({self.source}). The "
                "rollout engines are not sampling from the learner's weights (or dtype/sampling "
                f"settings differ).{applied} Checkpoints so far are kept in {self.run.checkpoints}")

    def _importance_weights(self, old: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        a = self.cfg.algorithm
        return grpo_math.truncated_importance_weights(old, batch["rollout_logprobs"], batch["response_mask"],
                                                      cap=a.importance_cap, level=a.importance_level,
                                                      mode=a.importance_correction)

    def _update(self, batch: dict[str, Any], step: int) -> tuple[dict[str, float], torch.Tensor | None]:
        """Epochs x mini-batches of optimizer steps; each rank gets its slice of every
        mini-batch, plus the mini-batch's global token/sequence counts (see Learner.train).
        Returns the merged stats and, when the batch has no old logprobs (on-policy), those the
        learners took from the update's forward, [B, T] in batch order (by `rows`)."""
        a, n = self.cfg.algorithm, self.cfg.learner.num_ranks
        rng = np.random.default_rng([self.cfg.run.seed, step])
        per_rank: list[list[dict[str, Any]]] = [[] for _ in range(n)]
        for _ in range(a.epochs_per_step):
            order = torch.from_numpy(rng.permutation(batch["input_ids"].shape[0]))
            for chunk in order.chunk(a.mini_batches_per_step):
                mb = {k: v[chunk] for k, v in batch.items() if isinstance(v, torch.Tensor)}
                tokens, sequences = loss_counts(mb["response_mask"])
                counts = {"global_tokens": tokens, "global_sequences": sequences}
                for r, rank_rows in enumerate(torch.arange(len(chunk)).chunk(n)):
                    per_rank[r].append({**{k: v[rank_rows] for k, v in mb.items()}, **counts})
        results = self.workers.learners.call_each("train", [{"mini_batches": part} for part in per_rank],
                                                  what="training step (DeepSpeed learners)")
        reused = [(res.pop("rows"), res.pop("old_logprobs")) for res in results if "rows" in res]
        old = None
        if reused:
            old = torch.zeros_like(batch["rollout_logprobs"])
            covered = torch.zeros(old.shape[0], dtype=torch.bool)
            for rows, logprobs in reused:
                old[rows], covered[rows] = logprobs, True
            if not covered.all():
                raise AssertionError(f"the learners returned old logprobs for {int(covered.sum())} of the "
                                     f"batch's {old.shape[0]} rows")
        return merge_learner_stats(results, a.epochs_per_step * a.mini_batches_per_step), old

    # --------------------------------------------------------------------------- checkpoints
    def save_checkpoint(self, step: int) -> Path:
        partial = self.run.partial_checkpoint(step)
        self.workers.learners.call_all("save_checkpoint", str(partial), what=f"saving the step {step} checkpoint")
        state = {"step": step, "sampler": self.sampler.state(), "python_random": repr(random.getstate())}
        return self.run.commit_checkpoint(step, state, self.cfg.run.keep_checkpoints)

    def _restore(self) -> None:
        found = self.run.latest_checkpoint()
        if found is None:
            raise FileNotFoundError(f"--resume: no complete checkpoint under {self.run.checkpoints}")
        path, state = found
        self.workers.learners.call_all("load_checkpoint", str(path), what=f"loading checkpoint {path}")
        self.sampler.restore(state["sampler"])
        self.start_step = state["step"] + 1
        self.run.truncate_metrics(state["step"])
        # vLLM still holds the starting weights: bring it to the checkpoint's.
        self.workers.sync_weights(self.run.root / "adapters", version=self.start_step)
        log.info("resumed from %s at step %d", path, self.start_step)

    def _actor_lost(self, step: int, err: Exception) -> ActorFailure:
        """The error that ends a run whose actor died: which actor, on which node, and where
        to resume from (a checkpoint being written when it happened stays uncommitted)."""
        where = "; ".join(self.workers.dead()) or "an actor failed"
        latest = self.run.latest_checkpoint()
        resume = (f"last complete checkpoint: {latest[0]} (after step {latest[1]['step']}); continue with "
                  f"`rl-safety grpo --config {self.source} --resume`" if latest else "no complete checkpoint yet")
        return ActorFailure(f"step {step}: {where}. {resume}.\nCause: {err}")


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
