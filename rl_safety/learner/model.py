"""The policy model of every trainer: built (dtype, LoRA, gradient checkpointing), wrapped in
DeepSpeed (ZeRO 0-3, optional CPU offload), stepped on a warmup + constant / cosine schedule,
checkpointed, and exported as a Hugging Face checkpoint (LoRA merged, ZeRO-3 shards gathered one
layer at a time). The GRPO learner and the SFT rank are each a `PolicyModel` plus their loss.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from rl_safety.config.grpo import LearnerSection, ModelSection


def init_distributed(rank: int, world_size: int, master_addr: str, master_port: int, use_gpu: bool) -> None:
    """Join the ranks' process group (nccl on GPU, gloo on CPU) at an address Ray gave, without
    any run-time compile.

    On CPU, DeepSpeed 0.19's TorchBackend JIT-builds its shared-memory op (`deepspeed_shm_comm`,
    csrc/cpu/comm/shm*.cpp) through torch's cpp_extension on first use: a compile of about a
    minute under a file lock in the torch-extensions cache (~/.cache/torch_extensions). The op
    serves only `inference_all_reduce` (DeepSpeed's tensor-parallel inference); training's
    collectives go through gloo. A start killed during that build leaves the lock behind, and
    every later learner on the machine waits on it forever. Marked incompatible, the op is
    skipped and nothing is built."""
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    os.environ.update(RANK=str(rank), LOCAL_RANK="0", WORLD_SIZE=str(world_size),
                      MASTER_ADDR=master_addr, MASTER_PORT=str(master_port))
    shm = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if shm is not None:
        deepspeed.ops.__compatible_ops__[shm.NAME] = False  # DeepSpeed's own switch: build_shm_op checks it
    deepspeed.init_distributed(dist_backend="nccl" if use_gpu else "gloo")
    if not use_gpu:
        # Ray pins actors to OMP_NUM_THREADS=1; on CPU the ranks of a node should share its cores
        # instead (rollout engines idle while the learners train).
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))


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


def to_device(batch: Mapping[str, Any], device: torch.device | str) -> dict[str, Any]:
    """`batch` with every tensor on `device`, other values as they are: the one place where data
    the driver built (on its CPU, shipped through Ray) moves to the device of the module it
    enters. DeepSpeed's and Hugging Face's `forward` leave inputs where they are, so a CPU batch
    would meet GPU weights."""
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def load_model(model: ModelSection, learner: LearnerSection, seed: int) -> torch.nn.Module:
    """The Hugging Face model in `model.dtype`, with gradient checkpointing and a LoRA adapter
    (seeded: every rank draws the same initial adapter) as the learner section asks."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    module = AutoModelForCausalLM.from_pretrained(model.path, dtype=getattr(torch, model.dtype),
                                                  trust_remote_code=model.trust_remote_code)
    if learner.gradient_checkpointing:
        module.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        module.config.use_cache = False
    if learner.lora is not None:
        from peft import LoraConfig, get_peft_model

        if learner.gradient_checkpointing:
            module.enable_input_require_grads()
        module = get_peft_model(module, LoraConfig(
            r=learner.lora.rank, lora_alpha=learner.lora.alpha, lora_dropout=learner.lora.dropout,
            target_modules=learner.lora.target_modules, task_type="CAUSAL_LM",
        ))
    return module


def disable_dropout(module: torch.nn.Module) -> int:
    """Turn every dropout of `module` off while it stays in train mode (TRL's `disable_dropout`):
    `nn.Dropout` layers (LoRA's among them) get p = 0 and attention modules a 0
    `attention_dropout` (Hugging Face attention reads the float, not a layer). Not `eval()`:
    Hugging Face layers checkpoint activations only in train mode. Returns how many were set."""
    changed = 0
    for sub in module.modules():
        if isinstance(sub, torch.nn.Dropout) and sub.p:
            sub.p, changed = 0.0, changed + 1
        if isinstance(getattr(sub, "attention_dropout", None), float) and sub.attention_dropout:
            sub.attention_dropout, changed = 0.0, changed + 1
    return changed


