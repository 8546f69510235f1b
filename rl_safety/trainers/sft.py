"""`rl-safety sft`: supervised fine-tuning on safety traces, DeepSpeed ZeRO + optional PEFT LoRA,
loss on the assistant turn only. The output `final/` is a Hugging Face checkpoint that
`rl-safety grpo` takes as `model.path` (the warm start).

Why our own loop and not TRL's SFTTrainer: (1) TRL renders conversational data with the chat
template, and the R1-distill and Qwen3 templates strip the thought from assistant turns, so the
model would be trained to answer without reasoning; our examples are rendered by
`rl_safety.data.chat` (prompt by template, thought and answer appended verbatim). (2) TRL's
DeepSpeed path goes through accelerate and needs one launcher process per rank, a second way of
starting distributed jobs next to the Ray placement GRPO already uses on CPU (gloo) and GPU
(nccl), locally and on a cluster. Here the ranks are Ray actors placed like GRPO's learners, and
the whole recipe -- data, loop, checkpoint -- reads top to bottom in this file.

Loss: token mean over the assistant tokens of the whole optimizer step (all ranks, all
micro-batches), the same normalisation as GRPO's `token_mean`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rl_safety.config.sft import SFTConfig
from rl_safety.data import chat
from rl_safety.ledger import CostLedger
from rl_safety.refine.generate import data_cost_path

log = logging.getLogger(__name__)

IGNORE = -100  # label of tokens that carry no loss


# ------------------------------------------------------------------------------------ data
def encode_examples(examples, tokenizer, *, family: str, system_prompt: str | None, max_tokens: int,
                    prompt_loss: bool) -> tuple[list[tuple[list[int], list[int]]], int]:
    """(input ids, labels) per example; labels are IGNORE on the prompt unless `prompt_loss`.
    Returns the encoded examples and the number dropped for exceeding `max_tokens` (a truncated
    example would lose its answer and its EOS, teaching the model not to stop)."""
    encoded, dropped = [], 0
    max_chars = max_tokens * chat.max_chars_per_token(tokenizer)  # longer ones are dropped untokenized
    for e in examples:
        if len(e.prompt) + len(e.reasoning) + len(e.answer) > max_chars:
            dropped += 1
            continue
        ids, segments = chat.tokenize_example(tokenizer, e.prompt, e.reasoning, e.answer,
                                              family=family, system_prompt=system_prompt)
        if len(ids) > max_tokens:
            dropped += 1
            continue
        labels = [t if (prompt_loss or s != chat.PROMPT) else IGNORE for t, s in zip(ids, segments)]
        encoded.append((ids, labels))
    return encoded, dropped


def pack(encoded: list[tuple[list[int], list[int]]], row_tokens: int) -> list[list[tuple[list[int], list[int]]]]:
    """Greedy packing in order: each row holds whole examples totalling <= row_tokens."""
    rows: list[list[tuple[list[int], list[int]]]] = [[]]
    used = 0
    for example in encoded:
        if used + len(example[0]) > row_tokens and rows[-1]:
            rows.append([])
            used = 0
        rows[-1].append(example)
        used += len(example[0])
    return rows


def step_micro_batches(order: np.ndarray, slot: int, micro: int, accum: int, world_size: int,
                       rank: int) -> list[list[int | None]]:
    """Row indices of `rank`'s `accum` micro-batches of `micro` rows at optimizer step `slot` of
    an epoch whose rows are drawn in `order`. The epoch's last step may hold fewer rows than a
    full step (micro x accum x ranks): its empty places are None (padding rows, no loss), so
    every row trains once per epoch -- 10 examples train 10 on 8 ranks, none is dropped."""
    per_step = micro * accum * world_size
    step: list[int | None] = [int(i) for i in order[slot * per_step:(slot + 1) * per_step]]
    step += [None] * (per_step - len(step))
    mine = step[rank * micro * accum:(rank + 1) * micro * accum]
    return [mine[m * micro:(m + 1) * micro] for m in range(accum)]


def collate(rows: list[list[tuple[list[int], list[int]]]], pad_id: int) -> dict[str, torch.Tensor]:
    """A micro-batch [B, L] from rows of one or more examples each. Packed rows get position ids
    that restart at every example and no attention mask: transformers then builds a
    block-diagonal causal mask, so packed examples never attend to each other (only with
    `use_cache=False`: a cache object turns that detection off). Unpacked rows are
    right-padded with an attention mask."""
    width = max(sum(len(ids) for ids, _ in row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        at = 0
        for ids, lab in row:
            n = len(ids)
            input_ids[r, at : at + n] = torch.tensor(ids)
            labels[r, at : at + n] = torch.tensor(lab)
            position_ids[r, at : at + n] = torch.arange(n)
            attention_mask[r, at : at + n] = 1
            at += n
    batch = {"input_ids": input_ids, "labels": labels}
    if any(len(row) > 1 for row in rows):
        batch["position_ids"] = position_ids
        # padding at the end of a packed row is a "sequence" of its own; its labels are IGNORE
        position_ids[attention_mask == 0] = torch.arange(width).expand_as(position_ids)[attention_mask == 0]
    else:
        batch["attention_mask"] = attention_mask
    return batch


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(sum of the next-token NLL over labelled positions, their count). logits [B, L, V] and
    labels [B, L] unshifted: position t's logits predict labels[t + 1]."""
    targets = labels[:, 1:]
    logits = logits[:, :-1].float()
    nll = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE, reduction="sum"
    )
    return nll, int((targets != IGNORE).sum())


