"""`rl-safety toy table`: the four arms of the toy experiment on the base toy LRM, each evaluated
by the eval harness on the toy suite, and the safety-tax table and plots of `rl-safety compare`,
once per seed (`--seeds`, default 3: OUT/seedK/ below is OUT/), then every cell's mean and 95%
interval over the seeds (OUT/seeds.md, OUT/seeds.json).

    OUT/foreign_shift=S/        the foreign refusal set (the DirectRefusal analogue) S nats per
                                token from the base model (`--shift`, default 2: rl_safety.toy.shift)
    OUT/base/                   the base model, evaluated only (compare's reference for the tax)
    OUT/vanilla_sft/            SFT on the foreign refusal set as it is
    OUT/dgr/data.jsonl          the base model's rewrites of that set in its own words (DGR) ...
    OUT/dgr_sft/                ... and SFT on them
    OUT/thinksafe/data.jsonl    the base model's own refusals when steered, and its answers to the
                                benign prompts (ThinkSafe) ...
    OUT/thinksafe_sft/          ... and SFT on them
    OUT/sft_data/ARM.jsonl      what each SFT arm trains on (below)
    OUT/grpo/                   GRPO with the verifiable safety + arithmetic rewards
    OUT/comparison/             comparison.md / .html / .json, safety_vs_reasoning.png, quality_vs_cost.png

Equal footing: every SFT arm trains with rl_safety/toy/configs/sft.yaml, at the learning rate one
rule picks for it (`SFT_ARM_DEFAULTS`), for the same number of optimizer steps
(`training.max_steps`) on its own harmful rows plus the same benign rows (the base
model's own answers to the training split's benign prompts, `world.own_answer_rows`; ThinkSafe's
sampled answers to them are replaced by these), so the arms differ in their harmful rows only:
the foreign set (one per harmful training prompt), its DGR rewrites (one kept per prompt) or
ThinkSafe's steered refusals (one per prompt where the steered model refused at least once).
Each registered safety-data method (rl_safety.refine.methods: DGR, ThinkSafe, ...) generates with
its toy config and is an arm `NAME_sft`; GRPO trains with rl_safety/toy/configs/grpo.yaml on the
same training prompts; each with `CONFIG.key=value` overrides (sft., an SFT arm's own such as
vanilla_sft., dgr., thinksafe., grpo.).
Every run writes its cost ledger, and a DGR / ThinkSafe arm's cost includes generating its data.

`--sweep NAME=V1,V2,...` runs the arms once per value (and per seed) under OUT/seedK/NAME=V/,
sharing the base's evaluation, and writes OUT/sweep.md: NAME `shift` is the foreign set's distance
(the dose-response of the safety tax), any other is a CONFIG.key (e.g. the SFT learning rate).

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
FOREIGN_SET = "foreign_refusal_train.jsonl"  # the base's export a method's toy_source names for the foreign set
DEFAULT_SHIFT = 2.0  # nats per token from the base model's own refusals: a realistic gap (rl_safety.toy.shift)
SWEEP_SHIFT = "shift"  # --sweep shift=...: the foreign set's distance, not a config key
# Each SFT arm's learning rate by one rule on training data: the lowest rate of the README's sweep at
# which the arm refuses >= 95% of its own training prompts (toy_harmful_trained) in its 150 steps, so
# it has learned its data before its reasoning cost is read; an arm's entry here overrides sft.yaml.
# On base 38b26c27866c every arm learns its data at sft.yaml's 1e-3 (vanilla SFT: 98% of it), so
# none has one; on the previous base vanilla SFT needed 2e-3.
SFT_ARM_DEFAULTS: dict[str, list[str]] = {}


def toy_methods() -> dict[str, Any]:
    """The registered safety-data methods with a toy-world config (rl_safety.refine.methods)."""
    from rl_safety.refine.methods import data_methods

    return {name: method for name, method in data_methods().items() if method.toy_config is not None}


def all_arms() -> tuple[str, ...]:
    return ("vanilla_sft", *(f"{name}_sft" for name in toy_methods()), "grpo")


def sft_arms() -> tuple[str, ...]:
    return tuple(arm for arm in all_arms() if arm != "grpo")


def split_overrides(pairs: list[str]) -> dict[str, list[str]]:
    """`CONFIG.key=value` overrides grouped by CONFIG (the prefix is dropped): `sft` (every SFT
    arm), an SFT arm's own name (`vanilla_sft`, ...: after `sft`'s), a method's generation, `grpo`."""
    grouped: dict[str, list[str]] = {prefix: [] for prefix in ("sft", *sft_arms(), *toy_methods(), "grpo")}
    for pair in pairs:
        prefix, _, rest = pair.partition(".")
        if prefix not in grouped or "=" not in rest:
            raise ConfigError(f"override {pair!r}: expected CONFIG.key=value with CONFIG one of {list(grouped)}")
        grouped[prefix].append(rest)
    return grouped