def frozen_reference(model: ModelSection, learner: LearnerSection, device: torch.device | str) -> torch.nn.Module:
    """The starting policy, frozen, on this learner rank: the KL reference of full fine-tuning
    (with LoRA the adapter-disabled policy is the reference). Under ZeRO-3 it is partitioned
    over the ranks like the policy (a DeepSpeed engine without optimizer, as OpenRLHF's
    `get_eval_ds_config`), so each forward is a collective every rank joins; at stages 0-2 each
    rank holds a plain replica, as OpenRLHF and verl do."""
    from transformers import AutoModelForCausalLM

    module = AutoModelForCausalLM.from_pretrained(model.path, dtype=getattr(torch, model.dtype),
                                                  trust_remote_code=model.trust_remote_code)
    module.requires_grad_(False)
    module.eval()
    if learner.zero_stage != 3:
        return module.to(device)
    import deepspeed

    engine, *_ = deepspeed.initialize(model=module, config=deepspeed_config(learner, bf16=model.dtype == "bfloat16"))
    engine.eval()
    return engine


def deepspeed_config(learner: LearnerSection, *, bf16: bool, accumulation: int | None = None,
                     world_size: int | None = None) -> dict[str, Any]:
    """The DeepSpeed config of a trained engine (`accumulation` micro-steps per optimizer step over
    `world_size` ranks) or, with `accumulation` None, of a frozen one (the ZeRO-3 reference): no
    optimizer, so no batch arithmetic, clipping or optimizer offload."""
    zero: dict[str, Any] = {"stage": learner.zero_stage}
    if learner.offload and learner.zero_stage == 3:
        zero["offload_param"] = {"device": "cpu", "pin_memory": False}
    config = {"train_micro_batch_size_per_gpu": learner.micro_batch_size, "zero_optimization": zero,
              "bf16": {"enabled": bf16}, "steps_per_print": 10**9, "wall_clock_breakdown": False}
    if accumulation is None:
        return config
    if learner.offload and learner.zero_stage > 0:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": False}
    return config | {"gradient_accumulation_steps": accumulation,
                     "train_batch_size": learner.micro_batch_size * accumulation * world_size,
                     "gradient_clipping": learner.max_grad_norm}


def lr_factor(step: int, learner: LearnerSection, total_steps: int) -> float:
    """Learning-rate multiplier at optimizer step `step`: linear warmup (`warmup_steps`, or
    `warmup_ratio` of `total_steps`), then constant or a cosine decay to 0 at `total_steps`."""
    warmup = learner.warmup_for(total_steps)
    if step < warmup:
        return (step + 1) / warmup
    if learner.lr_schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total_steps - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