# ------------------------------------------------------------------------------------ a rank
class SFTRank:
    """One DeepSpeed data-parallel rank: the whole training loop. Every rank runs `train` with
    the same arguments (the collectives must line up); rank 0 writes metrics and the export."""

    def __init__(self, cfg: SFTConfig, rank: int, world_size: int, master_addr: str, master_port: int,
                 use_gpu: bool) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from rl_safety.learner.deepspeed_learner import init_distributed

        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        os.environ.update(RANK=str(rank), LOCAL_RANK="0", WORLD_SIZE=str(world_size),
                          MASTER_ADDR=master_addr, MASTER_PORT=str(master_port))
        init_distributed(use_gpu)
        torch.manual_seed(cfg.run.seed)
        self.dtype = getattr(torch, cfg.model.dtype)
        self.tokenizer = AutoTokenizer.from_pretrained(cfg.model.path, trust_remote_code=cfg.model.trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(cfg.model.path, dtype=self.dtype,
                                                     trust_remote_code=cfg.model.trust_remote_code)
        lr = cfg.learner
        if lr.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.config.use_cache = False
        if lr.lora is not None:
            from peft import LoraConfig, get_peft_model

            if lr.gradient_checkpointing:
                model.enable_input_require_grads()
            model = get_peft_model(model, LoraConfig(
                r=lr.lora.rank, lora_alpha=lr.lora.alpha, lora_dropout=lr.lora.dropout,
                target_modules=lr.lora.target_modules, task_type="CAUSAL_LM"))
        self.model = model
        self.params = [p for p in model.parameters() if p.requires_grad]

    def _engine(self, total_steps: int):
        import deepspeed

        lr, t = self.cfg.learner, self.cfg.training
        optimizer = torch.optim.AdamW(self.params, lr=lr.learning_rate, betas=lr.adam_betas,
                                      weight_decay=lr.weight_decay)

        warmup = lr.warmup_for(total_steps)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            if lr.lr_schedule == "constant":
                return 1.0
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total_steps - warmup))))

        zero: dict[str, Any] = {"stage": lr.zero_stage}
        if lr.offload and lr.zero_stage > 0:
            zero["offload_optimizer"] = {"device": "cpu", "pin_memory": False}
        config = {
            "train_micro_batch_size_per_gpu": lr.micro_batch_size,
            "gradient_accumulation_steps": t.gradient_accumulation_steps,
            "train_batch_size": lr.micro_batch_size * t.gradient_accumulation_steps * self.world_size,
            "gradient_clipping": lr.max_grad_norm,
            "zero_optimization": zero,
            "bf16": {"enabled": self.cfg.model.dtype == "bfloat16"},
            "steps_per_print": 10**9,
        }
        engine, *_ = deepspeed.initialize(model=self.model, optimizer=optimizer, config=config,
                                          lr_scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, factor))
        return engine

    def train(self, encoded: list[tuple[list[int], list[int]]], run_dir: str,
              resume_from: str | None = None) -> dict[str, float]:
        """Optimizer steps over `encoded` in a seeded order per epoch; each step takes
        micro x accumulation x ranks rows, rank r the r-th block; the epoch's last step takes
        what is left, padded with loss-free rows (`step_micro_batches`). With `resume_from` (a committed
        checkpoint directory) the engine, optimizer and schedule are restored and training goes
        on at the step after it. Returns the last step's stats and `rank_input_tokens`, the
        tokens this rank trained on in this segment of the run."""
        import torch.distributed as dist

        from rl_safety.runs import RunDirectory

        cfg, t = self.cfg, self.cfg.training
        micro, accum = cfg.learner.micro_batch_size, t.gradient_accumulation_steps
        rows = pack(encoded, cfg.data.max_tokens) if t.packing else [[e] for e in encoded]
        per_step = micro * accum * self.world_size
        if not rows:
            raise ValueError(f"no training rows: every example is longer than data.max_tokens={cfg.data.max_tokens}")
        steps_per_epoch = -(-len(rows) // per_step)  # a partial last step is padded, not dropped
        total = steps_per_epoch * t.epochs if t.max_steps is None else min(t.max_steps, steps_per_epoch * t.epochs)
        engine = self._engine(total)
        run = RunDirectory(run_dir)
        start = 0
        if resume_from is not None:
            path, _ = engine.load_checkpoint(resume_from, tag="deepspeed")
            if path is None:
                raise FileNotFoundError(f"no DeepSpeed checkpoint under {resume_from}")
            start = json.loads((Path(resume_from) / "driver_state.json").read_text())["step"]
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        stats: dict[str, float] = {}
        input_tokens = 0
        engine.train()
        # One loop over global steps: step k is always (epoch k // steps_per_epoch, slot
        # k % steps_per_epoch), so a resume lands on the right batch even at an epoch boundary.
        for done in range(start, total):
            epoch, slot = divmod(done, steps_per_epoch)
            order = (np.random.default_rng([cfg.run.seed, epoch]).permutation(len(rows)) if t.shuffle
                     else np.arange(len(rows)))
            started = time.time()
            mine = step_micro_batches(order, slot, micro, accum, self.world_size, self.rank)
            padding_row = [([pad], [IGNORE])]  # one token, no loss: keeps the ranks' collectives in step
            batches = [collate([padding_row if i is None else rows[i] for i in m], pad) for m in mine]
            # the cost ledger's tokens trained: every real (non-padding) token of the step
            input_tokens += sum(len(ids) for m in mine for i in m if i is not None for ids, _ in rows[i])
            count = torch.tensor([float(sum(int((b["labels"][:, 1:] != IGNORE).sum()) for b in batches))])
            dist.all_reduce(count)  # tokens with loss in the whole optimizer step
            count.clamp_(min=1.0)  # a step of examples with no loss tokens has no gradient, not a NaN
            loss_sum = 0.0
            for batch in batches:
                logits = engine(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False).logits
                nll, _ = token_nll(logits, batch["labels"])
                loss = nll / count.item()
                # DeepSpeed averages gradients over ranks and accumulation steps; the loss is
                # already this rank's share of the step's token mean, so undo both.
                engine.backward(loss * self.world_size, scale_wrt_gas=False)
                engine.step()
                loss_sum += nll.item()
            total_nll = torch.tensor([loss_sum])
            dist.all_reduce(total_nll)
            step = done + 1
            stats = {"step": step, "epoch": epoch, "loss": total_nll.item() / count.item(),
                     "tokens": count.item(), "grad_norm": float(engine.get_global_grad_norm() or 0.0),
                     "learning_rate": float(engine.get_lr()[0]), "step_time_s": time.time() - started}
            if self.rank == 0 and (step % cfg.run.log_every == 0 or step == total):
                run.log_metrics(step, {k: v for k, v in stats.items() if k != "step"})
            if cfg.run.save_every and step % cfg.run.save_every == 0:
                self._checkpoint(engine, run, step)
        self._export(engine, Path(run_dir) / "final")
        return {**stats, "rank_input_tokens": input_tokens}

    def _checkpoint(self, engine, run, step: int) -> None:
        """Every rank writes its DeepSpeed shard into the partial directory; rank 0 commits it
        once all have (the barrier), so a crash leaves no checkpoint that looks complete."""
        import torch.distributed as dist

        if self.rank == 0:
            run.checkpoints.mkdir(parents=True, exist_ok=True)
            run.partial_checkpoint(step)
        dist.barrier()
        engine.save_checkpoint(str(run.partial_path(step)), tag="deepspeed")
        dist.barrier()
        if self.rank == 0:
            run.commit_checkpoint(step, {"step": step}, keep=self.cfg.run.keep_checkpoints)
        dist.barrier()

    def _export(self, engine, directory: Path) -> None:
        """Rank 0 writes a plain Hugging Face checkpoint (LoRA merged into the weights), the
        format `rl-safety grpo` loads as its starting policy. ZeRO <= 2 keeps whole parameters
        on every rank, so no gather is needed."""
        if self.rank != 0:
            return
        module = engine.module
        if self.cfg.learner.lora is not None:
            module = module.merge_and_unload()
        tmp = directory.with_name(directory.name + ".tmp")
        module.save_pretrained(str(tmp))
        self.tokenizer.save_pretrained(str(tmp))
        tmp.rename(directory)


# ---------------------------------------------------------------------------------- driver
def run_sft(cfg: SFTConfig, source: str = "<config>", resume: bool = False, allow_config_change: list[str] = ()) -> Path:
    """Load and encode the data, start the ranks as Ray actors, train, return `final/`. With
    `resume`, training goes on from the run's last intact checkpoint."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from transformers import AutoTokenizer

    from rl_safety import preflight
    from rl_safety.config.loader import dump_config
    from rl_safety.learner.deepspeed_learner import build_lock_hint
    from rl_safety.data.safety import load_safety_dataset
    from rl_safety.orchestration import cluster
    from rl_safety.runs import RunDirectory

    run_dir = Path(cfg.run.output_dir) / cfg.run.name
    run = RunDirectory(run_dir)
    resume_from = preflight.check_sft(cfg, source, resume, list(allow_config_change))
    if resume_from is not None:
        step = json.loads((resume_from / "driver_state.json").read_text())["step"]
        run.truncate_metrics(step)  # steps after the checkpoint are redone
        log.info("resuming from %s (after step %d)", resume_from, step)
    run_dir.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, run_dir / "config.yaml")
    ledger = CostLedger(run_dir, "sft", model_path=cfg.model.path, resume=resume)
    data_cost = data_cost_path(cfg.data.train)
    if data_cost.exists():  # DGR / ThinkSafe made this data: their generation is part of the method's cost
        shutil.copyfile(data_cost, run_dir / "cost_data.json")

    examples, report = load_safety_dataset(cfg.data.dataset, cfg.data.train, split=cfg.data.split,
                                           on_bad_row=cfg.data.on_bad_row, columns=cfg.data.columns,
                                           limit=cfg.data.limit)
    tokenizer = AutoTokenizer.from_pretrained(cfg.model.path, trust_remote_code=cfg.model.trust_remote_code)
    encoded, dropped = encode_examples(examples, tokenizer, family=cfg.model.family,
                                       system_prompt=cfg.model.system_prompt, max_tokens=cfg.data.max_tokens,
                                       prompt_loss=cfg.training.prompt_loss)
    log.info("sft data: %d examples (%d rows skipped as malformed, %d longer than data.max_tokens=%d); %s",
             len(encoded), len(report.bad), dropped, cfg.data.max_tokens, cfg.batch_plan())
    preflight.check_sft_rows(cfg, len(encoded), dropped)

    if not ray.is_initialized():
        if cfg.cluster.address:
            ray.init(address=cfg.cluster.address)
        else:  # "local": a fresh local Ray, never an unrelated cluster already running on the machine
            ray.init(address="local", include_dashboard=False,
                     num_cpus=cfg.cluster.num_cpus or max(os.cpu_count() or 1, cfg.learner.num_ranks))
    resources = ray.cluster_resources()
    use_gpu = resources.get("GPU", 0) > 0 if cfg.cluster.device == "auto" else cfg.cluster.device == "gpu"
    kind = "GPU" if use_gpu else "CPU"
    if cfg.learner.num_ranks > resources.get(kind, 0):
        raise cluster.ClusterError(f"{source}: learner.num_ranks={cfg.learner.num_ranks} but the Ray cluster has only "
                                   f"{int(resources.get(kind, 0))} {kind}(s)")
    bundle = {"CPU": 1, "GPU": 1} if use_gpu else {"CPU": 1}
    group = placement_group([dict(bundle)] * cfg.learner.num_ranks, strategy=cfg.cluster.placement_strategy)
    ray.get(group.ready(), timeout=600)
    ledger.set_devices(kind.lower(), cfg.learner.num_ranks)
    ranks, completed = [], False
    try:
        address, port, _ = cluster.node_address_in(group, 0)
        rank_cls = ray.remote(SFTRank)
        n = cfg.learner.num_ranks
        ranks = [rank_cls.options(**cluster.in_bundle(group, r, 1.0, use_gpu)).remote(cfg, r, n, address, port, use_gpu)
                 for r in range(n)]
        ray.get(cluster.wait_started({f"rank-{r}": h for r, h in enumerate(ranks)},
                                     f"starting the SFT ranks (DeepSpeed, model {cfg.model.path})",
                                     cfg.cluster.start_timeout_s, build_lock_hint))
        encoded_ref = ray.put(encoded)
        with ledger.phase("train"):
            results = ray.get([h.train.remote(encoded_ref, str(run_dir), resume_from and str(resume_from))
                               for h in ranks])
        ledger.add_tokens(trained=sum(r["rank_input_tokens"] for r in results))
        completed = True
        log.info("sft done: %s", results[0])
    finally:
        ledger.finish({f"rank-{r}": h for r, h in enumerate(ranks)}, complete=completed)
        for handle in ranks:
            ray.kill(handle)
        remove_placement_group(group)
    return run_dir / "final"


def main(argv: list[str]) -> int:
    from rl_safety.config.loader import config_from_command_line

    from rl_safety.preflight import add_resume_arguments

    cfg, args = config_from_command_line(
        SFTConfig, argv, "rl-safety sft", "SFT on safety traces (DeepSpeed, LoRA)",
        config_help="YAML config (see configs/sft_*.yaml)", add_arguments=add_resume_arguments)
    print(f"batch plan: {cfg.batch_plan()}")
    final = run_sft(cfg, source=args.config, resume=args.resume, allow_config_change=args.allow_config_change)
    print(f"done: checkpoint in {final} (use it as model.path of rl-safety grpo)")
    return 0
