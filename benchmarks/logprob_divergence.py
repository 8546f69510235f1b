"""Where vLLM's and the learner's logprobs of the same sampled tokens part, per learner layout.

    python benchmarks/logprob_divergence.py [--size longtail] [--budget 4096]

One rollout batch of `benchmarks/grpo_step.py`'s workload (`--size`), sampled by the limit's
in-process vLLM engine (our engine settings, fp32, CPU), then the learner's logprobs of those
tokens (`rl_safety.learner.logprobs.sequence_logprobs`, fp32, eval mode) in each layout: padded
(micro-batches of the workload's micro_batch_size, no token budget), length buckets and
concatenated (`--budget` tokens), and once more padded in fp64 as the reference for both sides.
Prints, over the response tokens, the mean and max |difference| of each pair and the mean by
response position, and the logits' size (fp32 rounds a logit of magnitude m to about
m x 6e-8): whether packing or long sequences cause a difference, or both sides' fp32 rounding.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.grpo_step import SIZES, build_workload_model, limit_engine, ours_config  # noqa: E402

POSITION_BANDS = ((0, 64), (64, 128), (128, 256), (256, 1 << 30))


def fp64_logprobs(model, input_ids, attention_mask, temperature: float, rows: int):
    """[B, L-1] logprobs of the next tokens from an fp64 model, a plain fp64 log_softmax (the
    learner's chunked logprobs work in fp32), `rows` padded rows at a time."""
    import torch

    out = []
    for s in range(0, input_ids.shape[0], rows):
        ids, mask = input_ids[s:s + rows], attention_mask[s:s + rows]
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1]
        out.append(torch.log_softmax(logits / temperature, dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1))
    return torch.cat(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="longtail")
    parser.add_argument("--budget", type=int, default=4096, help="learner.max_tokens_per_micro_batch")
    parser.add_argument("--output-dir", help="default: a new temporary directory")
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM

    from rl_safety.learner.logprobs import sequence_logprobs
    from rl_safety.orchestration.actor_group import sample_seed
    from rl_safety.rollout.batch import Sample, build_batch

    w, out = SIZES[args.size], Path(args.output_dir or tempfile.mkdtemp(prefix="logprob_divergence_"))
    out.mkdir(parents=True, exist_ok=True)
    model_dir = build_workload_model(out, w)
    prompts_file = out / "prompts.jsonl"
    prompts_file.write_text("".join(json.dumps({"prompt": f"Write letters {i}"}) + "\n" for i in range(w.prompts)))
    spec = {"workload": asdict(w), "out": str(out), "ours_set": [],
            "ours_config": ours_config(w, model_dir, prompts_file, out, steps=1)}
    set_threads = torch.set_num_threads  # vLLM's CPU worker makes it a no-op (see grpo_step.run_limit)
    cfg, prompts, engine = limit_engine(spec)
    set_threads(1)
    batch_prompts = prompts[: w.prompts]
    seeds = [sample_seed(cfg.run.seed, 0, 0, p.index) for p in batch_prompts]
    groups = engine.generate([p.token_ids for p in batch_prompts], seeds, w.group, cfg.rollout)
    samples = [Sample(p, c, g) for g, (p, group) in enumerate(zip(batch_prompts, groups)) for c in group]
    batch = build_batch(samples, pad_id=0)
    set_threads(2)

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids, mask = batch["input_ids"], batch["attention_mask"]
    learner = {}
    with torch.no_grad():
        for layout, budget in (("padded", None), ("length_buckets", args.budget), ("concatenated", args.budget)):
            learner[layout] = sequence_logprobs(model, ids, mask, cfg.rollout.temperature, w.micro_batch, "cpu",
                                                layout=layout, max_tokens_per_micro_batch=budget).double()
        logits = model(input_ids=ids[:8], attention_mask=mask[:8], use_cache=False).logits
        logit_size = float(logits[mask[:8].bool()].abs().mean())
        learner["fp64 padded"] = fp64_logprobs(model.double(), ids, mask, cfg.rollout.temperature, w.micro_batch)
    vllm = batch["rollout_logprobs"].double()
    response = batch["response_mask"].bool()
    lengths = response.sum(1)
    position = response.cumsum(1) - 1  # response token index
    print(f"\n{args.size}: {len(samples)} sequences, response tokens median {int(lengths.median())}, max "
          f"{int(lengths.max())}, {int(lengths.sum())} in all; mean |logit| {logit_size:.1f} (fp32 spacing there "
          f"{torch.finfo(torch.float32).eps * logit_size:.1e})")
    header = f"{'pair':<34}{'mean':>10}{'max':>10}" + "".join(f"{f'pos {lo}-{min(hi, 9999) - 1}':>14}"
                                                           for lo, hi in POSITION_BANDS)
    print(header)
    print("-" * len(header))
    pairs = [("vLLM", layout) for layout in learner] + [("fp64 padded", layout) for layout in
                                                        ("padded", "length_buckets", "concatenated")]
    pairs += [("padded", "length_buckets"), ("padded", "concatenated")]
    for a, b in pairs:
        x = vllm if a == "vLLM" else learner[a]
        diff = (x - learner[b]).abs()
        bands = []
        for lo, hi in POSITION_BANDS:
            band = response & (position >= lo) & (position < hi)
            bands.append(f"{float(diff[band].mean()):>14.2e}" if band.any() else f"{'-':>14}")
        print(f"{f'{a} vs {b}':<34}{float(diff[response].mean()):>10.2e}{float(diff[response].max()):>10.2e}"
              + "".join(bands))


if __name__ == "__main__":
    main()
