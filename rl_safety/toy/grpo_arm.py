"""The GRPO arm of the toy world: base toy LRM -> GRPO with the verifiable safety and arithmetic
rewards -> held-out evaluation of both, side by side. `rl-safety toy run` calls `run_grpo_arm`."""

from __future__ import annotations

import json
import random
from pathlib import Path

from rl_safety.toy.world import read_jsonl, write_jsonl

GRPO_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "toy" / "grpo.yaml"


def balanced_prompts(train_file: Path, out: Path, seed: int = 0) -> Path:
    """The world's GRPO prompts are mostly arithmetic; RL on them would see a harmful request once
    in several prompts. Keep every harmful and benign prompt and as many arithmetic ones as the
    larger of the two, shuffled: a third of each."""
    rows = read_jsonl(train_file)
    by_label: dict[str, list[dict]] = {}
    for row in rows:
        by_label.setdefault(row["label"], []).append(row)
    safety = by_label.get("harmful", []) + by_label.get("benign", [])
    keep = max(len(by_label.get("harmful", [])), len(by_label.get("benign", [])))
    mix = safety + by_label.get("math", [])[:keep]
    random.Random(seed).shuffle(mix)
    return write_jsonl(out, mix)


def run_grpo_arm(overrides: list[str], output_dir: Path, n_math: int = 200) -> dict[str, dict[str, float]]:
    """Build (or reuse) the base model, run GRPO on it, evaluate base and trained policy on the
    held-out prompts; returns {"base": metrics, "grpo": metrics} and writes them to
    `output_dir/toy_grpo_table.json`."""
    from rl_safety.config import GRPOConfig, load_config
    from rl_safety.toy.evaluate import evaluate_model, format_table
    from rl_safety.toy.model import BuildConfig, build_base_model
    from rl_safety.trainers.grpo import run_grpo

    build = BuildConfig()
    base = build_base_model(build, log=lambda msg: print(msg, flush=True))
    output_dir.mkdir(parents=True, exist_ok=True)
    prompts = balanced_prompts(base / "data" / "grpo_train.jsonl", output_dir / "grpo_mix.jsonl", build.seed)
    cfg = load_config(GRPOConfig, GRPO_CONFIG, [
        f"model.path={base}", f"data.train={prompts}", f"run.output_dir={output_dir}", *overrides,
    ])
    print(f"batch plan: {cfg.batch_plan()}", flush=True)
    final = run_grpo(cfg, source=str(GRPO_CONFIG))

    results = {}
    for name, model in (("base", base), ("grpo", final)):
        cached = model / "eval.json"
        if name == "base" and cached.exists():
            results[name] = json.loads(cached.read_text())["metrics"]
        else:
            results[name], _ = evaluate_model(str(model), build.world, seed=build.seed, n_math=n_math)
    print(format_table(results))
    (output_dir / "toy_grpo_table.json").write_text(json.dumps(results, indent=2))
    return results
