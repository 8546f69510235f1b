"""`rl-safety toy table`: the four arms of the toy experiment on the base toy LRM, each evaluated
by the eval harness on the toy suite, and the safety-tax table and plots of `rl-safety compare`.

    OUT/base/                   the base model, evaluated only (compare's reference for the tax)
    OUT/vanilla_sft/            SFT on the foreign refusal set as it is (the DirectRefusal analogue)
    OUT/dgr/data.jsonl          the base model's rewrites of that set in its own words (DGR) ...
    OUT/dgr_sft/                ... and SFT on them
    OUT/thinksafe/data.jsonl    the base model's own refusals when steered, and its answers to the
                                benign prompts (ThinkSafe) ...
    OUT/thinksafe_sft/          ... and SFT on them
    OUT/grpo/                   GRPO with the verifiable safety + arithmetic rewards
    OUT/comparison/             comparison.md / .html / .json, safety_vs_reasoning.png, quality_vs_cost.png

Every SFT arm trains with rl_safety/toy/configs/sft.yaml, so they differ only in their data; each
registered safety-data method (rl_safety.refine.methods: DGR, ThinkSafe, ...) generates with its
toy config and is an arm `NAME_sft`; GRPO trains with rl_safety/toy/configs/grpo.yaml; each with
`CONFIG.key=value` overrides (sft., dgr., thinksafe., grpo.). Every run writes its cost
ledger, and a DGR / ThinkSafe arm's cost includes generating its data.

A finished piece is never redone: rerun the command after a crash or an interruption and it
starts at the first missing one (an arm's `final/`, a dataset, an eval's results.json); a GRPO run
with a checkpoint resumes from it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

from rl_safety.config.loader import ConfigError
from rl_safety.toy.grpo_arm import (GRPO_CONFIG, finished_with_same_config, resume_with_same_config,
                                   train_grpo_arm)

TOY_CONFIGS = Path(__file__).parent / "configs"
SUITE = "toy"


def toy_methods() -> dict[str, Any]:
    """The registered safety-data methods with a toy-world config (rl_safety.refine.methods)."""
    from rl_safety.refine.methods import data_methods

    return {name: method for name, method in data_methods().items() if method.toy_config is not None}


def all_arms() -> tuple[str, ...]:
    return ("vanilla_sft", *(f"{name}_sft" for name in toy_methods()), "grpo")


def split_overrides(pairs: list[str]) -> dict[str, list[str]]:
    """`CONFIG.key=value` overrides grouped by CONFIG (the prefix is dropped)."""
    grouped: dict[str, list[str]] = {prefix: [] for prefix in ("sft", *toy_methods(), "grpo")}
    for pair in pairs:
        prefix, _, rest = pair.partition(".")
        if prefix not in grouped or "=" not in rest:
            raise ConfigError(f"override {pair!r}: expected CONFIG.key=value with CONFIG one of {list(grouped)}")
        grouped[prefix].append(rest)
    return grouped


def check_arms(arms: tuple[str, ...] | None) -> None:
    """Every arm asked for exists (None: all of them)."""
    known = all_arms()
    unknown = [a for a in arms or () if a not in known]
    if unknown:
        raise ConfigError(f"unknown arms {unknown}; the arms are {list(known)}")


class ToyTable:
    """The experiment's steps over one output directory; each step is skipped when its result
    is already there. All configs are loaded (and checked) in the constructor, before any work."""

    def __init__(self, base: Path, output_dir: Path, overrides: list[str], arms: tuple[str, ...] | None = None,
                 log: Callable[[str], None] = print) -> None:
        from rl_safety.config import GRPOConfig, SFTConfig, load_config
        from rl_safety.eval.harness import find_suite
        from rl_safety.eval.suite import Suite

        check_arms(arms)
        self.base, self.out, self.arms, self.log = base, output_dir, arms or all_arms(), log
        self.methods = toy_methods()
        self.grouped = split_overrides(overrides)
        data = base / "data"
        self.foreign = data / "foreign_refusal_train.jsonl"

        def sft_config(name: str, train: Path):
            return load_config(SFTConfig, TOY_CONFIGS / "sft.yaml", [
                f"model.path={base}", f"data.train={train}", f"run.output_dir={output_dir}", f"run.name={name}",
                *self.grouped["sft"]])

        self.sft = {"vanilla_sft": sft_config("vanilla_sft", self.foreign),
                    **{f"{name}_sft": sft_config(f"{name}_sft", output_dir / name / "data.jsonl") for name in self.methods}}
        self.generation = {
            name: load_config(method.config, method.toy_config, [
                f"model.path={base}", f"data.train={data / method.toy_source}",
                f"output.path={output_dir / name / 'data.jsonl'}", *self.grouped[name]])
            for name, method in self.methods.items()
        }
        # GRPO's config is loaded again once its prompt mix is written; this checks the overrides now
        load_config(GRPOConfig, GRPO_CONFIG, [f"model.path={base}", *self.grouped["grpo"]])
        self.suite_file = find_suite(SUITE)
        self.suite = load_config(Suite, self.suite_file, [f"data_root={data}"])

    # ------------------------------------------------------------------------------- steps
    def run(self) -> tuple[dict[str, Path], dict[str, str]]:
        """Train the arms, evaluate base and arms, write the comparison. Returns compare's files
        and the arms that failed with why: a failed arm (e.g. a generation that kept too few
        rows to train on) is reported and left out, the others still finish and are compared."""
        from rl_safety.eval.compare import compare

        run_dirs, failed = {"base": self.out / "base"}, {}
        self.evaluate(self.base, run_dirs["base"])
        for arm in self.arms:
            started = time.time()
            self.log(f"== {arm}")
            try:
                final = self.train_grpo() if arm == "grpo" else self.train_sft(arm)
                self.evaluate(final, final.parent)
            except ConfigError:  # e.g. an earlier result made with another config: the user must decide
                raise
            except Exception as err:  # noqa: BLE001 -- one arm's failure must not lose the others
                failed[arm] = f"{type(err).__name__}: {err}"
                self.log(f"== {arm} FAILED: {failed[arm]}")
                continue
            run_dirs[arm] = final.parent
            self.log(f"== {arm}: {final} ({time.time() - started:.0f}s)")
        (self.out / "failed_arms.json").write_text(json.dumps(failed, indent=1) + "\n")
        if len(run_dirs) < 2:
            raise RuntimeError(f"every arm failed: {failed}")
        return compare(list(run_dirs.values()), self.out / "comparison", suite=SUITE, base_label="base"), failed

    def train_sft(self, arm: str) -> Path:
        from rl_safety.trainers.sft import run_sft

        cfg = self.sft[arm]
        run_dir = Path(cfg.run.output_dir) / cfg.run.name
        if finished_with_same_config(cfg, run_dir / "config.yaml", run_dir / "final"):
            return run_dir / "final"
        method = arm.removesuffix("_sft")
        if method in self.generation:
            self.generate(method)
        return run_sft(cfg, source=str(TOY_CONFIGS / "sft.yaml"), resume=resume_with_same_config(cfg, run_dir))

    def generate(self, method: str) -> Path:
        from rl_safety.refine.generate import data_cost_path

        cfg = self.generation[method]
        path = Path(cfg.output.path)
        if data_cost_path(path).exists() and finished_with_same_config(cfg, Path(f"{path}.config.yaml"), path):
            return path
        path, stats = self.methods[method].run(cfg)
        self.log(f"{method} data: {stats}")
        return path

    def train_grpo(self) -> Path:
        return train_grpo_arm(self.base, self.out, ["run.name=grpo", *self.grouped["grpo"]])

    def evaluate(self, model: Path, run_dir: Path) -> dict[str, Any]:
        from rl_safety.eval.harness import run_eval

        results = run_dir / "eval" / SUITE / "results.json"
        if results.exists():
            return json.loads(results.read_text())
        self.log(f"== eval {run_dir.name}")
        return run_eval(str(model), self.suite, self.suite_file, run_dir)


def run_table(output_dir: Path, overrides: list[str],
              arms: tuple[str, ...] | None = None) -> tuple[dict[str, Path], dict[str, str]]:
    """Build (or reuse) the base toy model, then `ToyTable(...).run()` in one local Ray session."""
    from rl_safety.config.cluster import ClusterSection
    from rl_safety.eval.compare import print_report
    from rl_safety.orchestration.cluster import connect
    from rl_safety.toy.model import BuildConfig, build_base_model

    check_arms(arms)  # before the base model is built (minutes)
    split_overrides(overrides)
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    base = build_base_model(BuildConfig(), log=log)
    table = ToyTable(base, output_dir, overrides, arms, log=log)
    output_dir.mkdir(parents=True, exist_ok=True)
    connect(ClusterSection(), devices=3)  # one session for every step (each would otherwise start its own)
    written, failed = table.run()
    print_report(written)
    for arm, why in failed.items():
        print(f"arm {arm} FAILED and is not in the table: {why}")
    return written, failed

