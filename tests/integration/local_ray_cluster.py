"""A Ray cluster of several nodes on this machine, for tests: each node is a `ray start --block`
process of its own (its own resources, ports and temp dir), joined through 127.0.0.1. (Ray
registers each node under the machine's own interface address, as a local `ray.init()` does;
nothing leaves the machine.) Teardown ends the nodes it started by their process group, never
with `ray stop`, which stops every Ray on the machine, other people's included.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RAY = Path(sys.executable).parent / "ray"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalRayCluster:
    def __init__(self) -> None:
        # Ray's socket paths must stay short: not under pytest's long tmp_path.
        self.root = Path(tempfile.mkdtemp(prefix="rlray-", dir="/tmp"))
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0",
                    "RAY_AUTH_MODE": "token"}  # the token of ~/.ray/auth_token, on every side
        self.env.pop("RAY_ADDRESS", None)
        self.nodes: list[subprocess.Popen] = []

    def add_node(self, resources: dict[str, float], num_cpus: int) -> None:
        """The first node added is the head."""
        index = len(self.nodes)
        args = [str(RAY), "start", "--block", f"--num-cpus={num_cpus}",
                f"--resources={json.dumps(resources)}", f"--temp-dir={self.root}/n{index}",
                f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}",
                f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
                f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
                "--object-store-memory=200000000", "--disable-usage-stats"]
        if index == 0:
            args += ["--head", f"--port={self.port}", f"--ray-client-server-port={free_port()}",
                     "--include-dashboard=false"]
        else:
            args += [f"--address={self.address}"]
        log = (self.root / f"node{index}.log").open("w")
        # A session of its own: teardown ends exactly this node's processes (its group).
        self.nodes.append(subprocess.Popen(args, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                           start_new_session=True))
        self.wait_for_nodes(index + 1)

    def wait_for_nodes(self, count: int, timeout_s: float = 120) -> None:
        probe = ("import ray; ray.init(address='{a}', logging_level='ERROR'); "
                 "print(sum(n['Alive'] for n in ray.nodes()))").format(a=self.address)
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            for node in self.nodes:
                if node.poll() is not None:
                    raise RuntimeError(f"a ray node exited ({node.returncode}); logs in {self.root}")
            out = subprocess.run([sys.executable, "-c", probe], env=self.env, capture_output=True, text=True)
            if out.returncode == 0 and out.stdout.strip().splitlines()[-1:] == [str(count)]:
                return
            time.sleep(1)
        raise TimeoutError(f"{count} Ray nodes not up after {timeout_s}s; logs in {self.root}")

    def stop(self) -> None:
        for node in reversed(self.nodes):
            try:
                os.killpg(node.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            node.wait()
        self.nodes.clear()
        shutil.rmtree(self.root, ignore_errors=True)


def grpo_command(config: Path, *overrides: str, resume: bool = False) -> list[str]:
    return [sys.executable, "-m", "rl_safety", "grpo", "--config", str(config), *overrides,
            *(["--resume"] if resume else [])]


def run_grpo_cli(config: Path, cluster: LocalRayCluster, *overrides: str, resume: bool = False,
                 timeout_s: float = 600) -> subprocess.CompletedProcess:
    """`rl-safety grpo` as a user runs it against the cluster: a driver process of its own."""
    from tests.conftest import REPO

    return subprocess.run(grpo_command(config, f"cluster.address={cluster.address}", *overrides, resume=resume),
                          cwd=REPO, env=cluster.env, capture_output=True, text=True, timeout=timeout_s)
