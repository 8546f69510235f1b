"""The GRPO arm of the toy world: base toy LRM -> GRPO with the verifiable safety and arithmetic
rewards -> held-out evaluation of both, side by side. `rl-safety toy run` calls `run_grpo_arm`."""

from __future__ import annotations

import json
import random
from pathlib import Path

from rl_safety.config.loader import ConfigError, config_differences
from rl_safety.runs import resume_or_set_aside
from rl_safety.toy.world import read_jsonl, write_jsonl

GRPO_CONFIG = Path(__file__).parent / "configs" / "grpo.yaml"


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


def finished_with_same_config(cfg, config_file: Path, result: Path) -> bool:
    """Whether `result` (a run's final/, a generated dataset) exists and was made with `cfg`, as
    recorded in `config_file`; a result made with another config is an error, never reused or
    overwritten in silence."""
    if not result.exists():
        return False
    differences = config_differences(cfg, config_file) if config_file.exists() else ["(no recorded config)"]
    if differences:
        raise ConfigError(f"{result} was made with another config (differs in {', '.join(differences[:8])}); "
                          "pass another --output-dir, or remove it to redo it")
    print(f"{result} exists (same config): reused", flush=True)
    return True


def resume_with_same_config(cfg, run_dir: Path) -> bool:
    """Whether to resume the unfinished run at `run_dir` (`resume_or_set_aside`), after checking
    that its checkpoints were made with `cfg`."""
    resume = resume_or_set_aside(run_dir)
    if resume:
        finished_with_same_config(cfg, run_dir / "config.yaml", run_dir / "checkpoints")
    return resume


def train_grpo_arm(base: Path, output_dir: Path, overrides: list[str], seed: int = 0) -> Path:
    """GRPO (rl_safety/toy/configs/grpo.yaml + `overrides`) from the base model on its balanced prompt mix;
    returns the run's `final/`. A finished run is reused; one with a complete checkpoint but no
    `final/` is resumed."""
    from rl_safety.config import GRPOConfig, load_config
    from rl_safety.trainers.grpo import run_grpo

    output_dir.mkdir(parents=True, exist_ok=True)
    prompts = balanced_prompts(base / "data" / "grpo_train.jsonl", output_dir / "grpo_mix.jsonl", seed)
    cfg = load_config(GRPOConfig, GRPO_CONFIG, [
        f"model.path={base}", f"data.train={prompts}", f"run.output_dir={output_dir}", *overrides,
    ])
    run_dir = Path(cfg.run.output_dir) / cfg.run.name
    if finished_with_same_config(cfg, run_dir / "config.yaml", run_dir / "final"):
        return run_dir / "final"
    resume = resume_with_same_config(cfg, run_dir)
    print(f"batch plan: {cfg.batch_plan()}" + (" (resuming)" if resume else ""), flush=True)
    return run_grpo(cfg, source=str(GRPO_CONFIG), resume=resume)


def run_grpo_arm(overrides: list[str], output_dir: Path, n_math: int = 200) -> dict[str, dict[str, float]]:
    """Build (or reuse) the base model, run GRPO on it, evaluate base and trained policy on the
    held-out prompts; returns {"base": metrics, "grpo": metrics} and writes them to
    `output_dir/toy_grpo_table.json`."""
    from rl_safety.toy.evaluate import evaluate_model, format_table
    from rl_safety.toy.model import BuildConfig, build_base_model

    build = BuildConfig()
    base = build_base_model(build, log=lambda msg: print(msg, flush=True))
    final = train_grpo_arm(base, output_dir, overrides, build.seed)

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
