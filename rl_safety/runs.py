"""A run directory: resolved config, metrics, sampled rollouts, atomic checkpoints, final export.

    RUN/config.yaml              the resolved config (defaults filled in)
    RUN/metrics.jsonl            one JSON object per step
    RUN/placement.json           the node (id, IP) and pid of every actor of the last start
    RUN/rollouts/step_N.jsonl    sampled rollouts of step N
    RUN/checkpoints/step_N/      DeepSpeed checkpoint + driver_state.json (complete ones only)
    RUN/final/                   Hugging Face export of the last policy
    RUN/cost.json                the cost ledger (rl_safety.ledger)
    RUN/eval/SUITE/              `rl-safety eval` results of RUN/final
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_PARTIAL = ".partial"


class RunDirectory:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.checkpoints = self.root / "checkpoints"
        self.rollouts = self.root / "rollouts"
        self.metrics_path = self.root / "metrics.jsonl"
        self._sinks: list[Any] = []

    def create(self, resume: bool) -> None:
        if self.metrics_path.exists() and not resume:
            raise FileExistsError(
                f"run directory {self.root} already holds a run: pass --resume to continue it, "
                "or set run.name / run.output_dir for a new one"
            )
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

    def truncate_metrics(self, last_step: int) -> None:
        """On resume, drop metric rows of steps after the checkpoint (they will be redone)."""
        if not self.metrics_path.exists():
            return
        rows = [line for line in self.metrics_path.read_text().splitlines()
                if line and json.loads(line)["step"] <= last_step]
        self.metrics_path.write_text("".join(r + "\n" for r in rows))

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
        """Make step `step`'s checkpoint visible: the driver state goes in last and the
        directory is renamed in one step, so a crash at any point leaves either the previous
        complete checkpoint or both, never a half-written one that looks complete."""
        partial = self.partial_path(step)
        tmp = partial / "driver_state.json.tmp"
        tmp.write_text(json.dumps(driver_state))
        tmp.rename(partial / "driver_state.json")
        final = self.checkpoints / f"step_{step}"
        if final.exists():
            shutil.rmtree(final)
        partial.rename(final)
        for old in self.complete_checkpoints()[:-keep]:
            shutil.rmtree(old)
        return final

    def complete_checkpoints(self) -> list[Path]:
        found = [p for p in self.checkpoints.glob("step_*")
                 if not p.name.endswith(_PARTIAL) and (p / "driver_state.json").exists()]
        return sorted(found, key=lambda p: int(p.name.removeprefix("step_")))

    def latest_checkpoint(self) -> tuple[Path, dict[str, Any]] | None:
        complete = self.complete_checkpoints()
        if not complete:
            return None
        return complete[-1], json.loads((complete[-1] / "driver_state.json").read_text())


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
