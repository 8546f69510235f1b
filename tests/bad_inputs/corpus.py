"""The bad-input corpus: cases as data (`cases.yaml`), run through the real command line in this
process with Ray stubbed out, so that no engine, actor or model server ever starts.

A case names a command line, the files it needs and what must happen:

    - id: grpo/empty-data
      argv: [grpo, --config, "{T}/grpo.yaml", "data.train={T}/empty.jsonl"]
      files: {empty.jsonl: ""}                          # written under the case's directory {T}
      expect: "rl-safety grpo: error: data file {T}/empty.jsonl is empty"   # first error line starts so

`outcome` is `error` (the default: exit status 2 and the expected line), `start` (every check
passed and the command got as far as starting Ray: the right outcome for input that is fine,
say a file with a byte-order mark) or `ok` (exit status 0). `expect_log` / `expect_files` add
checks on the log and on files the command wrote; `setup` builds a run directory to resume
(`grpo_run`, `sft_run`: checkpoints after steps 1 and 3 with their manifests); `remove` deletes
files after the setup; `subprocess: true` runs the case as its own process (what needs one),
with `env` added to its environment.
Placeholders: {T} the case's directory, {M} a tiny Hugging Face model, {R} the repository.

Each result is classified: `clear` (the expected one-line error), `handled` (succeeded where
succeeding is right, with the expected effects), `other error` (failed without a traceback, but
not with the expected line), `traceback`, `silently wrong` (went on where it should have stopped,
or lost / changed something without a word).

    python -m tests.bad_inputs.corpus        # the table for the checked-out code
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import subprocess
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CASES = Path(__file__).with_name("cases.yaml")
CATEGORIES = ("clear", "handled", "other error", "traceback", "silently wrong")


class ReachedRayStart(BaseException):
    """Raised by the stubbed `ray.init`: the command passed every check before its cluster."""


@dataclass
class Result:
    exit: int | str  # an exit status, "start" or "traceback"
    stderr: str
    log: str
    category: str = ""
    why: str = ""
    error_line: str = ""
    details: dict[str, Any] = field(default_factory=dict)


def load_cases() -> list[dict[str, Any]]:
    cases = yaml.safe_load(CASES.read_text())
    ids = [c["id"] for c in cases]
    assert len(set(ids)) == len(ids), sorted({i for i in ids if ids.count(i) > 1})
    return cases


# ------------------------------------------------------------------------------ base files
def _fill(value: Any, places: dict[str, str]) -> Any:
    if isinstance(value, str):
        for key, text in places.items():
            value = value.replace("{" + key + "}", text)
        return value
    if isinstance(value, list):
        return [_fill(v, places) for v in value]
    if isinstance(value, dict):
        return {_fill(k, places): _fill(v, places) for k, v in value.items()}
    return value


def _jsonl(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def base_files(T: Path, model: Path) -> dict[str, Any]:
    """The valid inputs every case starts from: configs, data and run directories that work."""
    prompts = [{"prompt": f"Write the letter {c}", "label": "benign" if i % 2 else "harmful"}
               for i, c in enumerate("abcdefgh")]
    sft_rows = [{"prompt": f"question {i}", "reasoning": f"I think about {i}.", "answer": f"Answer {i}.",
                 "label": "harmful" if i % 2 else "benign"} for i in range(4)]
    grpo = {
        "model": {"path": str(model), "dtype": "float32"},
        "data": {"train": f"{T}/prompts.jsonl", "max_prompt_tokens": 64},
        "rewards": [{"name": "safety"}],
        "rollout": {"max_new_tokens": 16, "kv_cache_memory_mb": 64},
        "learner": {"num_ranks": 1, "zero_stage": 0, "micro_batch_size": 4},
        "algorithm": {"group_size": 2, "prompts_per_step": 2},
        "run": {"output_dir": f"{T}/runs", "name": "g", "total_steps": 4, "save_every": 2, "progress_bar": False},
    }
    sft = {
        "model": {"path": str(model), "dtype": "float32", "family": "generic"},
        "data": {"train": f"{T}/sft.jsonl", "max_tokens": 128},
        "learner": {"num_ranks": 1, "zero_stage": 0, "micro_batch_size": 1},
        "run": {"output_dir": f"{T}/runs", "name": "s", "save_every": 1},
    }
    generation = {
        "model": {"path": str(model), "dtype": "float32", "family": "generic"},
        "data": {"train": f"{T}/sft.jsonl", "dataset": "schema"},
        "generation": {"max_new_tokens": 8, "max_prompt_tokens": 64, "kv_cache_memory_mb": 64},
        "output": {"path": f"{T}/out/data.jsonl"},
    }
    suite = {"name": "s", "generation": {"max_prompt_tokens": 64, "kv_cache_memory_mb": 64},
             "benchmarks": [{"name": "b", "kind": "reasoning", "data": f"{T}/bench.jsonl",
                             "fields": {"prompt": "question", "answer": "answer"}, "scorers": ["gsm8k"],
                             "sampling": {"max_new_tokens": 8}}]}
    rollouts = [{"prompt": "p", "completion": "<think>x</think>I can't help with that.", "label": "harmful"},
                {"prompt": "q", "completion": "<think>y</think>Sure: 4.", "label": "benign"}]
    return {
        "prompts.jsonl": _jsonl(prompts), "sft.jsonl": _jsonl(sft_rows),
        "bench.jsonl": _jsonl([{"question": "1+1?", "answer": "#### 2"}, {"question": "2+2?", "answer": "#### 4"}]),
        "rollouts.jsonl": _jsonl(rollouts),
        "grpo.yaml": yaml.safe_dump(grpo), "sft.yaml": yaml.safe_dump(sft),
        "thinksafe.yaml": yaml.safe_dump(generation), "dgr.yaml": yaml.safe_dump(generation),
        "suite.yaml": yaml.safe_dump(suite),
    }


def compare_dirs(T: Path) -> None:
    """Two run directories that `rl-safety compare` accepts: a base model's eval, and a GRPO run."""
    metric = {"value": 0.5, "ci_low": 0.25, "ci_high": 0.75}
    results = {"suite": "s", "confidence_intervals": "Wilson", "benchmarks": {
        "h": {"kind": "harmful", "prompts": 4, "sampling": {"n": 1}, "metrics": {"refusal_rate": metric}},
        "r": {"kind": "reasoning", "prompts": 4, "sampling": {"n": 1}, "metrics": {"accuracy": metric}}}}
    cost = {"command": "grpo", "wall_time_s": 60.0, "device_hours": {"cpu": 0.01},
            "tokens": {"generated": 100, "trained": 200}, "flops_estimate": {"total": 1e9}}
    for name in ("base", "grpo"):
        (T / "cmp" / name / "eval" / "s").mkdir(parents=True)
        (T / "cmp" / name / "eval" / "s" / "results.json").write_text(json.dumps(results))
    (T / "cmp" / "grpo" / "cost.json").write_text(json.dumps(cost))


