"""GRPO step time: rl-safety (Ray + vLLM + DeepSpeed) against TRL's GRPOTrainer, same workload.

    python benchmarks/grpo_step.py [--hidden 512 --layers 8 --prompts 8 --group 8 --new-tokens 128 --steps 4]

Both train the same tiny Qwen2 (built here) on the same prompts and reward, one learner process,
fp32, no KL, one optimizer step per rollout batch. The first step of each is warm-up and excluded.
Prints the per-phase breakdown of ours, the per-step time of both, tokens/s and the ratio.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def char_fraction(prompts, completions, **kwargs):
    return [c.count("a") / max(1, len(c)) for c in completions]


def ours(args, model: Path, prompts: Path, out: Path) -> dict:
    from rl_safety.config import GRPOConfig, load_config
    from rl_safety.trainers.grpo import run_grpo

    config = {
        "model": {"path": str(model), "dtype": "float32"},
        "data": {"train": str(prompts), "max_prompt_tokens": 64},
        "rewards": [{"name": "char_fraction"}],
        "reward_modules": [str(REPO / "tests" / "fixtures" / "user_rewards.py")],
        "rollout": {"max_new_tokens": args.new_tokens, "kv_cache_memory_mb": 512, "enforce_eager": True},
        "learner": {"num_ranks": 1, "zero_stage": 0, "learning_rate": 1e-5, "micro_batch_size": args.micro_batch},
        "algorithm": {"group_size": args.group, "prompts_per_step": args.prompts, "importance_correction": "none"},
        "cluster": {"num_cpus": 4},
        "run": {"output_dir": str(out), "name": "ours", "total_steps": args.steps, "progress_bar": False,
                "logprob_diff_bound": 1.0},
    }
    path = out / "ours.yaml"
    path.write_text(yaml.safe_dump(config))
    run_grpo(load_config(GRPOConfig, path), str(path))
    rows = [json.loads(l) for l in (out / "ours" / "metrics.jsonl").read_text().splitlines()][1:]
    mean = lambda k: sum(r[k] for r in rows) / len(rows)  # noqa: E731
    phases = ["timing/generation", "timing/reward", "timing/logprobs", "timing/train", "timing/weight_sync"]
    return {"step_s": mean("timing/step"), "tokens": mean("tokens_generated"),
            **{p: mean(p) for p in phases}}


def trl(args, model: Path, prompts: Path, out: Path) -> dict:
    from datasets import load_dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    times: list[float] = []
    lengths: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.t = time.perf_counter()

        def on_step_end(self, *a, **k):
            times.append(time.perf_counter() - self.t)

        def on_log(self, args, state, control, logs=None, **k):
            if logs and "completions/mean_length" in logs:
                lengths.append(float(logs["completions/mean_length"]))

    batch = args.prompts * args.group
    config = GRPOConfig(
        output_dir=str(out / "trl"), per_device_train_batch_size=batch, num_generations=args.group,
        max_completion_length=args.new_tokens, learning_rate=1e-5, beta=0.0, max_steps=args.steps,
        logging_steps=1, report_to="none", save_strategy="no", use_cpu=True, bf16=False,
        temperature=1.0, use_vllm=False, gradient_accumulation_steps=1, dataloader_num_workers=0,
    )
    dataset = load_dataset("json", data_files=str(prompts), split="train")
    trainer = GRPOTrainer(model=str(model), reward_funcs=[char_fraction], args=config,
                          train_dataset=dataset, callbacks=[StepTimer()])
    trainer.train()
    steady = times[1:]
    tokens = [length * batch for length in lengths[1:]]
    return {"step_s": sum(steady) / len(steady), "tokens": sum(tokens) / len(tokens)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--micro-batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()

    from rl_safety.models.tiny import build_tiny_model

    out = Path(tempfile.mkdtemp(prefix="grpo_bench_"))
    model = build_tiny_model(out / "model", hidden_size=args.hidden, num_layers=args.layers,
                             num_heads=args.hidden // 64, intermediate_size=4 * args.hidden,
                             max_position_embeddings=1024)
    n_params = sum(p.numel() for p in __import__("transformers").AutoModelForCausalLM.from_pretrained(model).parameters())
    prompts = out / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Write letters {i}"}) + "\n" for i in range(256)))

    r_ours = ours(args, model, prompts, out)
    r_trl = trl(args, model, prompts, out)
    print(f"\nGRPO step, {n_params / 1e6:.1f}M params, {args.prompts} prompts x {args.group} completions x "
          f"<= {args.new_tokens} new tokens, 1 learner, CPU, steady-state mean of {args.steps - 1} steps\n")
    print(f"{'phase':<22}{'rl-safety s':>12}")
    for key in ("timing/generation", "timing/reward", "timing/logprobs", "timing/train", "timing/weight_sync"):
        print(f"{key.removeprefix('timing/'):<22}{r_ours[key]:>12.2f}")
    print()
    print(f"{'system':<22}{'step s':>10}{'tokens/s':>12}")
    print(f"{'rl-safety':<22}{r_ours['step_s']:>10.2f}{r_ours['tokens'] / r_ours['step_s']:>12.1f}")
    print(f"{'TRL GRPOTrainer':<22}{r_trl['step_s']:>10.2f}{r_trl['tokens'] / r_trl['step_s']:>12.1f}")
    print(f"\nstep-time ratio TRL / rl-safety: {r_trl['step_s'] / r_ours['step_s']:.2f}x; tokens/s ratio "
          f"rl-safety / TRL: {(r_ours['tokens'] / r_ours['step_s']) / (r_trl['tokens'] / r_trl['step_s']):.2f}x")


if __name__ == "__main__":
    main()
