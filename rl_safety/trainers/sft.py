"""`rl-safety sft`: supervised fine-tuning on safety traces, DeepSpeed ZeRO (0-3) + optional PEFT
LoRA, loss on the assistant turn only. The output `final/` is a Hugging Face checkpoint that
`rl-safety grpo` takes as `model.path` (the warm start).

Why our own loop and not TRL's SFTTrainer: (1) TRL renders conversational data with the chat
template, and the R1-distill and Qwen3 templates strip the thought from assistant turns, so the
model would be trained to answer without reasoning; our examples are rendered by
`rl_safety.data.chat` (prompt by template, thought and answer appended verbatim). (2) TRL's
DeepSpeed path goes through accelerate and needs one launcher process per rank, a second way of
starting distributed jobs next to the Ray placement GRPO already uses on CPU (gloo) and GPU
(nccl), locally and on a cluster. Here the ranks are Ray actors placed like GRPO's learners, and
the whole recipe -- data, loop, checkpoint -- reads top to bottom in this file; the model itself
(build, DeepSpeed, schedule, checkpoints, export) is GRPO's learner's, `rl_safety.learner.model`.

Loss: token mean over the assistant tokens of the whole optimizer step (all ranks, all
micro-batches), the same normalisation as GRPO's `token_mean`.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
import uuid
from pathlib import Path

import numpy as np
import torch

from rl_safety.config.sft import SFTConfig
from rl_safety.data import chat
from rl_safety.learner.model import PolicyModel, to_device
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


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of the next-token NLL over labelled positions, their count), both 0-dim tensors on
    the logits' device (reading a value would wait for the device). logits [B, L, V] and labels
    [B, L] unshifted: position t's logits predict labels[t + 1]."""
    targets = labels[:, 1:]
    logits = logits[:, :-1].float()
    nll = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE, reduction="sum"
    )
    return nll, (targets != IGNORE).sum()


Rows = list[list[tuple[list[int], list[int]]]]  # training rows, each one or more (ids, labels) examples