class PolicyModel:
    """One DeepSpeed data-parallel rank of the trained policy. Every rank must receive the same
    sequence of calls (the collectives line up)."""

    def __init__(self, model: ModelSection, learner: LearnerSection, *, rank: int, world_size: int,
                 master_addr: str, master_port: int, use_gpu: bool, seed: int, accumulation: int,
                 total_steps: int) -> None:
        import deepspeed

        init_distributed(rank, world_size, master_addr, master_port, use_gpu)
        self.model_cfg, self.learner_cfg = model, learner
        self.rank, self.world_size = rank, world_size
        self.dtype = getattr(torch, model.dtype)
        self.lora = learner.lora
        module = load_model(model, learner, seed)
        optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=learner.learning_rate,
                                      betas=learner.adam_betas, weight_decay=learner.weight_decay)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, learner, total_steps))
        self.engine, *_ = deepspeed.initialize(
            model=module, optimizer=optimizer, lr_scheduler=schedule,
            config=deepspeed_config(learner, accumulation=accumulation, world_size=world_size,
                                    bf16=model.dtype == "bfloat16"),
        )
        self._stage0_grad_norm = float("nan")

    @property
    def module(self) -> torch.nn.Module:
        return self.engine.module

    @property
    def device(self) -> torch.device:
        """Where the model computes (DeepSpeed's device for this rank: cuda:0 of the GPU Ray
        gave the actor, or cpu): every batch is moved here (`to_device`) before its forward."""
        return torch.device(self.engine.device)

    # ------------------------------------------------------------------------------- update
    def backward_step(self, loss: torch.Tensor, boundary: bool | None = None) -> None:
        """Backward and (at an accumulation boundary) optimizer step for a loss that is already
        this rank's share of the whole optimizer step's mean: DeepSpeed's averaging over ranks
        and accumulation steps is undone. `boundary`: whether this micro-batch ends the
        optimizer step, for a caller whose micro-batch count varies (packing); None: every
        `accumulation`-th call, DeepSpeed's own count."""
        if boundary is not None:
            self.engine.set_gradient_accumulation_boundary(boundary)
        self.engine.backward(loss * self.world_size, scale_wrt_gas=False)
        if self.engine.is_gradient_accumulation_boundary() and self.learner_cfg.zero_stage == 0:
            # DeepSpeed reports the global grad norm only from its ZeRO / bf16 optimizers; at
            # stage 0 the (already all-reduced) gradients are here to measure before the step.
            grads = [p.grad for p in self.module.parameters() if p.grad is not None]
            self._stage0_grad_norm = float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])))
        self.engine.step()

    def grad_norm(self) -> float:
        """Global gradient norm of the last optimizer step (before clipping)."""
        norm = self.engine.get_global_grad_norm()
        return float(norm if norm is not None else self._stage0_grad_norm)

    def learning_rate(self) -> float:
        return float(self.engine.get_lr()[0])

    @property
    def optimizer_steps(self) -> int:
        """Optimizer steps taken so far (DeepSpeed counts them at accumulation boundaries)."""
        return self.engine.global_steps

    # ---------------------------------------------------------------------------- checkpoints
    def save_checkpoint(self, directory: str, tag: str = "deepspeed") -> None:
        """This rank's part of a DeepSpeed checkpoint (model, optimizer, schedule)."""
        self.engine.save_checkpoint(directory, tag=tag)

    def load_checkpoint(self, directory: str, tag: str = "deepspeed") -> None:
        path, _ = self.engine.load_checkpoint(directory, tag=tag)
        if path is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint {tag!r} under {directory}")

    def export_hf(self, directory: str) -> None:
        """Hugging Face checkpoint of the policy (LoRA merged) and its tokenizer, written by rank
        0 into `directory` at once (a temporary directory renamed). Every rank walks the layers
        (under ZeRO-3 each gather is a collective); only rank 0 keeps a host copy, so the
        export takes one model's worth of host memory, not one per rank."""
        state: dict[str, torch.Tensor] = {}
        for names, tensors in self.weights().iter_groups(one_by_one=True):
            if self.rank == 0:
                state.update((name, tensor.cpu()) for name, tensor in zip(names, tensors))
        if self.rank != 0:
            return
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer  # noqa: I001

        m = self.model_cfg
        config = AutoConfig.from_pretrained(m.path, trust_remote_code=m.trust_remote_code)
        model = AutoModelForCausalLM.from_config(config, dtype=self.dtype)
        missing, unexpected = model.load_state_dict(state, strict=False)
        tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
        if set(missing) - tied or unexpected:
            raise RuntimeError(f"export: missing {sorted(set(missing) - tied)}, unexpected {sorted(unexpected)}")
        target = Path(directory)
        tmp = target.with_name(target.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(m.path, trust_remote_code=m.trust_remote_code).save_pretrained(tmp)
        tmp.rename(target)

    def weights(self) -> PolicyWeights:
        return PolicyWeights(self)


class PolicyWeights:
    """The policy's weights in Hugging Face names, one decoder layer at a time: what the weight
    sync sends to vLLM and what the export writes.

    Under ZeRO-3 each layer is gathered with `GatheredParameters` (a collective on every rank)
    and released before the next, so no rank ever holds the full model. LoRA adapters are merged
    on the fly (W + scale * B @ A); adapter tensors themselves are not sent."""

    def __init__(self, policy: PolicyModel) -> None:
        self.policy = policy
        module = policy.module
        self.peft = policy.lora is not None
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

        return [ParamMeta(n, self.policy.dtype, tuple(getattr(p, "ds_shape", p.shape)))
                for n, p in self.params.items()]

    def groups(self) -> list[list[str]]:
        """The weight sync's unit: vLLM's `layerwise_groups`, the receiving side's contract."""
        from vllm.distributed.weight_transfer.base import layerwise_groups

        return layerwise_groups(list(self.params))

    def held_names(self):
        return None

    def iter_groups(self, one_by_one: bool = False) -> Iterator[tuple[list[str], list[torch.Tensor]]]:
        """(names, tensors) per layer group (`groups`), or with `one_by_one` per parameter: what
        the export reads, which needs no wire grouping and so no vLLM (the GPU check runs it
        where vLLM is not installed)."""
        import deepspeed

        zero3 = self.policy.learner_cfg.zero_stage == 3
        for names in ([[n] for n in self.params] if one_by_one else self.groups()):
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
                    tensors.append(weight.to(self.policy.dtype).clone())
            yield names, tensors

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        for names, tensors in self.iter_groups():
            yield from zip(names, tensors)