def _checkpoint(run: Path, step: int, state: dict[str, Any]) -> None:
    """A committed checkpoint as rl-safety writes it: files, driver state, then the manifest
    (sizes and SHA-256 of every other file), computed here independently of rl_safety.runs."""
    directory = run / "checkpoints" / f"step_{step}"
    (directory / "deepspeed").mkdir(parents=True)
    (directory / "deepspeed" / "mp_rank_00_model_states.pt").write_bytes(bytes(range(256)) * 4 + bytes([step]))
    (directory / "latest").write_text("deepspeed")
    (directory / "driver_state.json").write_text(json.dumps(state))
    files = {str(p.relative_to(directory)): {"size": p.stat().st_size,
                                             "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
             for p in sorted(directory.rglob("*")) if p.is_file()}
    (directory / "manifest.json").write_text(json.dumps({"files": files}))


def make_run(T: Path, kind: str) -> None:
    """A run directory that stopped after step 3: config.yaml, metrics, checkpoints 1 and 3."""
    from rl_safety.config import GRPOConfig, SFTConfig, load_config
    from rl_safety.config.loader import dump_config

    schema, config, name = (GRPOConfig, "grpo.yaml", "g") if kind == "grpo" else (SFTConfig, "sft.yaml", "s")
    run = T / "runs" / name
    run.mkdir(parents=True)
    dump_config(load_config(schema, T / config), run / "config.yaml")
    steps = range(4) if kind == "grpo" else range(1, 5)
    (run / "metrics.jsonl").write_text(_jsonl([{"step": s, "loss": 0.5} for s in steps]))
    for step in (1, 3):
        state = {"step": step, "sampler": {"epoch": 0, "position": 2 * step},
                 "python_random": "(3, (0,), None)"} if kind == "grpo" else {"step": step}
        _checkpoint(run, step, state)


def model_copies(T: Path, model: Path) -> None:
    """The tiny model at ckpts/a/model and ckpts/b/model: two models with the same basename."""
    import shutil

    for name in ("a", "b"):
        shutil.copytree(model, T / "ckpts" / name / "model")


def moved_run(T: Path, model: Path) -> None:
    """A GRPO run directory moved after it stopped: runs/g -> moved/g2."""
    make_run(T, "grpo")
    (T / "moved").mkdir()
    (T / "runs" / "g").rename(T / "moved" / "g2")


SETUPS = {"grpo_run": lambda T, model: make_run(T, "grpo"), "sft_run": lambda T, model: make_run(T, "sft"),
          "moved_grpo_run": moved_run, "compare_dirs": lambda T, model: compare_dirs(T), "model_copies": model_copies}


def prepare(case: dict[str, Any], T: Path, model: Path) -> dict[str, str]:
    places = {"T": str(T), "M": str(model), "R": str(REPO)}
    T.mkdir(parents=True, exist_ok=True)
    for name, content in base_files(T, model).items():
        (T / name).write_text(content)
    for name in case.get("setup", []):
        SETUPS[name](T, model)
    for name, content in (case.get("files") or {}).items():
        path = T / _fill(name, places)
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif isinstance(content, dict) and "repeat" in content:  # {repeat: TEXT, times: N}: a huge file
            path.write_text(_fill(content.get("before", ""), places) + content["repeat"] * content["times"]
                            + _fill(content.get("after", ""), places))
        else:
            path.write_text(_fill(content, places))
    for name in case.get("remove", []):
        target = T / _fill(name, places)
        if target.is_dir():
            import shutil

            shutil.rmtree(target)
        else:
            target.unlink()
    return places


# ------------------------------------------------------------------------------------- run
@contextlib.contextmanager
def _no_ray():
    """`ray.init` raises ReachedRayStart; no Ray session is ever seen as running."""
    import ray

    def init(*args, **kwargs):
        raise ReachedRayStart()

    saved = ray.init, ray.is_initialized
    ray.init, ray.is_initialized = init, lambda: False
    try:
        yield
    finally:
        ray.init, ray.is_initialized = saved


@contextlib.contextmanager
def _isolated_rewards():
    """Reward modules a case loads are forgotten afterwards (the registry is process-wide)."""
    from rewards import registry

    saved = dict(registry._REGISTRY)
    modules = set(sys.modules)
    try:
        yield
    finally:
        registry._REGISTRY.clear()
        registry._REGISTRY.update(saved)
        for name in set(sys.modules) - modules:
            if name.startswith("rewards_user_"):
                del sys.modules[name]


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.levelname} {record.getMessage()}")


