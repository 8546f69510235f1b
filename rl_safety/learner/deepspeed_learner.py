"""One DeepSpeed data-parallel rank of the GRPO policy: logprobs, the GRPO update, and the sending
side of the weight sync, on a `PolicyModel` (build, DeepSpeed, schedule, checkpoints, export).
A plain class; `rl_safety.orchestration.grpo_workers` runs the ranks as a Ray actor group.

All token-level tensors are shifted [b, L-1] (see `rl_safety.learner.logprobs`).
"""

from __future__ import annotations

from typing import Any

import torch

from rl_safety.algorithms import grpo_math, losses, registry
from rl_safety.config.grpo import GRPOConfig
from rl_safety.learner import packing
from rl_safety.learner.logprobs import sequence_logprobs
from rl_safety.learner.model import PolicyModel, disable_dropout, frozen_reference, to_device


class Learner:
    """A data-parallel rank. Every rank must receive the same sequence of calls (collectives)."""

    def __init__(self, cfg: GRPOConfig, rank: int, world_size: int, master_addr: str,
                 master_port: int, use_gpu: bool) -> None:
        a, lr = cfg.algorithm, cfg.learner
        per_rank = a.prompts_per_step * a.group_size // (a.mini_batches_per_step * lr.num_ranks)
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        self.policy = PolicyModel(
            cfg.model, lr, rank=rank, world_size=world_size, master_addr=master_addr, master_port=master_port,
            use_gpu=use_gpu, seed=cfg.run.seed, accumulation=per_rank // lr.micro_batch_size,
            total_steps=cfg.run.total_steps * a.epochs_per_step * a.mini_batches_per_step,
        )
        self.engine = self.policy.engine
        # the micro-batch layout for this model's attention (padded without a token budget)
        self.layout = packing.layout_for(lr.max_tokens_per_micro_batch, lr.packing_layout,
                                         self.policy.module.config._attn_implementation)
        if not lr.dropout:  # the update's forward is the policy that sampled (see GRPOLearnerSection.dropout)
            disable_dropout(self.policy.module)
        # KL without LoRA: the frozen start on every rank (partitioned under ZeRO-3); with LoRA the
        # adapter-disabled policy is the reference
        self.reference = (frozen_reference(cfg.model, lr, self.policy.device)
                          if a.kl_coef > 0 and lr.lora is None else None)
        registry.load_modules(a.modules)  # the user's policy losses / aggregations, in this process too
        self.weight_sender = None

    # ----------------------------------------------------------------------------- logprobs
    @torch.no_grad()
    def logprobs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 reference: bool = False) -> torch.Tensor:
        """Logprobs [b, L-1] of this rank's shard under the current policy, or with `reference`
        under the frozen start: this rank's replica (its partition, under ZeRO-3) of the
        reference, or with LoRA the policy with its adapter disabled, at no extra memory."""
        self.engine.eval()
        if reference and self.reference is not None:
            return self._logprobs(self.reference, input_ids, attention_mask)
        if reference:
            with self.policy.module.disable_adapter():
                return self._logprobs(self.engine, input_ids, attention_mask)
        return self._logprobs(self.engine, input_ids, attention_mask)

    def _logprobs(self, model, input_ids, attention_mask) -> torch.Tensor:
        lr = self.cfg.learner
        return sequence_logprobs(model, input_ids, attention_mask, self.cfg.rollout.temperature,
                                 lr.micro_batch_size, self.policy.device, self.layout,
                                 lr.max_tokens_per_micro_batch, common_count=lambda n: self._most_over_ranks([n])[0])

    def _most_over_ranks(self, counts: list[int]) -> list[int]:
        """The element-wise maximum of `counts` over the ranks: packed micro-batch counts differ
        between ranks, and every rank must run as many forwards (ZeRO-3 gathers the weights in
        each) and backwards (ZeRO-2/3 reduce gradients in them)."""
        if self.world_size == 1 or self.layout == "padded" or not counts:
            return counts  # padded micro-batches: the same count on every rank already
        import torch.distributed as dist

        most = torch.tensor(counts, device=self.policy.device)  # NCCL takes no CPU tensors
        dist.all_reduce(most, op=dist.ReduceOp.MAX)
        return most.tolist()

    # ------------------------------------------------------------------------------- update
    def train(self, mini_batches: list[dict[str, Any]]) -> dict[str, float]:
        """One optimizer step per mini-batch (this rank's shard of it). Each mini-batch carries
        `global_tokens` / `global_sequences`: the counts over *all* ranks, so the loss this rank
        contributes is its share of the loss of the whole mini-batch (gradients then sum right
        across ranks and micro-batches). A mini-batch without a token in the loss (all its
        responses filtered out, on every rank alike) is skipped: no gradient, and no optimizer
        step, which Adam's momentum would turn into an update without data.

        Mini-batches without `old_logprobs` are on-policy (`old_logprobs_from_update`): the
        update's forward gives them, and the result carries them, with the batch rows they
        belong to, for the driver's checks (`old_logprobs`, `rows`)."""
        a = self.cfg.algorithm
        self.engine.train()
        sums: dict[str, float] = {}
        lr = self.cfg.learner
        steps_before = self.policy.optimizer_steps
        reused: dict[str, list[torch.Tensor]] = {"old_logprobs": [], "rows": []}
        trained = [mb for mb in mini_batches if mb["global_tokens"] > 0]
        sums["empty_mini_batches"] = float(len(mini_batches) - len(trained))
        plans = [packing.micro_batches(mb["attention_mask"], self.layout, lr.micro_batch_size,
                                       lr.max_tokens_per_micro_batch) for mb in trained]
        counts = self._most_over_ranks([len(p) for p in plans])
        sums["micro_batches"] = float(sum(counts))  # forward/backward passes, the same on every rank
        sums["padding_micro_batches"] = float(sum(counts) - sum(len(p) for p in plans))  # this rank's zero-loss ones
        sums["real_tokens"] = sums["computed_tokens"] = 0.0  # of the micro-batches with rows (not the zero-loss ones)
        for mb, plan, count in zip(trained, plans, counts):
            plan = plan + [[]] * (count - len(plan))  # a zero-loss micro-batch where this rank has fewer
            for i, rows in enumerate(plan):
                part = to_device(packing.select_rows(mb, rows), self.policy.device)
                on_policy = "old_logprobs" not in part and bool(rows)  # a padding micro-batch has no rows
                stats = self._micro_step(part, a, last=i == len(plan) - 1)
                if rows:
                    sums["real_tokens"] += float(part["attention_mask"].sum())
                    sums["computed_tokens"] += packing.computed_tokens(part["attention_mask"], self.layout)
                for k, v in stats.items():
                    sums[k] = sums.get(k, 0.0) + v
                if on_policy:  # trimmed to the micro-batch's longest sequence: padded back to the batch's width
                    old = part["old_logprobs"].cpu()
                    reused["old_logprobs"].append(
                        torch.nn.functional.pad(old, (0, mb["rollout_logprobs"].shape[1] - old.shape[1])))
                    reused["rows"].append(part["rows"].cpu())
        optimizer_steps = float(self.policy.optimizer_steps - steps_before)
        if reused["rows"]:
            sums.update({k: torch.cat(v) for k, v in reused.items()})
        return {**sums, "optimizer_steps": optimizer_steps,
                "grad_norm": self.policy.grad_norm() if optimizer_steps else float("nan"),
                "learning_rate": self.policy.learning_rate()}

    def _micro_step(self, part: dict[str, Any], a, last: bool) -> dict[str, float]:
        """Forward, loss and backward of one micro-batch (in `self.layout`); `last` (of its
        mini-batch) takes the optimizer step, however many micro-batches packing made."""
        mask = part["response_mask"]
        logprobs, entropy = packing.forward_logprobs(
            self.engine, part["input_ids"], part["attention_mask"], self.cfg.rollout.temperature,
            packed=self.layout == "concatenated", with_entropy=True)
        if "old_logprobs" not in part:
            part.update(self._on_policy_inputs(logprobs.detach(), part, a))
        loss, stats = losses.grpo_loss(logprobs, part, a, norm_constant=float(self.cfg.rollout.max_new_tokens))
        self.policy.backward_step(loss, boundary=last)  # the loss is already this rank's share of the global mean
        stats["entropy_sum"] = (entropy * mask).sum()
        stats["loss"] = loss.detach()
        return {k: float(v) for k, v in stats.items()}

    @staticmethod
    def _on_policy_inputs(logprobs: torch.Tensor, part: dict[str, Any], a) -> dict[str, torch.Tensor]:
        """On-policy, the update's own forward is the old policy: old = logprobs.detach() (ratio
        exactly 1), and the importance weights for vLLM's numerics come from it as the driver
        would compute them from an old-logprob pass (sequence level holds: a micro-batch holds
        whole sequences)."""
        inputs = {"old_logprobs": logprobs}
        if a.importance_correction != "none":
            inputs["importance_weights"] = grpo_math.truncated_importance_weights(
                logprobs, part["rollout_logprobs"], part["response_mask"], cap=a.importance_cap,
                level=a.importance_level, mode=a.importance_correction)
        return inputs

    # ---------------------------------------------------------------------------- weight sync
    def init_weight_sync(self, rollout_handles: list[Any], master_addr: str, master_port: int,
                         world_size: int, worker_rank_offsets: list[int] | None, backend: str) -> None:
        """Set up the learner -> vLLM transfer `backend` (`cluster.weight_sync_transport`): rank 0
        sends, the other ranks join the gathers (and, for CUDA IPC, share their GPU's handles)."""
        from vllm.distributed.weight_transfer import WeightTransferTrainerFactory

        from rl_safety.rollout.weight_transfer import PerEngineClient, register, trainer_init_info

        register()
        info = trainer_init_info(backend, rank=self.rank, master_address=master_addr, master_port=master_port,
                                 world_size=world_size)
        self.weight_sender = WeightTransferTrainerFactory.trainer_init(
            info, client=PerEngineClient(rollout_handles, worker_rank_offsets),
            source=self.policy.weights(),
        )

    def sync_weights(self) -> None:
        assert self.weight_sender is not None, "init_weight_sync first"
        self.weight_sender.send_weights()

    def save_adapter(self, directory: str) -> None:
        """LoRA sync as an adapter: rank 0 writes the adapter (replicated below ZeRO-3)."""
        if self.rank == 0:
            self.policy.module.save_pretrained(directory)

    # ---------------------------------------------------------------------------- checkpoints
    def save_checkpoint(self, directory: str) -> None:
        self.policy.save_checkpoint(directory)

    def load_checkpoint(self, directory: str) -> None:
        self.policy.load_checkpoint(directory)

    def export_hf(self, directory: str) -> None:
        self.policy.export_hf(directory)
