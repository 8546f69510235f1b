"""The cost ledger of a run: what it took, written to `RUN/cost.json`.

    wall_time_s              the command's wall time (summed over the segments of a resumed run)
    devices                  {"kind": "gpu"|"cpu", "name": model name, "count": devices held}
    device_hours             {device name: count x wall hours}  (held, not busy: what a cluster bills)
    tokens                   generated, prefilled (prompt tokens fed to generation), trained
                             (prompt + response tokens of every sequence in every optimizer pass),
                             forward_only (logprob passes without a backward: old/reference policy)
    flops_estimate           6*N*trained + 2*N*(generated + prefilled + forward_only), N = parameters;
                             an ESTIMATE: it ignores attention's quadratic term and LoRA's cheaper
                             backward, and counts held devices' idle time as nothing
    phase_time_s             wall seconds per phase (generation, reward, logprobs, train, ...)
    peak_memory_gb           per process (driver, each actor): peak RSS, its children's RSS at the
                             end (vLLM's engine core), GPU peak allocated / device memory in use

Every command records the same way:

    ledger = CostLedger(run_dir, "sft", model_path=cfg.model.path, resume=False)
    ledger.set_devices("cpu", count=4)            # or "gpu"; name defaults to what is detected
    with ledger.phase("train"):
        ...
        ledger.add_tokens(trained=n)             # generated= / prefilled= / forward_only=
    ledger.finish(actors={"rank-0": handle})     # also fine without Ray: finish()

`write()` may be called any time (GRPO writes after every step, so a crashed run keeps its cost);
`finish()` adds peak memory and marks the ledger complete.
"""

from __future__ import annotations

import json
import platform
import resource
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

FLOPS_NOTE = ("estimate: 6*N*tokens_trained + 2*N*(tokens_generated + tokens_prefilled + tokens_forward_only), "
              "N = model parameters; ignores attention's sequence-length term and LoRA's cheaper backward")
TOKEN_KINDS = ("generated", "prefilled", "trained", "forward_only")


def count_parameters(model_path: str | Path) -> int | None:
    """Parameters of a Hugging Face checkpoint directory, from its safetensors headers (no weights
    are read); None when there are none (a hub name: pass `parameters=` yourself)."""
    files = sorted(Path(model_path).glob("*.safetensors")) if Path(model_path).is_dir() else []
    if not files:
        return None
    total = 0
    for file in files:
        with file.open("rb") as f:
            size = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(size))
        for name, entry in header.items():
            if name != "__metadata__":
                count = 1
                for dim in entry["shape"]:
                    count *= dim
                total += count
    return total


def _peak_rss_gb() -> float:
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**30


