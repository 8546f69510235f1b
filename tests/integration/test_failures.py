"""Surviving failures on a Ray cluster: a rollout engine or a learner that dies mid-run ends the
run with an error naming it and its node, `--resume` then finishes with the metrics of a run that
never failed (or, with `run.max_restarts`, the run restarts its actors and goes on by itself); a
driver killed inside a checkpoint commit leaves the previous checkpoint in charge.

Every run is the real command line (`python -m rl_safety grpo`, its own driver process) against
the two-node cluster of tests/integration/conftest.py: 4 steps, a checkpoint after steps 1 and 3.
The trainer is deterministic (seeded prompt order and per-prompt sampling seeds, optimizer state
in the checkpoint), so a resumed run must reproduce the uninterrupted one step for step.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.integration.local_ray_cluster import grpo_command, run_grpo_cli
from tests.integration.test_grpo_trainer import read_metrics, write_config

pytestmark = pytest.mark.integration

OVERRIDES = {"run.total_steps": 4, "run.save_every": 2, "run.keep_checkpoints": 3, "learner.num_ranks": 2}
COMPARED = ("reward/char_fraction/mean", "response_length/mean", "train/loss", "train/grad_norm",
            "rollout_learner_logprob_diff")


# The driver, with one change: it SIGKILLs itself at the last instant of step 3's checkpoint
# commit, when the learners' files and driver_state.json are all written and only the rename of
# `step_3.partial` to `step_3` (the commit) is left.
CRASH_IN_COMMIT = """
import os, signal, sys
from pathlib import Path
rename = Path.rename
def rename_or_die(self, target):
    if self.name == "step_3.partial":
        os.kill(os.getpid(), signal.SIGKILL)
    return rename(self, target)
Path.rename = rename_or_die
from rl_safety.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def crashed_in_commit(tmp_path_factory, tiny_models, prompt_file, two_node_cluster):
    """(config, run dir, metrics) of a run killed inside its final checkpoint commit. All four
    steps ran uninterrupted before that: its metrics are the reference for every resumed run."""
    root = tmp_path_factory.mktemp("crashed_in_commit")
    config = write_config(root, tiny_models["tied"], prompt_file, OVERRIDES)
    command = grpo_command(config, f"cluster.address={two_node_cluster.address}")
    crashed = subprocess.run([sys.executable, "-c", CRASH_IN_COMMIT, *command[3:]], cwd=REPO,
                             env=two_node_cluster.env, capture_output=True, text=True, timeout=600)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-4000:]
    run_dir = root / "runs" / "t"
    return config, run_dir, read_metrics(run_dir)


def assert_same_run(resumed: list[dict], full: list[dict]) -> None:
    assert [m["step"] for m in resumed] == [0, 1, 2, 3]
    for key in COMPARED:
        for step in (2, 3):
            assert resumed[step][key] == pytest.approx(full[step][key], rel=1e-4, abs=1e-6), (key, step)


def wait_for(condition, process: subprocess.Popen, log: Path, timeout_s: float = 300) -> None:
    deadline = time.time() + timeout_s
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"the run ended first:\n{log.read_text()[-4000:]}")
        if time.time() > deadline:
            raise TimeoutError("the run did not get there in time")
        time.sleep(0.1)


def start_and_kill(config: Path, cluster, victim: str, *overrides: str) -> tuple[subprocess.Popen, str, dict]:
    """Start the run; right after step 1's checkpoint is committed (the driver moves on to step
    2) SIGKILL the actor's process, as the kernel's OOM killer or a lost node would. Returns the
    finished driver, its stderr, and the actor's name and placement."""
    run_dir = config.parent / "runs" / "t"
    log = config.parent / "driver.log"  # a file, not a pipe: a full pipe would stall the driver
    with log.open("w") as out:
        driver = subprocess.Popen(grpo_command(config, f"cluster.address={cluster.address}", *overrides),
                                  cwd=REPO, env=cluster.env, stdout=subprocess.DEVNULL, stderr=out)
    try:
        wait_for(lambda: (run_dir / "checkpoints" / "step_1" / "driver_state.json").exists(), driver, log)
        actors = json.loads((run_dir / "placement.json").read_text())["actors"]
        name = next(n for n in actors if n.startswith(victim + "-"))
        os.kill(actors[name]["pid"], signal.SIGKILL)
        driver.wait(timeout=300)
    finally:
        if driver.poll() is None:
            driver.kill()
    return driver, log.read_text(), {"name": name, **actors[name]}


# A dead rollout engine in the CI tier: the max_restarts test below (the same death, replaced).
@pytest.mark.parametrize("victim", [pytest.param("rollout-0", marks=pytest.mark.slow), "learner-1"])
def test_a_dead_actor_stops_the_run_naming_it_and_resume_finishes_it(
        tmp_path, tiny_models, prompt_file, two_node_cluster, crashed_in_commit, victim):
    config = write_config(tmp_path, tiny_models["tied"], prompt_file, OVERRIDES)
    run_dir = tmp_path / "runs" / "t"
    driver, stderr, actor = start_and_kill(config, two_node_cluster, victim)
    assert driver.returncode != 0
    print(next((line for line in stderr.splitlines() if "ActorFailure: step" in line), stderr[-2000:]))
    assert f"ActorFailure: step 2: actor {actor['name']} died on node {actor['node_id'][:12]}" in stderr, stderr[-4000:]
    assert f"last complete checkpoint: {run_dir / 'checkpoints' / 'step_1'} (after step 1)" in stderr

    resumed = run_grpo_cli(config, two_node_cluster, resume=True)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert f"resumed from {run_dir / 'checkpoints' / 'step_1'} at step 2" in resumed.stderr
    assert_same_run(read_metrics(run_dir), crashed_in_commit[2])


def test_with_max_restarts_a_lost_rollout_engine_is_replaced_and_the_run_goes_on(
        tmp_path, tiny_models, prompt_file, two_node_cluster, crashed_in_commit):
    config = write_config(tmp_path, tiny_models["tied"], prompt_file, OVERRIDES)
    run_dir = tmp_path / "runs" / "t"
    driver, stderr, actor = start_and_kill(config, two_node_cluster, "rollout-0", "run.max_restarts=1")
    assert driver.returncode == 0, stderr[-4000:]
    assert f"step 2: actor {actor['name']} died" in stderr and "restart 1 of run.max_restarts=1" in stderr
    restarted = json.loads((run_dir / "placement.json").read_text())["actors"]
    assert actor["name"] not in restarted  # a new engine (new name, new process) took over
    assert_same_run(read_metrics(run_dir), crashed_in_commit[2])


def test_a_driver_killed_during_a_checkpoint_commit_resumes_from_the_previous_checkpoint(
        two_node_cluster, crashed_in_commit):
    config, run_dir, full = crashed_in_commit
    checkpoints = run_dir / "checkpoints"
    partial = checkpoints / "step_3.partial"
    assert (partial / "driver_state.json").exists() and (partial / "deepspeed").is_dir()
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step_1", "step_3.partial"]

    # A new driver, the same run directory: the uncommitted step 3 is ignored, step 1 is used.
    resumed = run_grpo_cli(config, two_node_cluster, resume=True)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert f"resumed from {checkpoints / 'step_1'} at step 2" in resumed.stderr
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step_1", "step_3"]
    assert_same_run(read_metrics(run_dir), full)
