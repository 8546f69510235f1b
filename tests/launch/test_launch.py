"""The launch scripts and manifest: shell syntax, dry runs for a faked allocation (every command,
not only GRPO), the RayJob manifest's entrypoint. Nothing here starts Ray."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rl_safety.config import GRPOConfig, load_config
from tests.conftest import REPO

LAUNCH = REPO / "launch"
SCRIPTS = ["local_head.sh", "ray_job_submit.sh", "slurm.sbatch"]


def dry_run(script: str, *args: str, **env: str) -> list[str]:
    """The lines the script prints under DRY_RUN=1."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RAY_"))}
    environ.update(DRY_RUN="1", PYTHON=sys.executable, **env)
    result = subprocess.run(["bash", str(LAUNCH / script), *args], env=environ, cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


@pytest.mark.parametrize("script", SCRIPTS)
def test_shell_syntax(script):
    result = subprocess.run(["bash", "-n", str(LAUNCH / script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("script", SCRIPTS)
def test_without_a_config_the_script_prints_its_usage(script):
    result = subprocess.run(["bash", str(LAUNCH / script)], capture_output=True, text=True,
                            env={k: v for k, v in os.environ.items() if not k.startswith("SLURM_")})
    assert result.returncode == 2
    assert "COMMAND ARGS..." in result.stderr and "grpo --config CONFIG [key=value ...] [--resume]" in result.stderr


@pytest.mark.parametrize("script", SCRIPTS)
def test_an_old_style_call_without_a_command_is_refused_naming_the_commands(script):
    result = subprocess.run(["bash", str(LAUNCH / script), "configs/c.yaml"], capture_output=True, text=True,
                            env={**os.environ, "DRY_RUN": "1", "RAY_ADDRESS": "http://h:8265",
                                 "SLURM_JOB_NODELIST": "a1", "SLURM_NNODES": "1"})
    assert result.returncode == 2
    assert "unknown command 'configs/c.yaml'" in result.stderr and "grpo, sft, dgr, thinksafe or eval" in result.stderr


def test_slurm_dry_run_starts_head_then_workers_then_the_job():
    lines = dry_run("slurm.sbatch", "grpo", "--config", "configs/grpo_r1distill_qwen_1.5b_safety.yaml",
                    "learner.num_ranks=8", "--resume", SLURM_JOB_NODELIST="gpu[07-08]", SLURM_NNODES="2", SLURM_SUBMIT_DIR="/shared/me",
                    SLURM_CPUS_PER_TASK="64")
    commands = [shlex.split(line) for line in lines if not line.startswith("#")]
    token, head, worker, job = commands
    assert token == ["ray", "get-auth-token", "--generate", ">/dev/null"]  # before any node starts
    assert "--dashboard-host=127.0.0.1" in head
    assert head[:5] == ["srun", "--nodes=1", "--ntasks=1", "-w", "gpu07"]
    assert head[5:9] == ["ray", "start", "--head", "--block"] and "--port=6379" in head
    assert {"--num-gpus=8", "--num-cpus=64"} <= set(head) and {"--num-gpus=8", "--num-cpus=64"} <= set(worker)
    assert worker[:5] == ["srun", "--nodes=1", "--ntasks=1", "-w", "gpu08"]
    assert worker[5:8] == ["ray", "start", "--block"] and "--address=gpu07:6379" in worker
    assert job[1:] == ["-m", "rl_safety", "grpo", "cluster.address=auto", "run.output_dir=/shared/me/runs", "--config",
                       "configs/grpo_r1distill_qwen_1.5b_safety.yaml", "learner.num_ranks=8", "--resume"]
    # Workers start once the head answers; the job once both nodes joined.
    assert [line for line in lines if line.startswith("# wait")] == [
        "# wait until 1 Ray node(s) joined gpu07:6379", "# wait until 2 Ray node(s) joined gpu07:6379"]
    assert lines[-2:] == ["# wait until 2 Ray node(s) joined gpu07:6379", lines[-1]]
    assert lines.index("# wait until 1 Ray node(s) joined gpu07:6379") < lines.index(shlex.join(worker) + " ")


def test_slurm_dry_run_expands_a_mixed_node_list():
    lines = dry_run("slurm.sbatch", "grpo", "--config", "c.yaml", SLURM_JOB_NODELIST="a[1-2,09],b7", SLURM_NNODES="4")
    targets = [shlex.split(line)[4] for line in lines if line.startswith("srun")]
    assert targets == ["a1", "a2", "a09", "b7"]


def test_local_head_dry_run_points_the_job_at_the_head_it_starts():
    lines = dry_run("local_head.sh", "grpo", "--config", "c.yaml", "run.total_steps=2", RAY_PORT="6390", NUM_CPUS="8")
    token, head, job = (shlex.split(line) for line in lines)
    assert token[:3] == ["ray", "get-auth-token", "--generate"]
    assert head[:4] == ["setsid", "ray", "start", "--head"] and {"--port=6390", "--num-cpus=8"} <= set(head)
    assert "--dashboard-host=127.0.0.1" in head  # the job API is not on the network
    assert job[1:] == ["-m", "rl_safety", "grpo", "cluster.address=127.0.0.1:6390", "--config", "c.yaml",
                       "run.total_steps=2"]


@pytest.mark.parametrize("command,args", [
    ("sft", ["--config", "configs/sft_r1distill_qwen_1.5b_directrefusal.yaml", "--resume"]),
    ("dgr", ["--config", "configs/dgr_r1distill_qwen_7b_r1act.yaml", "output.path=/shared/d.jsonl"]),
    ("thinksafe", ["--config", "configs/thinksafe_qwen3_8b.yaml"]),
    ("eval", ["--model", "/shared/runs/x/final", "--suite", "default", "--output", "/shared/evals/x"]),
])
def test_every_command_runs_on_the_cluster_the_launcher_names(command, args):
    """Each launcher's job line for sft / dgr / thinksafe / eval is that command with the cluster's
    address, and the config (or suite) it names validates with it: the command runs there."""
    from rl_safety.config import SFTConfig
    from rl_safety.config.refine import DGRConfig, ThinkSafeConfig
    from rl_safety.eval.harness import find_suite
    from rl_safety.eval.suite import Suite

    launched = {"local_head.sh": dry_run("local_head.sh", command, *args)[-1],
                "ray_job_submit.sh": dry_run("ray_job_submit.sh", command, *args, RAY_ADDRESS="http://h:8265")[-1],
                "slurm.sbatch": dry_run("slurm.sbatch", command, *args, SLURM_JOB_NODELIST="a1", SLURM_NNODES="1")[-1]}
    addresses = {"local_head.sh": "127.0.0.1:6379", "ray_job_submit.sh": "auto", "slurm.sbatch": "auto"}
    for script, line in launched.items():
        argv = shlex.split(line)
        argv = argv[argv.index("rl_safety") + 1:]
        assert argv[0] == command
        overrides = [a for a in argv[1:] if "=" in a and not a.startswith("-")]
        if command == "eval":
            cfg = load_config(Suite, find_suite(argv[argv.index("--suite") + 1]), overrides)
        else:
            schema = {"sft": SFTConfig, "dgr": DGRConfig, "thinksafe": ThinkSafeConfig}[command]
            cfg = load_config(schema, REPO / argv[argv.index("--config") + 1], overrides)
        assert cfg.cluster.address == addresses[script], (script, argv)
        if command == "sft" and script != "local_head.sh":  # runs on shared storage
            assert cfg.run.output_dir.startswith("/shared") or cfg.run.output_dir.endswith("/runs")


def test_ray_job_submit_dry_run_ships_the_repository_as_working_dir():
    (line,) = dry_run("ray_job_submit.sh", "grpo", "--config", "c.yaml", "--resume", RAY_ADDRESS="http://head:8265",
                      RUN_DIR="/nfs/runs")
    args = shlex.split(line)
    split = args.index("--")
    options = dict(a.split("=", 1) for a in args[3:split])
    assert args[:3] == ["ray", "job", "submit"] and options["--address"] == "http://head:8265"
    assert Path(options["--working-dir"]) == REPO
    assert ".venv" in json.loads(options["--runtime-env-json"])["excludes"]
    assert args[split + 1:] == ["python", "-m", "rl_safety", "grpo", "cluster.address=auto", "run.output_dir=/nfs/runs",
                                "--config", "c.yaml", "--resume"]


def test_ray_job_submit_dry_run_masks_secrets():
    env = json.dumps({"env_vars": {"HF_TOKEN": "hf_secret123", "WANDB_API_KEY": "w-secret"}, "pip": ["x"]})
    (line,) = dry_run("ray_job_submit.sh", "grpo", "--config", "c.yaml", RAY_ADDRESS="https://me:p4ss@head:8265",
                      RUNTIME_ENV_JSON=env)
    assert "secret" not in line and "p4ss" not in line
    options = dict(a.split("=", 1) for a in shlex.split(line)[3:] if a.startswith("--") and "=" in a)
    assert json.loads(options["--runtime-env-json"]) == {"env_vars": {"HF_TOKEN": "***", "WANDB_API_KEY": "***"},
                                                         "pip": ["x"]}
    assert options["--address"] == "https://me:***@head:8265"


def test_every_launch_path_requires_auth_for_the_dashboard():
    """Each way of starting a cluster either keeps the dashboard / job API on 127.0.0.1 or turns
    token authentication on (the job API runs any code it is sent)."""
    for script in ("local_head.sh", "slurm.sbatch"):
        text = (LAUNCH / script).read_text()
        assert "export RAY_AUTH_MODE=${RAY_AUTH_MODE:-token}" in text and "--dashboard-host=127.0.0.1" in text
    cluster = yaml.safe_load((LAUNCH / "kuberay_rayjob.yaml").read_text())["spec"]["rayClusterSpec"]
    assert cluster["authOptions"] == {"mode": "token"}
    hosts = [g["rayStartParams"].get("dashboard-host") for g in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]]
    assert all(h in (None, "127.0.0.1") or cluster["authOptions"]["mode"] == "token" for h in hosts)


def test_rayjob_manifest_runs_rl_safety_grpo_on_a_cluster_that_fits_it():
    manifest = yaml.safe_load((LAUNCH / "kuberay_rayjob.yaml").read_text())
    assert (manifest["apiVersion"], manifest["kind"]) == ("ray.io/v1", "RayJob")
    entrypoint = shlex.split(manifest["spec"]["entrypoint"])
    assert entrypoint[:3] == ["rl-safety", "grpo", "--config"]
    config_path, overrides = entrypoint[3], entrypoint[4:]
    assert "cluster.address=auto" in overrides
    cfg = load_config(GRPOConfig, REPO / config_path, overrides)  # the config and overrides are valid

    # Every pod mounts the shared volume that holds run.output_dir.
    cluster = manifest["spec"]["rayClusterSpec"]
    pods = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]
    for pod in pods:
        mounts = [m["mountPath"] for c in pod["spec"]["containers"] for m in c["volumeMounts"]]
        assert any(cfg.run.output_dir.startswith(m + "/") for m in mounts), mounts
    # The GPU workers hold the separate layout: one GPU per learner rank and per rollout worker.
    gpus = sum(int(g["replicas"]) * int(g["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])
               for g in cluster["workerGroupSpecs"])
    assert cfg.learner.num_ranks + cfg.rollout.num_engines * cfg.rollout.tensor_parallel_size <= gpus


def test_the_manifest_image_is_a_parameter_and_the_dockerfiles_copy_what_exists():
    text = (LAUNCH / "kuberay_rayjob.yaml").read_text()
    manifest = yaml.safe_load(text)
    cluster = manifest["spec"]["rayClusterSpec"]
    pods = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]
    assert {c["image"] for pod in pods for c in pod["spec"]["containers"]} == {"${RL_SAFETY_IMAGE}"}
    filled = subprocess.run(["envsubst", "$RL_SAFETY_IMAGE"], input=text, capture_output=True, text=True,
                            env={"RL_SAFETY_IMAGE": "registry.example/rl-safety:gpu"}, check=True).stdout
    assert "${" not in filled and filled.count("image: registry.example/rl-safety:gpu") == len(pods)
    for dockerfile in ("Dockerfile.gpu", "Dockerfile.cpu"):
        lines = (REPO / "docker" / dockerfile).read_text().splitlines()
        for line in lines:
            if line.startswith("COPY "):
                for source in line.split()[1:-1]:
                    assert (REPO / source).exists(), (dockerfile, source)
        assert any("scripts/setup.sh" in line for line in lines if line.startswith("RUN "))
        assert f"docker build -f docker/{dockerfile}" in (REPO / "README.md").read_text()
