"""One DeepSpeed data-parallel rank of the policy: logprobs, the GRPO update, checkpoints,
export, and the sending side of the weight sync. A plain class; `LearnerActor` wraps it for Ray.

All token-level tensors are shifted [b, L-1] (see `rl_safety.learner.logprobs`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from rl_safety.algorithms import grpo_math
from rl_safety.config.grpo import GRPOConfig
from rl_safety.learner.logprobs import sequence_logprobs


def init_distributed(use_gpu: bool) -> None:
    """`deepspeed.init_distributed` (nccl on GPU, gloo on CPU) without any run-time compile.

    On CPU, DeepSpeed 0.19's TorchBackend JIT-builds its shared-memory op (`deepspeed_shm_comm`,
    csrc/cpu/comm/shm*.cpp) through torch's cpp_extension on first use: a compile of about a
    minute under a file lock in the torch-extensions cache (~/.cache/torch_extensions). The op
    serves only `inference_all_reduce` (DeepSpeed's tensor-parallel inference); training's
    collectives go through gloo. A start killed during that build leaves the lock behind, and
    every later learner on the machine waits on it forever. Marked incompatible, the op is
    skipped and nothing is built."""
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    shm = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if shm is not None:
        deepspeed.ops.__compatible_ops__[shm.NAME] = False  # DeepSpeed's own switch: build_shm_op checks it
    deepspeed.init_distributed(dist_backend="nccl" if use_gpu else "gloo")


def build_lock_hint() -> str:
    """For the message of a learner start that timed out: the build locks in the torch-extensions
    cache of this node (a JIT build killed midway leaves one, and every later build of that op
    waits on it forever), or where to look on the learners' nodes."""
    from torch.utils.cpp_extension import get_default_build_root

    root = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root())
    locks = sorted(str(p) for p in root.rglob("lock")) if root.is_dir() else []
    if locks:
        return (f"; stale build lock(s) on this node: {', '.join(locks[:3])} (if no compile is running, a "
                "killed build left them and every later build waits: remove them)")
    return (f"; if a learner hangs in a DeepSpeed/torch extension build, look for a stale `lock` file under "
            f"{root} (or $TORCH_EXTENSIONS_DIR) on its node")