def run_in_process(argv: list[str], cwd: Path) -> Result:
    from rl_safety.cli import main

    err, out, records = io.StringIO(), io.StringIO(), _Records()
    root = logging.getLogger()
    level, old_cwd = root.level, os.getcwd()
    root.addHandler(records)
    root.setLevel(logging.INFO)
    os.chdir(cwd)
    try:
        with _no_ray(), _isolated_rewards(), contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            try:
                code: int | str = main(argv)
            except ReachedRayStart:
                code = "start"
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
            except BaseException:  # noqa: BLE001 - a traceback is a result here
                code = "traceback"
                err.write(traceback.format_exc())
    finally:
        os.chdir(old_cwd)
        root.removeHandler(records)
        root.setLevel(level)
    return Result(code, err.getvalue(), "\n".join(records.lines))


def run_subprocess(argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> Result:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), **(env or {})}
    done = subprocess.run([sys.executable, "-m", "rl_safety", *argv], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)
    code: int | str = "traceback" if "Traceback (most recent call last)" in done.stderr and done.returncode != 2 \
        else done.returncode
    return Result(code, done.stderr, done.stderr)


def error_line(stderr: str) -> str:
    """The first line the command wrote as its error (log lines aside)."""
    lines = stderr.splitlines()
    return next((line for line in lines if line.startswith(("rl-safety", "Traceback", "usage:", "error:"))),
                lines[0] if lines else "")


