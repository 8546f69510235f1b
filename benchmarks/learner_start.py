"""What a CPU learner start costs and compiles: DeepSpeed's own `init_distributed` against
rl-safety's (`rl_safety.learner.model.init_distributed`), each in a fresh process with
an empty torch-extensions directory, and again with a stale build lock in it (what a start killed
during DeepSpeed's JIT build leaves behind).

    python benchmarks/learner_start.py [--timeout 120]

Prints one row per start: the seconds `init_distributed` took, the extensions it built, and the
exit status (124: still waiting when the timeout killed it). Heavy: run it alone (flock).
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

START = """
import os, sys, time
os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[2])
import deepspeed, torch
t = time.perf_counter()
if sys.argv[1] == "rl-safety":
    from rl_safety.learner.model import init_distributed
    init_distributed(0, 1, "127.0.0.1", int(sys.argv[2]), use_gpu=False)
else:
    deepspeed.init_distributed(dist_backend="gloo")
print(f"init_distributed {time.perf_counter() - t:.1f}", flush=True)
model = torch.nn.Linear(8, 1)
engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(model.parameters()),
                                  config={"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 2}})
engine.backward(engine(torch.randn(1, 8)).sum())
engine.step()
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(kind: str, stale_lock: bool, timeout: float) -> tuple[str, str, int]:
    with tempfile.TemporaryDirectory() as extensions:
        if stale_lock:
            (Path(extensions) / "deepspeed_shm_comm").mkdir()
            (Path(extensions) / "deepspeed_shm_comm" / "lock").touch()
        env = {**os.environ, "TORCH_EXTENSIONS_DIR": extensions,
               "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        try:
            done = subprocess.run([sys.executable, "-c", START, kind, str(free_port())], env=env,
                                  capture_output=True, text=True, timeout=timeout)
            status, out = done.returncode, done.stdout
        except subprocess.TimeoutExpired as err:
            status, out = 124, (err.stdout or b"").decode() if isinstance(err.stdout, bytes) else (err.stdout or "")
        built = sorted(p.parent.name for p in Path(extensions).glob("*/*.so"))
        seconds = re.search(r"init_distributed ([\d.]+)", out)
    return (seconds.group(1) + " s" if seconds else "-"), ", ".join(built) or "nothing", status


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--timeout", type=float, default=120, help="seconds before a start counts as hung")
    args = parser.parse_args()
    print("| init_distributed | stale lock | seconds | built | exit |\n|---|---|---|---|---|")
    for kind in ("deepspeed", "rl-safety"):
        for stale in (False, True):
            seconds, built, status = start(kind, stale, args.timeout)
            print(f"| {kind} | {'yes' if stale else 'no'} | {seconds} | {built} | {status} |", flush=True)


if __name__ == "__main__":
    main()
