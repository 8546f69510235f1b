"""GPU check: the learner's path on one device, against plain PyTorch / transformers references.

    python benchmarks/gpu_check.py --device cuda    # a lent GPU machine (not yet run on one)
    python benchmarks/gpu_check.py --device cpu     # CI runs this (tests/benchmarks/test_gpu_check.py)

What a GPU machine without vLLM and Ray can run: torch, transformers, peft and DeepSpeed (its
pure-Python wheel and small dependencies can be carried there). Every batch is built on the CPU, as
the GRPO driver builds it, and handed to the learner, which must move it to its device
(`rl_safety.learner.model.to_device`); every result comes back to the CPU. World size 1 (NCCL on
CUDA, gloo on CPU). The checks, each against an independent computation:

- learner logprobs (fp32, bf16) vs a plain transformers forward with its own log-softmax;
- one GRPO update under ZeRO-2 and ZeRO-3 vs the same update in plain PyTorch (clipped policy
  gradient, token mean, gradient clipping, AdamW): the gradient norm and the weight change;
- the Hugging Face export after that update (ZeRO-3: gathered) reloaded by transformers: its
  logprobs vs the learner's;
- LoRA: one update, then the export (adapter merged) reloaded: logprobs vs the learner's with the
  adapter active, and the update must have moved the policy off its base;
- one SFT step: its loss vs a plain transformers token-mean NLL, and its export reloads.

Prints one table row per check and exits 1 if any check fails or raises.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TEMPERATURE = 0.7
LEARNING_RATE = 1e-3
# bounds: max |difference| of per-token logprobs (nats); relative difference of a norm
BOUNDS = {"float32": 1e-4, "bfloat16": 5e-2}
UPDATE_BOUND = 1e-2  # ||learner weight change - reference change|| / ||reference change|| (Adam's first step)
GRAD_NORM_BOUND = 1e-4
SFT_LOSS_BOUND = 1e-5


@dataclass
class Row:
    check: str
    measured: float | str
    bound: str
    ok: bool


@dataclass
class Setup:
    device: str
    model: Path
    work: Path
    port: int
    input_ids: torch.Tensor  # [B, L], right-padded, built on the CPU
    attention_mask: torch.Tensor

    @property
    def use_gpu(self) -> bool:
        return self.device == "cuda"


# ------------------------------------------------------------------------------ references
def plain_model(path: Path, dtype: str, device: str) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), dtype=getattr(torch, dtype)).to(device)


def plain_token_logprobs(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                         temperature: float) -> torch.Tensor:
    """Shifted [B, L-1] logprobs of each next token: log_softmax(logits / T) at the token."""
    device = next(model.parameters()).device
    logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits
    logp = torch.log_softmax(logits[:, :-1].float() / temperature, dim=-1)
    return logp.gather(-1, input_ids[:, 1:].to(device).unsqueeze(-1)).squeeze(-1)


def max_masked_diff(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    return float(((a.float().cpu() - b.float().cpu()).abs() * mask[:, 1:]).max())


def reference_grpo_update(setup: Setup, old: torch.Tensor, advantages: torch.Tensor, response_mask: torch.Tensor,
                          clip_low: float, clip_high: float, max_grad_norm: float
                          ) -> tuple[dict[str, torch.Tensor], float]:
    """One GRPO optimizer step written out in plain PyTorch: per-token ratio against the old
    logprobs, clipped surrogate, mean over all response tokens, gradient clipping, AdamW.
    Returns (weight change per parameter name, gradient norm before clipping)."""
    model = plain_model(setup.model, "float32", setup.device)
    params = dict(model.named_parameters())
    before = {n: p.detach().clone() for n, p in params.items()}
    optimizer = torch.optim.AdamW(params.values(), lr=LEARNING_RATE, weight_decay=0.0)
    logp = plain_token_logprobs(model, setup.input_ids, setup.attention_mask, TEMPERATURE)
    mask = response_mask.to(logp.device)
    ratio = torch.exp(logp - old.to(logp.device))
    adv = advantages.to(logp.device)[:, None]
    surrogate = torch.minimum(ratio * adv, torch.clamp(ratio, 1 - clip_low, 1 + clip_high) * adv)
    loss = -(surrogate * mask).sum() / mask.sum()
    loss.backward()
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params.values(), max_grad_norm))
    optimizer.step()
    return {n: (p.detach() - before[n]).cpu() for n, p in params.items()}, grad_norm


# ------------------------------------------------------------------------------- learners
def grpo_config(setup: Setup, dtype: str = "float32", zero_stage: int = 2, lora: bool = False):
    import yaml

    from rl_safety.config import GRPOConfig, load_config

    raw = {"model": {"path": str(setup.model), "dtype": dtype},
           "data": {"train": str(setup.work / "unused.jsonl")},
           "rewards": [{"name": "unused"}],
           "algorithm": {"prompts_per_step": 2, "group_size": 2},
           "rollout": {"temperature": TEMPERATURE},
           "learner": {"micro_batch_size": 2, "zero_stage": zero_stage, "learning_rate": LEARNING_RATE,
                       "weight_decay": 0.0, "max_grad_norm": 1.0,
                       **({"lora": {"rank": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}} if lora else {})}}
    path = setup.work / f"grpo_{dtype}_{zero_stage}_{lora}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_config(GRPOConfig, path)


def start_learner(setup: Setup, **config):
    from rl_safety.learner.deepspeed_learner import Learner

    return Learner(grpo_config(setup, **config), rank=0, world_size=1, master_addr="127.0.0.1",
                   master_port=setup.port, use_gpu=setup.use_gpu)


def learner_weights(learner) -> dict[str, torch.Tensor]:
    """The learner's weights in Hugging Face names, on the CPU (gathered under ZeRO-3)."""
    return {n: t.float().cpu() for names, tensors in learner.policy.weights().iter_groups(one_by_one=True)
            for n, t in zip(names, tensors)}