def deepspeed_config(cfg: GRPOConfig, bf16: bool) -> dict[str, Any]:
    lr = cfg.learner
    per_rank = cfg.algorithm.prompts_per_step * cfg.algorithm.group_size
    per_rank //= cfg.algorithm.mini_batches_per_step * lr.num_ranks
    accumulation = per_rank // lr.micro_batch_size
    zero: dict[str, Any] = {"stage": lr.zero_stage}
    if lr.offload and lr.zero_stage > 0:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": False}
        if lr.zero_stage == 3:
            zero["offload_param"] = {"device": "cpu", "pin_memory": False}
    return {
        "train_micro_batch_size_per_gpu": lr.micro_batch_size,
        "gradient_accumulation_steps": accumulation,
        "train_batch_size": lr.micro_batch_size * accumulation * lr.num_ranks,
        "gradient_clipping": lr.max_grad_norm,
        "zero_optimization": zero,
        "bf16": {"enabled": bf16},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


class Learner:
    """A data-parallel rank. Every rank must receive the same sequence of calls (collectives)."""

    def __init__(self, cfg: GRPOConfig, rank: int, world_size: int, master_addr: str,
                 master_port: int, use_gpu: bool) -> None:
        import deepspeed
        from transformers import AutoModelForCausalLM

        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        os.environ.update(
            RANK=str(rank), LOCAL_RANK="0", WORLD_SIZE=str(world_size),
            MASTER_ADDR=master_addr, MASTER_PORT=str(master_port),
        )
        init_distributed(use_gpu)
        if not use_gpu:
            # Ray pins actors to OMP_NUM_THREADS=1; on CPU the learner ranks of a node should
            # share its cores instead (rollout engines idle while the learners train).
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
        torch.manual_seed(cfg.run.seed)
        self.dtype = getattr(torch, cfg.model.dtype)
        model = AutoModelForCausalLM.from_pretrained(
            cfg.model.path, dtype=torch.float32 if cfg.model.dtype == "float32" else self.dtype,
            trust_remote_code=cfg.model.trust_remote_code,
        )
        if cfg.learner.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.config.use_cache = False
        self.lora = cfg.learner.lora
        if self.lora is not None:
            from peft import LoraConfig, get_peft_model

            if cfg.learner.gradient_checkpointing:
                model.enable_input_require_grads()
            model = get_peft_model(model, LoraConfig(
                r=self.lora.rank, lora_alpha=self.lora.alpha, lora_dropout=self.lora.dropout,
                target_modules=self.lora.target_modules, task_type="CAUSAL_LM",
            ))
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(
            params, lr=cfg.learner.learning_rate, betas=cfg.learner.adam_betas,
            weight_decay=cfg.learner.weight_decay,
        )
        scheduler = _lr_schedule(optimizer, cfg)
        self.engine, *_ = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler,
            config=deepspeed_config(cfg, bf16=cfg.model.dtype == "bfloat16"),
        )
        self.weight_sender = None
        self._stage0_grad_norm = float("nan")

    # ----------------------------------------------------------------------------- logprobs
    @property
    def module(self) -> torch.nn.Module:
        return self.engine.module

    @torch.no_grad()
    def logprobs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 reference: bool = False) -> torch.Tensor:
        """Current-policy logprobs [b, L-1]; `reference=True` (LoRA only) disables the adapter,
        which gives the frozen base model: the reference policy at no extra memory."""
        self.engine.eval()
        if reference:
            with self.module.disable_adapter():
                return self._logprobs(input_ids, attention_mask)
        return self._logprobs(input_ids, attention_mask)

    def _logprobs(self, input_ids, attention_mask) -> torch.Tensor:
        return sequence_logprobs(
            self.engine, input_ids, attention_mask, self.cfg.rollout.temperature,
            self.cfg.learner.micro_batch_size,
        )[0]

    # ------------------------------------------------------------------------------- update
    def train(self, mini_batches: list[dict[str, Any]]) -> dict[str, float]:
        """One optimizer step per mini-batch (this rank's shard of it). Each mini-batch carries
        `global_tokens` / `global_sequences`: the counts over *all* ranks, so the loss this rank
        contributes is its share of the loss of the whole mini-batch (gradients then sum right
        across ranks and micro-batches)."""
        a = self.cfg.algorithm
        self.engine.train()
        sums: dict[str, float] = {}
        micro = self.cfg.learner.micro_batch_size
        for mb in mini_batches:
            for start in range(0, mb["input_ids"].shape[0], micro):
                part = {k: (v[start : start + micro] if isinstance(v, torch.Tensor) else v)
                        for k, v in mb.items()}
                stats = self._micro_step(part, a)
                for k, v in stats.items():
                    sums[k] = sums.get(k, 0.0) + v
        stats = {k: v for k, v in sums.items()}
        norm = self.engine.get_global_grad_norm()
        stats["grad_norm"] = float(norm if norm is not None else self._stage0_grad_norm)
        stats["learning_rate"] = float(self.engine.get_lr()[0])
        return stats

    def _micro_step(self, part: dict[str, Any], a) -> dict[str, float]:
        mask = part["response_mask"]
        logits = self.engine(
            input_ids=part["input_ids"], attention_mask=part["attention_mask"], use_cache=False
        ).logits[:, :-1].float()
        logits = logits / self.cfg.rollout.temperature
        logprobs = grpo_math.logprobs_from_logits(logits, part["input_ids"][:, 1:])
        per_token, clip_stats = grpo_math.policy_loss(
            logprobs, part["old_logprobs"], part["advantages"], mask,
            clip_low=a.clip_low, clip_high=a.clip_high,
            importance_weights=part.get("importance_weights"),
        )
        kl = None
        if part.get("ref_logprobs") is not None:
            kl = grpo_math.kl_penalty(logprobs, part["ref_logprobs"], a.kl_estimator)
            per_token = per_token + a.kl_coef * kl
        loss = grpo_math.aggregate_loss(
            per_token, mask, a.loss_aggregation,
            norm_constant=float(self.cfg.rollout.max_new_tokens),
            global_token_count=part["global_tokens"], global_seq_count=part["global_sequences"],
        )
        # DeepSpeed averages gradients over ranks; the loss above is already this rank's share
        # of the global mean, so undo the average (and skip the accumulation rescale).
        self.engine.backward(loss * self.world_size, scale_wrt_gas=False)
        if self.engine.is_gradient_accumulation_boundary() and self.cfg.learner.zero_stage == 0:
            # DeepSpeed reports the global grad norm only from its ZeRO / bf16 optimizers; at
            # stage 0 the (already all-reduced) gradients are here to measure before the step.
            grads = [p.grad for p in self.engine.module.parameters() if p.grad is not None]
            self._stage0_grad_norm = float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])))
        self.engine.step()
        with torch.no_grad():
            tokens = mask.sum()
            entropy = grpo_math.entropy_from_logits(logits.detach())
            stats = {
                "loss": float(loss),
                "token_count": float(tokens),
                "clip_tokens": float(clip_stats["clip_fraction"]) * float(tokens),
                "entropy_sum": float((entropy * mask).sum()),
            }
            if kl is not None:
                stats["kl_sum"] = float((kl * mask).sum())
        return stats

    # ---------------------------------------------------------------------------- weight sync
    def init_weight_sync(self, rollout_handles: list[Any], master_addr: str, master_port: int,
                         world_size: int, worker_rank_offsets: list[int], backend: str) -> None:
        """Join the learner -> vLLM transfer group (rank 0 sends, other ranks only gather)."""
        from vllm.distributed.weight_transfer import WeightTransferTrainerFactory

        from rl_safety.rollout.weight_transfer import GlooTrainerInitInfo, PerEngineClient, register

        register()
        if backend == "gloo":
            info = GlooTrainerInitInfo(master_address=master_addr, master_port=master_port,
                                       world_size=world_size, rank=self.rank)
        else:
            from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerInitInfo

            info = NCCLTrainerInitInfo(master_address=master_addr, master_port=master_port,
                                       world_size=world_size, rank=self.rank)
        self.weight_sender = WeightTransferTrainerFactory.trainer_init(
            info, client=PerEngineClient(rollout_handles, worker_rank_offsets),
            source=LearnerWeightSource(self),
        )

    def sync_weights(self) -> None:
        assert self.weight_sender is not None, "init_weight_sync first"
        self.weight_sender.send_weights()

    def save_adapter(self, directory: str) -> None:
        """LoRA sync as an adapter: rank 0 writes the adapter (replicated below ZeRO-3)."""
        if self.rank == 0:
            self.module.save_pretrained(directory)

    # ---------------------------------------------------------------------------- checkpoints
    def save_checkpoint(self, directory: str, tag: str) -> None:
        self.engine.save_checkpoint(directory, tag=tag)

    def load_checkpoint(self, directory: str, tag: str) -> None:
        path, _ = self.engine.load_checkpoint(directory, tag=tag)
        if path is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint {tag!r} under {directory}")

    def export_hf(self, directory: str) -> None:
        """Hugging Face checkpoint of the policy (LoRA merged), written by rank 0; a collective
        under ZeRO-3, so every rank calls it."""
        state = {name: tensor.cpu() for names, tensors in LearnerWeightSource(self).iter_groups()
                 for name, tensor in zip(names, tensors)}
        if self.rank != 0:
            return
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer  # noqa: I001

        config = AutoConfig.from_pretrained(self.cfg.model.path, trust_remote_code=self.cfg.model.trust_remote_code)
        model = AutoModelForCausalLM.from_config(config, dtype=self.dtype)
        missing, unexpected = model.load_state_dict(state, strict=False)
        tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
        if set(missing) - tied or unexpected:
            raise RuntimeError(f"export: missing {sorted(set(missing) - tied)}, unexpected {sorted(unexpected)}")
        model.save_pretrained(directory)
        AutoTokenizer.from_pretrained(self.cfg.model.path).save_pretrained(directory)


