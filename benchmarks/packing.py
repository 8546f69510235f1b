"""Padded vs token-budget (concatenated, length-bucket) learner passes on a long-tail batch.

    python benchmarks/packing.py                     # 64 sequences, ~29M-parameter Qwen2, fp32 CPU
    python benchmarks/packing.py --sequences 8 --layers 1 --hidden 64 --max-response 64   # smoke size
    python benchmarks/packing.py --layouts padded,"length buckets"                         # some layouts

The workload: prompts of 16-64 tokens, responses drawn from a lognormal (median
`--median-response`, sigma `--sigma`) clipped to [16, `--max-response`] tokens: a few long
reasoning traces among many short ones. Token ids are random (the cost does not depend on them).
The model is a randomly initialised Qwen2 built in memory (no tokenizer needed).

Four layouts of the same batch, each run through the learner's own functions
(`rl_safety.learner.packing.forward_logprobs` per micro-batch, as the learner's training and
logprob passes run it, and `rl_safety.algorithms.losses.grpo_loss`):
- `padded to batch max`: micro-batches of `--micro-batch-size` sequences, every one padded to the
  longest sequence of the whole batch (the learner's layout before packing);
- `padded`: the same micro-batches, each trimmed to its own longest sequence (the padded path
  today, `learner.max_tokens_per_micro_batch: null`);
- `concatenated`: sequences packed first-fit decreasing into one row of at most `--budget`
  tokens each (default: the longest possible sequence, 64 + max_response), padding removed;
- `length buckets`: length-sorted sequences within 10% of their micro-batch's longest, padded rows
  trimmed to it, at most `--budget` padded tokens a micro-batch (`learner.packing_layout`'s
  choice for sdpa / eager attention, which this CPU model uses).

For each: the training pass (forward, GRPO loss with KL, backward, over the whole batch) and the
no-grad logprob pass; the real-token fraction (real tokens / tokens the model computed); wall
time; each layout's time over the length buckets'; and the peak resident-memory growth of the
pass, measured in a fresh process per layout and pass (`ru_maxrss` after the pass minus the RSS
before it: the allocations the pass made beyond what was already resident).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rl_safety.algorithms import losses  # noqa: E402
from rl_safety.config.grpo import AlgorithmSection  # noqa: E402
from rl_safety.learner import packing  # noqa: E402

LAYOUTS = ("padded to batch max", "padded", "concatenated", "length buckets")
LEARNER_LAYOUT = {"padded to batch max": "padded", "padded": "padded", "concatenated": "concatenated",
                  "length buckets": "length_buckets"}
PROMPT_TOKENS = (16, 64)


def build_model(args) -> torch.nn.Module:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.hidden * 11 // 4,
                         num_hidden_layers=args.layers, num_attention_heads=args.hidden // 64,
                         num_key_value_heads=args.hidden // 64, max_position_embeddings=4096,
                         tie_word_embeddings=True)
    config._attn_implementation = "sdpa"
    return Qwen2ForCausalLM(config).float()


def long_tail_batch(args) -> dict:
    """A right-padded GRPO batch as `rollout.batch.build_batch` makes it, with made-up advantages
    and old / reference logprobs."""
    rng = np.random.default_rng(args.seed)
    prompts = rng.integers(PROMPT_TOKENS[0], PROMPT_TOKENS[1] + 1, args.sequences)
    responses = np.clip(np.round(rng.lognormal(np.log(args.median_response), args.sigma, args.sequences)),
                        16, args.max_response).astype(int)
    lengths = prompts + responses
    b, width = args.sequences, int(lengths.max())
    gen = torch.Generator().manual_seed(args.seed)
    input_ids = torch.randint(1, args.vocab, (b, width), generator=gen)
    attention_mask = torch.zeros(b, width, dtype=torch.long)
    response_mask = torch.zeros(b, width - 1)
    for i, (p, n) in enumerate(zip(prompts, lengths)):
        attention_mask[i, :n] = 1
        response_mask[i, p - 1 : n - 1] = 1
    input_ids *= attention_mask
    shifted = (b, width - 1)
    tokens, sequences = losses.loss_counts(response_mask)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "response_mask": response_mask,
            "advantages": torch.randn(shifted, generator=gen) * response_mask,
            "old_logprobs": -torch.rand(shifted, generator=gen) * 5,
            "ref_logprobs": -torch.rand(shifted, generator=gen) * 5,
            "global_tokens": tokens, "global_sequences": sequences, "lengths": lengths, "responses": responses}


def micro_batches(batch: dict, layout: str, args) -> list[dict]:
    plan = packing.micro_batches(batch["attention_mask"], LEARNER_LAYOUT[layout], args.micro_batch_size, args.budget)
    tensors = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}
    scalars = {"global_tokens": batch["global_tokens"], "global_sequences": batch["global_sequences"]}
    if layout == "padded to batch max":
        return [{**{k: v[rows] for k, v in tensors.items()}, **scalars} for rows in plan]
    return [{**packing.select_rows(tensors, rows), **scalars} for rows in plan]


def computed_tokens(parts: list[dict], layout: str) -> int:
    return sum(packing.computed_tokens(p["attention_mask"], LEARNER_LAYOUT[layout]) for p in parts)


def train_pass(model, parts: list[dict], packed: bool, cfg) -> None:
    model.zero_grad()
    for part in parts:
        logprobs, entropy = packing.forward_logprobs(model, part["input_ids"], part["attention_mask"], 1.0,
                                                     packed, with_entropy=True)
        loss, _ = losses.grpo_loss(logprobs, part, cfg, norm_constant=1024.0)
        loss.backward()


@torch.no_grad()
def logprob_pass(model, parts: list[dict], packed: bool) -> None:
    """As `sequence_logprobs` runs each micro-batch (its own split would trim the batch-max rows)."""
    for part in parts:
        packing.forward_logprobs(model, part["input_ids"], part["attention_mask"], 1.0, packed)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def measure(args, layout: str, which: str, out) -> None:
    """In a fresh process: (seconds, peak RSS growth in bytes) of one pass."""
    torch.set_num_threads(args.threads) if args.threads else None
    model = build_model(args).train() if which == "train" else build_model(args).eval()
    parts = micro_batches(long_tail_batch(args), layout, args)
    packed = layout == "concatenated"
    with torch.no_grad():  # the first forward's one-time costs stay out of the timing
        packing.forward_logprobs(model, parts[0]["input_ids"][:1, :2], parts[0]["attention_mask"][:1, :2], 1.0, packed)
    before = rss_bytes()
    started = time.perf_counter()
    if which == "train":
        train_pass(model, parts, packed, AlgorithmSection(kl_coef=0.05))
    else:
        logprob_pass(model, parts, packed)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    out.put((seconds, max(0, peak - before)))


def run_isolated(args, layout: str, which: str) -> tuple[float, int]:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    proc = ctx.Process(target=measure, args=(args, layout, which, out))
    proc.start()
    result = out.get()
    proc.join()
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sequences", type=int, default=64)
    parser.add_argument("--median-response", type=float, default=100)
    parser.add_argument("--sigma", type=float, default=1.0)
    parser.add_argument("--max-response", type=int, default=1024)
    parser.add_argument("--micro-batch-size", type=int, default=4)
    parser.add_argument("--budget", type=int, default=None,
                        help="token-budget micro-batch tokens (default: the longest possible sequence)")
    parser.add_argument("--layouts", default=",".join(LAYOUTS), help=f"comma-separated, of {', '.join(LAYOUTS)}")
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.budget = args.budget or PROMPT_TOKENS[1] + args.max_response
    layouts = args.layouts.split(",")
    if set(layouts) - set(LAYOUTS):
        parser.error(f"--layouts: unknown {sorted(set(layouts) - set(LAYOUTS))}; choose from {list(LAYOUTS)}")

    batch = long_tail_batch(args)
    params = sum(p.numel() for p in build_model(args).parameters())
    real = int(batch["attention_mask"].sum())
    print(f"model: Qwen2, {params / 1e6:.1f}M parameters (hidden {args.hidden}, {args.layers} layers, vocab "
          f"{args.vocab}), fp32 on CPU ({torch.get_num_threads() if not args.threads else args.threads} threads)")
    print(f"batch: {args.sequences} sequences, {real} real tokens; response tokens: median "
          f"{int(np.median(batch['responses']))}, mean {batch['responses'].mean():.0f}, max "
          f"{batch['responses'].max()} (lognormal, median {args.median_response:g}, sigma {args.sigma:g}, clipped "
          f"to [16, {args.max_response}]); prompts {PROMPT_TOKENS[0]}-{PROMPT_TOKENS[1]} tokens")
    print(f"padded: {args.micro_batch_size} sequences per micro-batch; concatenated, length buckets: at most "
          f"{args.budget} tokens per micro-batch\n")
    rows = {}
    for layout in layouts:
        parts = micro_batches(batch, layout, args)
        computed = computed_tokens(parts, layout)
        rows[layout] = {"micro": len(parts), "fraction": real / computed, "computed": computed,
                        **{which: run_isolated(args, layout, which) for which in ("train", "logprobs")}}
    header = (f"{'layout':<20} {'micro-batches':>13} {'tokens computed':>15} {'real fraction':>13} "
              f"{'train s':>8} {'logprobs s':>10} {'train peak MB':>13} {'logprobs peak MB':>16}")
    print(header)
    print("-" * len(header))
    for layout, r in rows.items():
        print(f"{layout:<20} {r['micro']:>13} {r['computed']:>15} {r['fraction']:>13.1%} {r['train'][0]:>8.1f} "
              f"{r['logprobs'][0]:>10.1f} {r['train'][1] / 2**20:>13.0f} {r['logprobs'][1] / 2**20:>16.0f}")
    if "length buckets" in rows:
        buckets = rows["length buckets"]
        print()
        for layout in [layout for layout in rows if layout != "length buckets"]:
            r = rows[layout]
            print(f"{layout} / length buckets time: train {r['train'][0] / buckets['train'][0]:.2f}x, logprobs "
                  f"{r['logprobs'][0] / buckets['logprobs'][0]:.2f}x")


if __name__ == "__main__":
    main()