def grpo_batch(setup: Setup, learner) -> tuple[dict, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A mini-batch as the driver builds it (CPU tensors): old logprobs from the learner itself,
    response = everything after the first 4 tokens, advantages of both signs."""
    old = learner.logprobs(setup.input_ids, setup.attention_mask)
    response = setup.attention_mask[:, 1:].float().clone()
    response[:, :3] = 0
    advantages = torch.tensor([1.0, -0.5, 0.75, -1.25])
    batch = {"input_ids": setup.input_ids, "attention_mask": setup.attention_mask, "response_mask": response,
             "advantages": advantages[:, None].expand_as(response), "old_logprobs": old,  # per token
             "global_tokens": float(response.sum()),
             "global_sequences": float(len(advantages))}
    return batch, old, advantages, response


def export_matches(setup: Setup, learner, name: str, dtype: str = "float32") -> tuple[float, torch.Tensor]:
    """Export the learner's policy, reload it with transformers: max logprob difference."""
    target = setup.work / f"export_{name}"
    learner.export_hf(str(target))
    reloaded = plain_model(target, dtype, setup.device).eval()
    with torch.no_grad():
        theirs = plain_token_logprobs(reloaded, setup.input_ids, setup.attention_mask, TEMPERATURE)
    ours = learner.logprobs(setup.input_ids, setup.attention_mask)
    return max_masked_diff(ours, theirs, setup.attention_mask), ours


# ---------------------------------------------------------------------------------- checks
def check_logprobs(setup: Setup, dtype: str) -> list[Row]:
    learner = start_learner(setup, dtype=dtype)
    ours = learner.logprobs(setup.input_ids, setup.attention_mask)
    with torch.no_grad():
        theirs = plain_token_logprobs(plain_model(setup.model, dtype, setup.device).eval(), setup.input_ids,
                                      setup.attention_mask, TEMPERATURE)
    diff = max_masked_diff(ours, theirs, setup.attention_mask)
    return [Row(f"logprobs {dtype}: learner vs transformers (max |diff|)", diff, f"<= {BOUNDS[dtype]:g}",
                diff <= BOUNDS[dtype]),
            Row(f"logprobs {dtype}: result back on the CPU", str(ours.device), "cpu", ours.device.type == "cpu")]


def check_grpo_update(setup: Setup, zero_stage: int) -> list[Row]:
    learner = start_learner(setup, zero_stage=zero_stage)
    a = learner.cfg.algorithm
    before = learner_weights(learner)
    batch, old, advantages, response = grpo_batch(setup, learner)
    stats = learner.train([batch])
    after = learner_weights(learner)
    reference, reference_norm = reference_grpo_update(setup, old, advantages, response, a.clip_low, a.clip_high,
                                                      learner.cfg.learner.max_grad_norm)
    ours = {n: after[n] - before[n] for n in reference}
    change = math.sqrt(sum(float((ours[n] - reference[n]).pow(2).sum()) for n in reference))
    size = math.sqrt(sum(float(reference[n].pow(2).sum()) for n in reference))
    norm_diff = abs(stats["grad_norm"] - reference_norm) / reference_norm
    export_diff, _ = export_matches(setup, learner, f"zero{zero_stage}")
    tag = f"GRPO update ZeRO-{zero_stage}"
    return [Row(f"{tag}: grad norm vs plain PyTorch (rel)", norm_diff, f"<= {GRAD_NORM_BOUND:g}",
                norm_diff <= GRAD_NORM_BOUND),
            Row(f"{tag}: weight change vs plain PyTorch (rel)", change / size, f"<= {UPDATE_BOUND:g}",
                size > 0 and change / size <= UPDATE_BOUND),
            Row(f"{tag}: HF export reloaded, logprobs (max |diff|)", export_diff, f"<= {BOUNDS['float32']:g}",
                export_diff <= BOUNDS["float32"])]


def check_lora(setup: Setup) -> list[Row]:
    learner = start_learner(setup, lora=True)
    batch, *_ = grpo_batch(setup, learner)
    learner.train([batch])
    export_diff, adapted = export_matches(setup, learner, "lora")
    base = learner.logprobs(setup.input_ids, setup.attention_mask, reference=True)
    moved = max_masked_diff(adapted, base, setup.attention_mask)
    return [Row("LoRA: the update moved the policy off its base (max |diff|)", moved, "> 1e-3", moved > 1e-3),
            Row("LoRA: merged HF export reloaded, logprobs (max |diff|)", export_diff, f"<= {BOUNDS['float32']:g}",
                export_diff <= BOUNDS["float32"])]


def check_sft(setup: Setup) -> list[Row]:
    import yaml

    from rl_safety.config import SFTConfig, load_config
    from rl_safety.trainers.sft import IGNORE, SFTRank

    raw = {"model": {"path": str(setup.model), "dtype": "float32"}, "data": {"train": str(setup.work / "unused.jsonl")},
           "learner": {"micro_batch_size": 2, "learning_rate": LEARNING_RATE},
           "training": {"max_steps": 1, "shuffle": False}, "run": {"output_dir": str(setup.work), "name": "sft"}}
    path = setup.work / "sft.yaml"
    path.write_text(yaml.safe_dump(raw))
    cfg = load_config(SFTConfig, path)
    rows = []
    for ids, mask in zip(setup.input_ids.tolist(), setup.attention_mask.tolist()):
        ids = ids[: sum(mask)]
        rows.append([(ids, [IGNORE] * 3 + ids[3:])])  # the first tokens are the "prompt"
    rows = rows[:2]  # one micro-batch: one optimizer step
    rank = SFTRank(cfg, rank=0, world_size=1, master_addr="127.0.0.1", master_port=setup.port,
                   use_gpu=setup.use_gpu, total_steps=1)
    run_dir = setup.work / "sft_run"
    run_dir.mkdir()
    stats = rank.train(rows, str(run_dir))
    # reference: token-mean NLL of the labelled tokens at the starting weights (the step's forward)
    model = plain_model(setup.model, "float32", setup.device).eval()
    nll, count = 0.0, 0
    with torch.no_grad():
        for row in rows:
            ids, labels = row[0]
            logits = model(input_ids=torch.tensor([ids], device=setup.device)).logits[0, :-1].double()
            logp = torch.log_softmax(logits, -1).cpu()
            for t in range(1, len(ids)):
                if labels[t] != IGNORE:
                    nll -= float(logp[t - 1, ids[t]])
                    count += 1
    loss_diff = abs(stats["loss"] - nll / count) / (nll / count)
    exported = plain_model(run_dir / "final", "float32", "cpu")
    start = plain_model(setup.model, "float32", "cpu")
    changed = max(float((a - b).abs().max())
                  for a, b in zip(exported.state_dict().values(), start.state_dict().values()))
    return [Row("SFT step: loss vs plain token-mean NLL (rel)", loss_diff, f"<= {SFT_LOSS_BOUND:g}",
                loss_diff <= SFT_LOSS_BOUND),
            Row("SFT step: export reloaded, weights moved (max |change|)", changed, "> 0", changed > 0)]


# ------------------------------------------------------------------------------------ main
def build_setup(device: str, work: Path, hidden: int, layers: int, heads: int) -> Setup:
    from rl_safety.models.tiny import build_tiny_model
    from rl_safety.orchestration.cluster import free_ports

    model = build_tiny_model(work / "model", hidden_size=hidden, num_layers=layers, num_heads=heads,
                             intermediate_size=2 * hidden, tie_word_embeddings=True)
    generator = torch.Generator().manual_seed(0)
    lengths = [24, 17, 24, 9]
    input_ids = torch.randint(10, 200, (len(lengths), max(lengths)), generator=generator)
    attention_mask = torch.zeros_like(input_ids)
    for row, n in enumerate(lengths):
        attention_mask[row, :n] = 1
        input_ids[row, n:] = 0  # right padding, as the rollout batch
    return Setup(device, model, work, free_ports(1)[0], input_ids, attention_mask)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], required=True)
    parser.add_argument("--hidden", type=int, help="model width (default: 64 on cpu, 1024 on cuda)")
    parser.add_argument("--layers", type=int, help="decoder layers (default: 2 on cpu, 8 on cuda)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: --device cuda but torch sees no CUDA device", file=sys.stderr)
        return 2
    try:
        import deepspeed  # noqa: F401
    except ImportError as err:
        print(f"gpu_check: DeepSpeed is needed ({err}); carry its wheel and dependencies", file=sys.stderr)
        return 2
    hidden = args.hidden or (64 if args.device == "cpu" else 1024)
    layers = args.layers or (2 if args.device == "cpu" else 8)
    checks: list[tuple[str, Callable[[Setup], list[Row]]]] = [
        ("logprobs float32", lambda s: check_logprobs(s, "float32")),
        ("logprobs bfloat16", lambda s: check_logprobs(s, "bfloat16")),
        ("GRPO update ZeRO-2", lambda s: check_grpo_update(s, 2)),
        ("GRPO update ZeRO-3", lambda s: check_grpo_update(s, 3)),
        ("LoRA", check_lora),
        ("SFT step", check_sft),
    ]
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        setup = build_setup(args.device, Path(tmp), hidden, layers, heads=max(1, hidden // 64))
        device_name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
        print(f"gpu_check on {device_name}: tiny Qwen2 hidden {hidden}, {layers} layers; torch {torch.__version__}")
        for name, check in checks:
            started = time.time()
            try:
                rows += check(setup)
            except Exception as err:  # one broken check must not hide the others' results
                traceback.print_exc()
                rows.append(Row(f"{name}: raised", f"{type(err).__name__}: {str(err)[:80]}", "no error", False))
            print(f"  {name}: {time.time() - started:.1f} s", flush=True)
    width = max(len(r.check) for r in rows)
    print(f"\n{'check':<{width}}  {'measured':>12}  {'bound':>10}  ok")
    for r in rows:
        measured = f"{r.measured:.3g}" if isinstance(r.measured, float) else r.measured
        print(f"{r.check:<{width}}  {measured:>12}  {r.bound:>10}  {'yes' if r.ok else 'NO'}")
    failed = [r for r in rows if not r.ok]
    print(f"\n{len(rows) - len(failed)} of {len(rows)} checks passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