def process_peak_memory(*_: Any, include_children: bool = True) -> dict[str, float]:
    """Memory of this process in GiB: its peak RSS; the current RSS of its child processes (vLLM
    runs its engine core in one: model and KV cache live there, allocated up front); with CUDA,
    this process's peak allocated memory and the memory in use on its device now (all processes).
    Takes and ignores positional arguments so that it runs as
    `actor.__ray_call__.remote(process_peak_memory)`. The driver leaves its children out: when it
    started Ray they are Ray's own daemons, not the workload."""
    peak = {"rss_gb": round(_peak_rss_gb(), 3)}
    try:
        import psutil

        children = psutil.Process().children(recursive=True) if include_children else []
        if children:
            peak["children_rss_now_gb"] = round(sum(c.memory_info().rss for c in children) / 2**30, 3)
    except Exception:  # psutil missing or a child exited meanwhile: the figure is optional
        pass
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        if torch.cuda.is_initialized():
            peak["gpu_allocated_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
        if include_children or torch.cuda.is_initialized():  # no CUDA context just to measure
            free, total = torch.cuda.mem_get_info()
            peak["gpu_device_used_now_gb"] = round((total - free) / 2**30, 3)
    return peak


def device_name(kind: str) -> str:
    """A device model name: the GPU's (from Ray's accelerator type, else torch) or the CPU's."""
    if kind == "gpu":
        try:
            import ray

            if ray.is_initialized():
                types = [k.split(":", 1)[1] for k in ray.cluster_resources() if k.startswith("accelerator_type:")]
                if types:
                    return types[0]
        except ImportError:
            pass
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "gpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return "cpu: " + line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "cpu: " + (platform.processor() or platform.machine())


class CostLedger:
    def __init__(self, run_dir: str | Path, command: str, *, model_path: str | Path | None = None,
                 parameters: int | None = None, resume: bool = False, filename: str = "cost.json") -> None:
        """`command`: grpo, sft, dgr, thinksafe, eval. With `resume` the totals of an existing
        ledger are carried on (a resumed run's cost includes the work lost to the crash)."""
        self.path = Path(run_dir) / filename
        self.started = time.time()
        self.data: dict[str, Any] = {
            "command": command, "model": str(model_path) if model_path is not None else None,
            "parameters": parameters if parameters is not None else (count_parameters(model_path) if model_path else None),
            "segments": 0, "wall_time_s": 0.0, "devices": None, "device_hours": {},
            "tokens": {kind: 0 for kind in TOKEN_KINDS}, "phase_time_s": {}, "peak_memory_gb": {},
            "complete": False,
        }
        if resume and self.path.exists():
            previous = json.loads(self.path.read_text())
            self.data.update({k: previous[k] for k in ("wall_time_s", "device_hours", "tokens", "phase_time_s",
                                                       "segments", "peak_memory_gb") if k in previous})
        self._base_wall = self.data["wall_time_s"]
        self._base_device_hours = dict(self.data["device_hours"])
        self.data["segments"] += 1

    # --------------------------------------------------------------------------- recording
    def set_devices(self, kind: str, count: int, name: str | None = None) -> None:
        """The devices this command holds for its whole wall time (device-hours = count x hours)."""
        if kind not in ("cpu", "gpu"):
            raise ValueError(f"device kind {kind!r}: expected 'cpu' or 'gpu'")
        self.data["devices"] = {"kind": kind, "name": name or device_name(kind), "count": int(count)}

    def add_tokens(self, **counts: int | float) -> None:
        for kind, value in counts.items():
            if kind not in TOKEN_KINDS:
                raise ValueError(f"unknown token kind {kind!r}; expected one of {TOKEN_KINDS}")
            self.data["tokens"][kind] += int(value)

    def add_phase_times(self, seconds: dict[str, float]) -> None:
        """Add wall seconds per phase; a "timing/" prefix (GRPO's metric names) is dropped."""
        for name, value in seconds.items():
            key = name.removeprefix("timing/")
            self.data["phase_time_s"][key] = self.data["phase_time_s"].get(key, 0.0) + float(value)

    @contextmanager
    def phase(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add_phase_times({name: time.perf_counter() - start})

    # ----------------------------------------------------------------------------- output
    def summary(self) -> dict[str, Any]:
        data = json.loads(json.dumps(self.data))
        wall = self._base_wall + time.time() - self.started
        data["wall_time_s"] = round(wall, 3)
        hours = dict(self._base_device_hours)
        devices = data["devices"]
        if devices:
            segment_hours = devices["count"] * (time.time() - self.started) / 3600
            hours[devices["name"]] = hours.get(devices["name"], 0.0) + segment_hours
        data["device_hours"] = {k: round(v, 6) for k, v in hours.items()}
        data["phase_time_s"] = {k: round(v, 3) for k, v in data["phase_time_s"].items()}
        n, t = data["parameters"], data["tokens"]
        if n:
            train = 6 * n * t["trained"]
            forward = 2 * n * (t["generated"] + t["prefilled"] + t["forward_only"])
            data["flops_estimate"] = {"total": float(train + forward), "training": float(train),
                                      "generation_and_forward": float(forward), "note": FLOPS_NOTE}
        else:
            data["flops_estimate"] = {"total": None, "note": "parameter count unknown: " + FLOPS_NOTE}
        return data

    def write(self) -> Path:
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.summary(), indent=1) + "\n")
        tmp.rename(self.path)
        return self.path

    def record_memory(self, actors: dict[str, Any] | None = None) -> None:
        """Peak memory of this process and of each Ray actor in `actors` that still answers
        (call before the actors are killed); across resumed segments the larger figure stays."""
        peaks = {"driver": process_peak_memory(include_children=False)}
        if actors:
            import ray

            futures = {name: handle.__ray_call__.remote(process_peak_memory) for name, handle in actors.items()}
            for name, future in futures.items():
                try:
                    peaks[name] = ray.get(future, timeout=60)
                except Exception as err:  # a dead actor must not lose the rest of the ledger
                    peaks[name] = {"error": type(err).__name__}
        for name, peak in peaks.items():
            old = self.data["peak_memory_gb"].get(name, {})
            self.data["peak_memory_gb"][name] = {k: max(v, old.get(k, 0)) if isinstance(v, float) else v
                                                 for k, v in peak.items()}

    def finish(self, actors: dict[str, Any] | None = None, complete: bool = True) -> Path:
        """Record peak memory (`record_memory`) and write the ledger; `complete=False` for a
        run that failed."""
        self.record_memory(actors)
        self.data["complete"] = complete
        return self.write()