def layered(*layers: list[str]) -> list[str]:
    """key=value overrides where a later layer's key replaces an earlier layer's (the config loader
    refuses a key set twice, which within one layer is a user's mistake)."""
    out: list[str] = []
    for layer in layers:
        keys = {item.partition("=")[0] for item in layer}
        out = [item for item in out if item.partition("=")[0] not in keys] + layer
    return out


def check_arms(arms: tuple[str, ...] | None) -> None:
    """Every arm asked for exists (None: all of them)."""
    known = all_arms()
    unknown = [a for a in arms or () if a not in known]
    if unknown:
        raise ConfigError(f"unknown arms {unknown}; the arms are {list(known)}")


class ToyTable:
    """The experiment's steps over one output directory; each step is skipped when its result
    is already there. All configs are loaded (and checked) in the constructor, before any work."""

    def __init__(self, base: Path, output_dir: Path, overrides: list[str], foreign: Path,
                 arms: tuple[str, ...] | None = None, base_dir: Path | None = None,
                 log: Callable[[str], None] = print) -> None:
        from rl_safety.config import GRPOConfig, SFTConfig, load_config
        from rl_safety.eval.harness import find_suite
        from rl_safety.eval.suite import Suite

        check_arms(arms)
        self.base, self.out, self.arms, self.log = base, output_dir, arms or all_arms(), log
        self.base_dir = base_dir or output_dir / "base"  # a sweep's points share one evaluation of the base
        self.methods = toy_methods()
        self.grouped = split_overrides(overrides)
        data = base / "data"
        sources = {path.name: path for path in data.glob("*.jsonl")} | {FOREIGN_SET: foreign}
        self.safety_rows = {"vanilla_sft": foreign, **{f"{name}_sft": output_dir / name / "data.jsonl"
                                                       for name in self.methods}}

        def sft_config(arm: str):
            return load_config(SFTConfig, TOY_CONFIGS / "sft.yaml", [
                f"model.path={base}", f"data.train={sft_data_path(output_dir, arm)}",
                f"run.output_dir={output_dir}", f"run.name={arm}",
                *layered(SFT_ARM_DEFAULTS.get(arm, []), self.grouped["sft"], self.grouped[arm])])

        self.sft = {arm: sft_config(arm) for arm in self.safety_rows}
        self.generation = {
            name: load_config(method.config, method.toy_config, [
                f"model.path={base}", f"data.train={sources[method.toy_source]}",
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

        run_dirs, failed = {"base": self.base_dir}, {}
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
        self.write_sft_data(arm, Path(cfg.data.train))
        self.measure_safety_data(Path(cfg.data.train))
        return run_sft(cfg, source=str(TOY_CONFIGS / "sft.yaml"), resume=resume_with_same_config(cfg, run_dir))

    def write_sft_data(self, arm: str, path: Path) -> None:
        """The arm's harmful rows and the benign rows every SFT arm shares (`world.own_answer_rows`:
        the base model's own answers to the training split's benign prompts), so the arms differ in
        their safety data only. A method's own benign rows (ThinkSafe samples answers to the benign
        prompts) are replaced by the shared ones. The cost of generating the rows goes with them,
        so the SFT run charges it to the method."""
        import shutil

        from rl_safety.refine.generate import data_cost_path
        from rl_safety.toy.world import own_answer_rows, read_jsonl, write_jsonl

        source = self.safety_rows[arm]
        harmful = [row for row in read_jsonl(source) if row["label"] == "harmful"]
        if not harmful:  # the shared benign rows alone would train an arm that is no method at all
            raise RuntimeError(f"{arm}: {source} has no harmful rows to train on")
        eval_fraction = json.loads((self.base / "data" / "world.json").read_text())["eval_fraction"]
        write_jsonl(path, harmful + own_answer_rows("train", eval_fraction))
        if data_cost_path(source).exists():
            shutil.copyfile(data_cost_path(source), data_cost_path(path))

    def measure_safety_data(self, path: Path) -> None:
        """How far an arm's harmful rows (its SFT data at `path`) lie from the base model (mean NLL per response token,
        `evaluate.response_nll`), written beside them (`safety_data_nll_path`): the distribution
        shift the arm trains on, e.g. how much of the foreign set's style DGR's rewrites keep."""
        from rl_safety.toy.evaluate import response_nll
        from rl_safety.toy.world import join_response, read_jsonl

        harmful = [(row["prompt"], join_response(row["reasoning"], row["answer"]))
                   for row in read_jsonl(path) if row["label"] == "harmful"]
        safety_data_nll_path(path).write_text(json.dumps({"nll": response_nll(str(self.base), harmful)}) + "\n")

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


# ----------------------------------------------------------------------------- seeds

# Two-sided 95% Student-t quantiles by degrees of freedom (seeds - 1); beyond 30, the normal's.
T_975 = dict(enumerate([12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
                        2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
                        2.060, 2.056, 2.052, 2.048, 2.045, 2.042], start=1))


def sft_data_path(output_dir: Path, arm: str) -> Path:
    """What an SFT arm trains on: OUT/sft_data/ARM.jsonl."""
    return output_dir / "sft_data" / f"{arm}.jsonl"


def safety_data_nll_path(sft_data: Path) -> Path:
    return sft_data.with_suffix(".nll.json")


def seed_overrides(seed: int) -> list[str]:
    """What one seed of the table varies: every arm's training and each method's generation (the
    base model is one build for all seeds)."""
    return [f"sft.run.seed={seed}", f"grpo.run.seed={seed}", *(f"{m}.output.seed={seed}" for m in toy_methods())]


def mean_interval(values: list[float]) -> tuple[float, float | None]:
    """Mean and the half-width of its 95% Student-t interval over independent seeds (None for one)."""
    import statistics

    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, None
    return mean, T_975.get(len(values) - 1, 1.96) * statistics.stdev(values) / len(values) ** 0.5


def run_cells(comparison_json: Path) -> dict[str, dict[str, float]]:
    """{method: {cell: value}} of one seed's comparison: each benchmark's refusal rate (harmful,
    benign) or accuracy (reasoning), in %, and the training cost (estimated FLOPs, device-hours,
    tokens trained on and generated, a DGR / ThinkSafe arm's data generation included), and an SFT
    arm's "safety data NLL": its harmful rows' distance from the base model (nats per token)."""
    from rl_safety.eval.compare import training_cost

    methods = json.loads(comparison_json.read_text())["methods"]
    cells: dict[str, dict[str, float]] = {}
    for label, m in methods.items():
        run_dir = Path(m["run_dir"])  # OUT/ARM (the base's: OUT/base)
        results = json.loads((run_dir / "eval" / SUITE / "results.json").read_text())
        row = {}
        for name, bench in results["benchmarks"].items():
            metric = "accuracy" if bench["kind"] == "reasoning" else "refusal_rate"
            row[f"{name} {metric.removesuffix('_rate')}"] = 100 * bench["metrics"][metric]["value"]
        row["train FLOPs"] = m["training_flops_estimate"] or 0.0
        row["train device-h"] = m["training_device_hours"] or 0.0
        tokens = (training_cost(run_dir) or {"tokens": {}})["tokens"]
        row["tokens trained"] = float(tokens.get("trained", 0))
        row["tokens generated"] = float(tokens.get("generated", 0))
        nll = safety_data_nll_path(sft_data_path(run_dir.parent, run_dir.name))
        if nll.exists():
            row["safety data NLL"] = json.loads(nll.read_text())["nll"]
        cells[label] = row
    return cells


def seed_summary(per_seed: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, dict[str, Any]]]:
    """{method: {cell: {"mean", "half_width", "values"}}} over the seeds that have the method."""
    summary: dict[str, dict[str, dict[str, Any]]] = {}
    for label in dict.fromkeys(label for cells in per_seed for label in cells):
        runs = [cells[label] for cells in per_seed if label in cells]
        summary[label] = {}
        for cell in dict.fromkeys(c for run in runs for c in run):
            values = [run[cell] for run in runs if cell in run]
            mean, half = mean_interval(values)
            summary[label][cell] = {"mean": mean, "half_width": half, "values": values}
    return summary


def _cell(cell: str, s: dict[str, Any]) -> str:
    if cell in ("train FLOPs", "tokens trained", "tokens generated"):
        return f"{s['mean']:.3g}"
    if cell == "train device-h":
        return f"{s['mean']:.4f}"
    digits = 2 if cell == "safety data NLL" else 1  # nats per token, not a percentage
    if s["half_width"] is None:
        return f"{s['mean']:.{digits}f}"
    low, high = max(0.0, s["mean"] - s["half_width"]), min(100.0, s["mean"] + s["half_width"])  # rates
    return f"{s['mean']:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def _table(rows: list[tuple[str, dict[str, dict[str, Any]]]], seeds: int, first: str = "method") -> list[str]:
    cells = list(dict.fromkeys(c for _, row in rows for c in row))
    lines = [f"| {first} | " + " | ".join(cells) + " |", "|---" * (len(cells) + 1) + "|"]
    for label, row in rows:
        n = len(next(iter(row.values()))["values"])
        lines.append(f"| {label}{'' if n == seeds else f' ({n} seeds)'} | "
                     + " | ".join(_cell(c, row[c]) if c in row else "–" for c in cells) + " |")
    return lines


CELLS_NOTE = ("Cells: each benchmark's refusal rate (harmful, benign: over-refusal) or accuracy "
              "(arithmetic), with the 95% Student-t interval over seeds (training and data-generation "
              "randomness on one eval set) clipped to [0, 100] when there are two seeds or more; "
              "costs are means and carry no interval; safety data NLL is an SFT arm's harmful rows' "
              "mean NLL per response token under the base model (nats). Each run's own table, with sampling intervals "
              "within the run, is its comparison/comparison.md.")


def _foreign_line(made) -> str:
    return (f"the foreign set: {made.nll:.2f} nats per token from the base model's own refusals "
            f"(asked {made.target:g}; style level {made.level:.3f})")


def seed_markdown(summary: dict[str, dict[str, dict[str, Any]]], seeds: int, foreign) -> str:
    lines = [f"# Toy table over {seeds} seeds: mean [95% Student-t interval over seeds], %", "",
             f"Every SFT arm: its harmful rows plus the same benign rows, the same optimizer steps; {_foreign_line(foreign)}.",
             "", *_table(list(summary.items()), seeds), "", CELLS_NOTE]
    return "\n".join(lines) + "\n"


def sweep_markdown(summary: dict[str, dict[str, dict[str, dict[str, Any]]]], seeds: int, foreign: dict) -> str:
    """One row per (sweep value, method), the base once (every value shares its evaluation), and
    the foreign set each value trained on."""
    rows = []
    for label, methods in summary.items():
        rows += [("base" if method == "base" else f"{label} {method}", row)
                 for method, row in methods.items() if method != "base" or not rows]
    lines = [f"# Toy sweep over {seeds} seed(s): mean [95% Student-t interval over seeds], %", ""]
    if len(set(foreign.values())) == 1:
        lines.append(f"Every point: {_foreign_line(next(iter(foreign.values())))}.")
    else:
        lines += [f"- {label}: {_foreign_line(made)}" for label, made in foreign.items()]
    lines += ["", *_table(rows, seeds, first="point method"), "", CELLS_NOTE]
    return "\n".join(lines) + "\n"


def parse_sweep(spec: str | None) -> tuple[str, list[str]] | None:
    """`--sweep NAME=V1,V2,...` -> (NAME, values): NAME is `shift` (nats per token) or a
    CONFIG.key override (e.g. sft.learner.learning_rate); checked before any work."""
    if spec is None:
        return None
    name, _, values = spec.partition("=")
    points = [v for v in values.split(",") if v]
    if not name or not points:
        raise ConfigError(f"--sweep {spec!r}: expected NAME=V1,V2,... (NAME: shift or CONFIG.key)")
    if name == SWEEP_SHIFT:
        for v in points:
            try:
                float(v)
            except ValueError:
                raise ConfigError(f"--sweep {spec!r}: shift values are nats per token, got {v!r}") from None
    else:
        split_overrides([f"{name}={v}" for v in points])
    return name, points


def run_table(output_dir: Path, overrides: list[str], arms: tuple[str, ...] | None = None, seeds: int = 3,
              shift: float = DEFAULT_SHIFT, sweep: str | None = None) -> tuple[dict[str, Path], dict[str, str]]:
    """Build (or reuse) the base toy model and the foreign set `shift` nats per token from it, then
    `ToyTable(...).run()` for each seed under OUT/seedK/ in one local Ray session, and the mean and
    interval over seeds (OUT/seeds.md, OUT/seeds.json). With `sweep` (NAME=V1,V2,...), each seed
    runs the arms once per value under OUT/seedK/NAME=V/ (sharing the base's evaluation), and the
    summary is per value (OUT/sweep.md, OUT/sweep.json). Returns the files written and the arms
    that failed, as "seedK/arm" (or "seedK/NAME=V/arm")."""
    from rl_safety.config.cluster import ClusterSection
    from rl_safety.eval.compare import print_report
    from rl_safety.orchestration.cluster import connect
    from rl_safety.toy.model import BuildConfig, build_base_model
    from rl_safety.toy.shift import check_shift, write_foreign_set

    if seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {seeds}")
    check_arms(arms)  # before the base model is built (minutes)
    split_overrides(overrides)
    swept = parse_sweep(sweep)
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    points = [(f"{swept[0]}={v}", v) for v in swept[1]] if swept else [("", None)]
    shifts = {label: float(v) if swept and swept[0] == SWEEP_SHIFT else shift for label, v in points}
    for target in shifts.values():
        check_shift(target)
    base = build_base_model(BuildConfig(), log=log)
    foreign = {target: write_foreign_set(base, target, output_dir / f"foreign_shift={target:g}")
               for target in dict.fromkeys(shifts.values())}
    for target, made in foreign.items():
        log(f"foreign set {target:g} nats/token: style level {made.level:.3f}, measured {made.nll:.3f} -> {made.path}")
    tables = {}  # (seed, point label) -> ToyTable; every config checked before any work
    for seed in range(seeds):
        for label, value in points:
            point = [f"{swept[0]}={value}"] if swept and swept[0] != SWEEP_SHIFT else []
            out = output_dir / f"seed{seed}" / label if label else output_dir / f"seed{seed}"
            tables[seed, label] = ToyTable(base, out, [*seed_overrides(seed), *overrides, *point],
                                           foreign[shifts[label]].path, arms,
                                           base_dir=output_dir / f"seed{seed}" / "base", log=log)
    output_dir.mkdir(parents=True, exist_ok=True)
    connect(ClusterSection(), devices=3)  # one session for every step (each would otherwise start its own)
    per_point: dict[str, list[dict[str, dict[str, float]]]] = {label: [] for label, _ in points}
    failed = {}
    for (seed, label), table in tables.items():
        log(f"==== seed {seed} {label}".rstrip())
        written, point_failed = table.run()
        print_report(written)
        per_point[label].append(run_cells(written["json"]))
        failed |= {f"{table.out.relative_to(output_dir)}/{arm}": why for arm, why in point_failed.items()}
    if swept:
        summary = {label: seed_summary(runs) for label, runs in per_point.items()}
        measured = {label: foreign[shifts[label]] for label in per_point}
        markdown = sweep_markdown(summary, seeds, measured)
        written = {"markdown": output_dir / "sweep.md", "json": output_dir / "sweep.json"}
    else:
        summary = seed_summary(per_point[""])
        markdown = seed_markdown(summary, seeds, foreign[shift])
        written = {"markdown": output_dir / "seeds.md", "json": output_dir / "seeds.json"}
    written["json"].write_text(json.dumps(summary, indent=1) + "\n")
    written["markdown"].write_text(markdown)
    print(markdown)
    for arm, why in failed.items():
        print(f"arm {arm} FAILED and is not in the table: {why}")
    return written, failed