def _lr_schedule(optimizer: torch.optim.Optimizer, cfg: GRPOConfig):
    import math

    lr = cfg.learner
    total = cfg.run.total_steps * cfg.algorithm.epochs_per_step * cfg.algorithm.mini_batches_per_step
    warmup = lr.warmup_for(total)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if lr.lr_schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class LearnerWeightSource:
    """The policy's weights in Hugging Face names, one decoder layer at a time.

    Under ZeRO-3 each layer is gathered with `GatheredParameters` (a collective on every rank)
    and released before the next, so no rank ever holds the full model. LoRA adapters are merged
    on the fly (W + scale * B @ A); adapter tensors themselves are not sent."""

    def __init__(self, learner: Learner) -> None:
        self.learner = learner
        module = learner.module
        self.peft = learner.lora is not None
        self.base = module.get_base_model() if self.peft else module
        self.params: dict[str, torch.nn.Parameter] = {}
        for name, param in self.base.named_parameters():
            if "lora_" in name:
                continue
            self.params[name.replace(".base_layer", "")] = param
        self.lora_layers: dict[str, torch.nn.Module] = {}
        if self.peft:
            from peft.tuners.lora import LoraLayer

            for name, mod in self.base.named_modules():
                if isinstance(mod, LoraLayer):
                    self.lora_layers[f"{name}.weight"] = mod

    def metadata(self):
        from vllm.distributed.weight_transfer.base import ParamMeta

        return [ParamMeta(n, self.learner.dtype, tuple(getattr(p, "ds_shape", p.shape)))
                for n, p in self.params.items()]

    def groups(self) -> list[list[str]]:
        from vllm.distributed.weight_transfer.base import layerwise_groups

        return layerwise_groups(list(self.params))

    def held_names(self):
        return None

    def iter_groups(self) -> Iterator[tuple[list[str], list[torch.Tensor]]]:
        import deepspeed

        zero3 = self.learner.cfg.learner.zero_stage == 3
        for names in self.groups():
            to_gather = [self.params[n] for n in names]
            for n in names:
                if n in self.lora_layers:
                    to_gather += list(self.lora_layers[n].parameters())
            with deepspeed.zero.GatheredParameters(to_gather, enabled=zero3):
                tensors = []
                for n in names:
                    weight = self.params[n].data
                    if n in self.lora_layers:
                        layer = self.lora_layers[n]
                        weight = weight + layer.get_delta_weight(layer.active_adapter[0]).to(weight.dtype)
                    tensors.append(weight.to(self.learner.dtype).clone())
            yield names, tensors

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        for names, tensors in self.iter_groups():
            yield from zip(names, tensors)
