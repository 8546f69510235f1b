"""A run directory: resolved config, metrics, sampled rollouts, atomic checkpoints, final export.

    RUN/config.yaml              the resolved config (defaults filled in)
    RUN/metrics.jsonl            one JSON object per step
    RUN/placement.json           the node (id, IP) and pid of every actor of the last start; the judges
                                 the rewards start on first use (what, devices)
    RUN/rollouts/step_N.jsonl    sampled rollouts of step N
    RUN/checkpoints/step_N/      DeepSpeed checkpoint + driver_state.json + manifest.json (complete ones only)
    RUN/final/                   Hugging Face export of the last policy
    RUN/cost.json                the cost ledger (rl_safety.ledger)
    RUN/eval/SUITE/              `rl-safety eval` results of RUN/final

A checkpoint's `manifest.json` lists every file in it with its size and SHA-256, written when the
checkpoint is committed. Resuming uses the newest checkpoint whose files match their manifest
exactly (no file missing, changed or added); a damaged newer one is reported and passed over.
DeepSpeed checkpoints are pickles (`torch.load(weights_only=False)`): a file swapped into a run
directory would run code in every learner, so one that does not match is never loaded. The
manifest sits in the same directory, so it guards against damage and stray files, not against
someone who can rewrite the directory: keep run directories writable by their owner only.
Directories under checkpoints/ other than `step_N` (e.g. `step_3.bak`) are ignored.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from rl_safety.errors import UserError

log = logging.getLogger(__name__)

_PARTIAL = ".partial"
_STEP_DIR = re.compile(r"^step_(\d+)$")
MANIFEST = "manifest.json"
DRIVER_STATE = "driver_state.json"


class RunError(UserError):
    """A run directory that cannot be used as asked: it already holds a run, or holds nothing
    to resume from, or what it holds is damaged."""


class RunDirectory:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.checkpoints = self.root / "checkpoints"
        self.rollouts = self.root / "rollouts"
        self.metrics_path = self.root / "metrics.jsonl"
        self.damaged: dict[Path, str] = {}  # checkpoints `latest_checkpoint` passed over, and why
        self._sinks: list[Any] = []

    def create(self, resume: bool) -> None:
        self.check_usable(resume)
        for path in (self.root, self.checkpoints, self.rollouts):
            path.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------------------ metrics
    def add_tensorboard(self) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self._sinks.append(_TensorBoardSink(SummaryWriter(str(self.root / "tensorboard"))))

    def add_wandb(self, project: str, name: str, config: dict[str, Any]) -> None:
        import wandb

        self._sinks.append(_WandbSink(wandb.init(project=project, name=name, config=config,
                                                 dir=str(self.root), resume="allow")))

    def close(self) -> None:
        for sink in self._sinks:
            sink.close()
        self._sinks.clear()

    def log_metrics(self, step: int, metrics: dict[str, Any]) -> None:
        row = {"step": step, **{k: _plain(v) for k, v in metrics.items()}}
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        for sink in self._sinks:
            sink.log(step, metrics)

    def check_usable(self, resume: bool) -> None:
        """A new run needs a directory that holds no run; `--resume` one that does."""
        if resume and not self.root.is_dir():
            raise RunError(f"--resume: run directory {self.root} does not exist (check run.output_dir and run.name)")
        if not resume and self.metrics_path.exists():
            raise RunError(f"run directory {self.root} already holds a run: pass --resume to continue it, "
                           "or set run.name / run.output_dir for a new one")
        for path in (self.root, *self.root.parents):
            if path.exists():
                if not path.is_dir():
                    raise RunError(f"run directory {self.root}: {path} is a file, not a directory")
                break

    def read_metrics(self) -> list[dict[str, Any]]:
        """metrics.jsonl's rows. A torn last line (a crash while it was written) is dropped with a
        warning; a broken line before it is a RunError naming the line."""
        if not self.metrics_path.exists():
            return []
        lines = self.metrics_path.read_text(encoding="utf-8", errors="replace").splitlines()
        rows = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                if not isinstance(row, dict) or not isinstance(row.get("step"), int):
                    raise ValueError("no integer 'step'")
            except ValueError as err:
                if number == len(lines):
                    log.warning("%s line %d is incomplete (a crash while writing it?): dropped", self.metrics_path, number)
                    continue
                raise RunError(f"{self.metrics_path} line {number}: not a metrics row ({err}); "
                               "repair or delete that line to resume") from None
            rows.append(row)
        return rows

    def truncate_metrics(self, last_step: int) -> None:
        """On resume, drop metric rows of steps after the checkpoint (they will be redone)."""
        if not self.metrics_path.exists():
            return
        rows = [row for row in self.read_metrics() if row["step"] <= last_step]
        self.metrics_path.write_text("".join(json.dumps(r) + "\n" for r in rows))

    def write_json(self, name: str, data: Any) -> None:
        (self.root / name).write_text(json.dumps(data, indent=1) + "\n")

    def write_rollouts(self, step: int, rows: list[dict[str, Any]]) -> None:
        with (self.rollouts / f"step_{step}.jsonl").open("w") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")

    # -------------------------------------------------------------------------- checkpoints
    def partial_path(self, step: int) -> Path:
        """Where learners write step `step`'s checkpoint before it is committed."""
        return self.checkpoints / f"step_{step}{_PARTIAL}"

    def partial_checkpoint(self, step: int) -> Path:
        """`partial_path(step)`, emptied of what an earlier attempt left there."""
        path = self.partial_path(step)
        if path.exists():
            shutil.rmtree(path)
        return path

    def commit_checkpoint(self, step: int, driver_state: dict[str, Any], keep: int) -> Path:
        """Make step `step`'s checkpoint visible: the driver state and then the manifest of every
        file go in last and the directory is renamed in one step, so a crash at any point leaves
        either the previous complete checkpoint or both, never a half-written one that looks
        complete."""
        partial = self.partial_path(step)
        _write_atomically(partial / DRIVER_STATE, json.dumps(driver_state))
        _write_atomically(partial / MANIFEST, json.dumps({"files": file_manifest(partial)}, indent=0))
        final = self.checkpoints / f"step_{step}"
        if final.exists():
            shutil.rmtree(final)
        partial.rename(final)
        for old in self.complete_checkpoints()[:-keep]:
            shutil.rmtree(old)
        return final

    def complete_checkpoints(self) -> list[Path]:
        """Committed checkpoints (`step_N` directories with a driver state), oldest first; not
        verified. Anything else under checkpoints/ is not ours and is ignored."""
        if not self.checkpoints.is_dir():
            return []
        found = [p for p in self.checkpoints.iterdir()
                 if _STEP_DIR.match(p.name) and p.is_dir() and (p / DRIVER_STATE).exists()]
        return sorted(found, key=lambda p: int(p.name.removeprefix("step_")))

    def latest_checkpoint(self) -> tuple[Path, dict[str, Any]] | None:
        """(directory, driver state) of the newest checkpoint that matches its manifest, or None.
        A newer damaged one is logged as a warning and passed over; `self.damaged` lists them."""
        self.damaged = {}
        for path in reversed(self.complete_checkpoints()):
            problem = checkpoint_problem(path)
            if problem is None:
                if self.damaged:
                    log.warning("using checkpoint %s, the newest intact one (%s)", path,
                                "; ".join(f"{p.name} is damaged: {why}" for p, why in self.damaged.items()))
                return path, json.loads((path / DRIVER_STATE).read_text())
            log.warning("checkpoint %s is damaged and will not be loaded: %s", path, problem)
            self.damaged[path] = problem
        return None