def step_plan(rows: Rows, cfg: SFTConfig) -> tuple[int, int]:
    """(optimizer steps per epoch, total steps): each step takes micro x accumulation x ranks rows;
    a partial last step is padded, not dropped."""
    t = cfg.training
    if not rows:
        raise ValueError(f"no training rows: every example is longer than data.max_tokens={cfg.data.max_tokens}")
    per_step = cfg.learner.micro_batch_size * t.gradient_accumulation_steps * cfg.learner.num_ranks
    steps_per_epoch = -(-len(rows) // per_step)
    return steps_per_epoch, steps_per_epoch * t.epochs if t.max_steps is None else min(t.max_steps, steps_per_epoch * t.epochs)


# ------------------------------------------------------------------------------------ a rank
class SFTRank:
    """One DeepSpeed data-parallel rank (`PolicyModel`: ZeRO 0-3, LoRA) and the training loop.
    Every rank runs `train` with the same arguments (the collectives must line up); rank 0 writes
    metrics and the export."""

    def __init__(self, cfg: SFTConfig, rank: int, world_size: int, master_addr: str, master_port: int,
                 use_gpu: bool, total_steps: int) -> None:
        from transformers import AutoTokenizer

        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        self.tokenizer = AutoTokenizer.from_pretrained(cfg.model.path, trust_remote_code=cfg.model.trust_remote_code)
        self.policy = PolicyModel(cfg.model, cfg.learner, rank=rank, world_size=world_size, master_addr=master_addr,
                                  master_port=master_port, use_gpu=use_gpu, seed=cfg.run.seed,
                                  accumulation=cfg.training.gradient_accumulation_steps, total_steps=total_steps)

    def train(self, rows: Rows, run_dir: str, resume_from: str | None = None) -> dict[str, float]:
        """Optimizer steps over `rows` in a seeded order per epoch; each step takes
        micro x accumulation x ranks rows, rank r the r-th block; the epoch's last step takes
        what is left, padded with loss-free rows (`step_micro_batches`). With `resume_from` (a committed
        checkpoint directory) the engine, optimizer and schedule are restored and training goes
        on at the step after it. Returns the last step's stats and `rank_input_tokens`, the
        tokens this rank trained on in this segment of the run."""
        import torch.distributed as dist

        from rl_safety.runs import RunDirectory

        cfg, t = self.cfg, self.cfg.training
        micro, accum = cfg.learner.micro_batch_size, t.gradient_accumulation_steps
        steps_per_epoch, total = step_plan(rows, cfg)
        run = RunDirectory(run_dir)
        start = 0
        if resume_from is not None:
            self.policy.load_checkpoint(resume_from)
            start = json.loads((Path(resume_from) / "driver_state.json").read_text())["step"]
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        stats: dict[str, float] = {}
        input_tokens = 0
        self.policy.engine.train()
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
            # collectives run on the process group's device (NCCL takes no CPU tensors)
            count = torch.tensor([float(sum(int((b["labels"][:, 1:] != IGNORE).sum()) for b in batches))],
                                 device=self.policy.device)
            dist.all_reduce(count)  # tokens with loss in the whole optimizer step
            count.clamp_(min=1.0)  # a step of examples with no loss tokens has no gradient, not a NaN
            loss_sum = sum(self._micro_step(batch, count.item()) for batch in batches)
            total_nll = torch.tensor([loss_sum], device=self.policy.device)
            dist.all_reduce(total_nll)
            step = done + 1
            stats = {"step": step, "epoch": epoch, "loss": total_nll.item() / count.item(),
                     "tokens": count.item(), "grad_norm": self.policy.grad_norm(),
                     "learning_rate": self.policy.learning_rate(), "step_time_s": time.time() - started}
            if self.rank == 0 and (step % cfg.run.log_every == 0 or step == total):
                run.log_metrics(step, {k: v for k, v in stats.items() if k != "step"})
            if cfg.run.save_every and step % cfg.run.save_every == 0:
                self._checkpoint(run, step)
        self.policy.export_hf(str(Path(run_dir) / "final"))
        return {**stats, "rank_input_tokens": input_tokens}

    def _micro_step(self, batch: dict[str, torch.Tensor], step_tokens: float) -> float:
        """Forward and backward of one micro-batch, its loss this rank's share of the token mean
        over the `step_tokens` loss tokens of the whole optimizer step; returns its summed NLL."""
        batch = to_device(batch, self.policy.device)
        logits = self.policy.engine(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False).logits
        nll, _ = token_nll(logits, batch["labels"])
        self.policy.backward_step(nll / step_tokens)
        return nll.item()

    def _checkpoint(self, run, step: int) -> None:
        """Every rank writes its DeepSpeed shard into the partial directory; rank 0 commits it
        once all have (the barrier), so a crash leaves no checkpoint that looks complete."""
        import torch.distributed as dist

        if self.rank == 0:
            run.checkpoints.mkdir(parents=True, exist_ok=True)
            run.partial_checkpoint(step)
        dist.barrier()
        self.policy.save_checkpoint(str(run.partial_path(step)))
        dist.barrier()
        if self.rank == 0:
            run.commit_checkpoint(step, {"step": step}, keep=self.cfg.run.keep_checkpoints)
        dist.barrier()


# ---------------------------------------------------------------------------------- driver
def run_sft(cfg: SFTConfig, source: str = "<config>", resume: bool = False, allow_config_change: list[str] = ()) -> Path:
    """Load and encode the data, start the ranks as a Ray actor group on `cluster.address` (or a
    local Ray), train, return `final/`. With `resume`, training goes on from the run's last
    intact checkpoint."""
    import ray
    from transformers import AutoTokenizer

    from rl_safety import preflight
    from rl_safety.config.loader import dump_config
    from rl_safety.learner.model import build_lock_hint
    from rl_safety.data.safety import load_safety_dataset
    from rl_safety.orchestration import cluster
    from rl_safety.orchestration.actor_group import ActorGroup
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
    rows = pack(encoded, cfg.data.max_tokens) if cfg.training.packing else [[e] for e in encoded]
    _, total_steps = step_plan(rows, cfg)

    c, n = cfg.cluster, cfg.learner.num_ranks
    cluster.connect(c, n)
    use_gpu = cluster.uses_gpu(c, source)
    bundles = cluster.device_bundles(n, use_gpu, c.learner_resources)
    cluster.check_capacity(bundles, use_gpu, source, f"learner.num_ranks={n}")
    group = cluster.placement_group(bundles, c.placement_strategy, c.start_timeout_s, "SFT ranks")
    ledger.set_devices("gpu" if use_gpu else "cpu", n)
    ranks, completed = None, False
    try:
        address, port, _ = cluster.node_address_in(group, 0, c.start_timeout_s)
        ranks = ActorGroup("rank", SFTRank, n, what="SFT ranks (DeepSpeed)", tag=uuid.uuid4().hex[:6],
                           options=lambda r: cluster.in_bundle(group, r, 1.0, use_gpu),
                           kwargs=dict(cfg=cfg, world_size=n, master_addr=address, master_port=port, use_gpu=use_gpu,
                                       total_steps=total_steps),
                           rank_kwargs=lambda r: {"rank": r},
                           start_timeout_s=c.start_timeout_s, call_timeout_s=c.call_timeout_s)
        ranks.wait_started(hint=build_lock_hint)
        with ledger.phase("train"):
            results = ranks.call_all("train", ray.put(rows), str(run_dir), resume_from and str(resume_from),
                                     what="training (SFT ranks)")
        ledger.add_tokens(trained=sum(r["rank_input_tokens"] for r in results))
        completed = True
        log.info("sft done: %s", results[0])
    finally:
        ledger.finish(ranks.by_rank if ranks else None, complete=completed)
        if ranks is not None:
            ranks.kill()
        cluster.remove(group)
    return run_dir / "final"