def classify(case: dict[str, Any], result: Result, places: dict[str, str], T: Path) -> Result:
    expected = case.get("outcome", "error")
    result.error_line = error_line(result.stderr)
    if result.exit == "traceback":
        result.category, result.why = "traceback", result.stderr.strip().splitlines()[-1] if result.stderr else ""
        return result
    if expected == "error":
        want = _fill(case["expect"], places)
        if result.exit in ("start", 0):
            result.category = "silently wrong"
            result.why = "went on" if result.exit == "start" else "exited 0"
        elif result.exit == 2 and result.error_line.startswith(want) and (
                "Traceback" not in result.stderr or want.startswith("Traceback")):  # --debug asks for one
            result.category = "clear"
        else:
            result.category = "other error"
            result.why = f"exit {result.exit}: {result.error_line!r}, expected {want!r}"
        return result
    reached = result.exit == ("start" if expected == "start" else 0)
    problems = [] if reached else [f"exit {result.exit}: {result.error_line!r}"]
    for needle in _fill(case.get("expect_log", []), places):
        if needle not in result.log:
            problems.append(f"log lacks {needle!r}")
    for name, needle in _fill(case.get("expect_files", {}), places).items():
        path = T / name
        if needle is False:
            if path.exists():
                problems.append(f"{name} should not exist")
        elif not path.exists():
            problems.append(f"{name} missing")
        elif needle is not True and needle not in path.read_text():
            problems.append(f"{name} lacks {needle!r}")
    if not problems:
        result.category = "handled"
    elif not reached and result.exit == 2:
        result.category, result.why = "other error", "; ".join(problems)
    else:
        result.category, result.why = "silently wrong", "; ".join(problems)
    return result


def run_case(case: dict[str, Any], root: Path, model: Path) -> Result:
    T = root / case["id"].replace("/", "__")
    places = prepare(case, T, model)
    argv = _fill(case["argv"], places)
    if case.get("subprocess"):
        result = run_subprocess(argv, T, case.get("env"))
    else:
        result = run_in_process(argv, T)
    return classify(case, result, places, T)


def table(results: dict[str, Result]) -> str:
    commands = sorted({case_id.split("/")[0] for case_id in results})
    rows = ["| command | cases | " + " | ".join(CATEGORIES) + " |", "|---" * (len(CATEGORIES) + 2) + "|"]
    for command in [*commands, "all"]:
        chosen = [r for i, r in results.items() if command == "all" or i.split("/")[0] == command]
        counts = [sum(r.category == c for r in chosen) for c in CATEGORIES]
        rows.append(f"| {command} | {len(chosen)} | " + " | ".join(map(str, counts)) + " |")
    return "\n".join(rows)


def main() -> None:
    import tempfile

    from rl_safety.models.tiny import build_tiny_model

    only = sys.argv[1:]
    logging.getLogger().addHandler(logging.NullHandler())  # the CLI's basicConfig then adds no console handler
    with tempfile.TemporaryDirectory() as tmp:
        model = build_tiny_model(Path(tmp) / "model", tie_word_embeddings=True, seed=0)
        results = {}
        for case in load_cases():
            if only and not any(case["id"].startswith(o) for o in only):
                continue
            results[case["id"]] = result = run_case(case, Path(tmp) / "cases", model)
            print(f"{result.category:15} {case['id']:45} {result.error_line[:150]}"
                  + (f"\n{'':15} why: {result.why[:300]}" if result.why else ""), file=sys.stderr)
        print(table(results))


if __name__ == "__main__":
    main()