class _TensorBoardSink:
    def __init__(self, writer) -> None:
        self.writer = writer

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        for key, value in metrics.items():
            if isinstance(value, (int, float)):
                self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        self.writer.close()


class _WandbSink:
    def __init__(self, run) -> None:
        self.run = run

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        self.run.log(metrics, step=step)

    def close(self) -> None:
        self.run.finish()


def _plain(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.rename(path)


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def file_manifest(directory: Path) -> dict[str, dict[str, Any]]:
    """{relative path: {size, sha256}} of every file under `directory` except the manifest
    itself. Files are hashed in parallel (hashlib releases the GIL on large reads)."""
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST)
    with ThreadPoolExecutor(max_workers=8) as pool:
        digests = list(pool.map(_sha256, files))
    return {str(p.relative_to(directory)): {"size": p.stat().st_size, "sha256": d} for p, d in zip(files, digests)}


# Verdicts by the directory's listing (every file's name, size and mtime): a checkpoint is hashed
# once per process (the preflight, then the restore), and again as soon as any file changes.
_VERIFIED: dict[tuple, str | None] = {}


def checkpoint_problem(path: Path) -> str | None:
    """Why checkpoint directory `path` must not be loaded, or None if every file in it matches
    its manifest (and nothing else is there) and its driver state is readable."""
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        return f"no {MANIFEST} (not written by this version of rl-safety, or tampered with)"
    listing = tuple(sorted((str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns)
                           for p in path.rglob("*") if p.is_file()))
    key = (str(path), listing)
    if key not in _VERIFIED:
        _VERIFIED[key] = _manifest_mismatch(path, manifest_path)
    return _VERIFIED[key]


def _manifest_mismatch(path: Path, manifest_path: Path) -> str | None:
    try:
        expected = json.loads(manifest_path.read_text())["files"]
        assert isinstance(expected, dict)
    except (ValueError, KeyError, TypeError, AssertionError):
        return f"{MANIFEST} is not readable"
    present = {str(p.relative_to(path)) for p in path.rglob("*") if p.is_file() and p.name != MANIFEST}
    for name in sorted(present - expected.keys()):
        return f"{name} is not in the manifest (a file added after the checkpoint was written)"
    for name, want in sorted(expected.items()):
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        size = file.stat().st_size
        if size != want.get("size"):
            return f"{name} has {size} bytes, the manifest says {want.get('size')}"
    names = sorted(expected)
    with ThreadPoolExecutor(max_workers=8) as pool:
        digests = list(pool.map(_sha256, [path / n for n in names]))
    for name, digest in zip(names, digests):
        if digest != expected[name].get("sha256"):
            return f"{name} does not match its SHA-256 in the manifest"
    try:
        state = json.loads((path / DRIVER_STATE).read_text())
        assert isinstance(state.get("step"), int)
    except (ValueError, AttributeError, AssertionError):
        return f"{DRIVER_STATE} is not readable"
    return None


def resume_or_set_aside(root: str | Path) -> bool:
    """For a command that reruns a step on its own (`rl-safety toy table`): whether the unfinished
    run at `root` can be resumed (it has a complete checkpoint). One without a checkpoint is
    renamed ROOT.failed-TIMESTAMP (kept, not deleted) and the step starts afresh."""
    root = Path(root)
    if RunDirectory(root).latest_checkpoint() is not None:
        return True
    if root.exists():
        aside = root.with_name(f"{root.name}.failed-{time.strftime('%Y%m%d-%H%M%S')}")
        root.rename(aside)
        log.warning("%s had no complete checkpoint; moved to %s, starting afresh", root, aside)
    return False
