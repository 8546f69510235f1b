"""A non-editable install works: the package is built as a wheel, installed into a fresh venv
(which reuses the dependencies installed here, through a .pth file), and run from outside the
repository: the configs the code reads (eval suites, toy configs) ship inside it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from tests.conftest import REPO


def test_a_wheel_installed_elsewhere_has_its_suites_and_toy_configs(tmp_path):
    source = tmp_path / "source"  # a copy: building writes build/ and *.egg-info next to the sources
    for name in ("rl_safety", "rewards"):
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist"), str(source)], check=True, capture_output=True, timeout=600)
    (wheel,) = (tmp_path / "dist").glob("rl_safety-*.whl")

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "reuse_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    subprocess.run([python, "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)], check=True,
                   capture_output=True, env=env, cwd=tmp_path, timeout=600)

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(args, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)

    for command in (["eval", "--suite", "default", "--help"], ["toy", "--help"]):
        result = run(str(venv / "bin" / "rl-safety"), *command)
        assert result.returncode == 0, result.stderr[-3000:]
    assert "default" in run(str(venv / "bin" / "rl-safety"), "eval", "--help").stdout  # the shipped suites
    probe = run(str(python), "-c", """
import rl_safety
from rl_safety.config import GRPOConfig, load_config
from rl_safety.eval.harness import find_suite
from rl_safety.eval.suite import Suite
from rl_safety.toy.grpo_arm import GRPO_CONFIG
suite = load_config(Suite, find_suite("default"), ["data_root=/nonexistent"])
load_config(GRPOConfig, GRPO_CONFIG)
print(rl_safety.__file__, find_suite("default"), [b.name for b in suite.benchmarks])
""")
    assert probe.returncode == 0, probe.stderr[-3000:]
    installed, suite_file, benchmarks = probe.stdout.split(maxsplit=2)
    assert installed.startswith(str(site)) and suite_file.startswith(str(site))  # not the repository's
    assert "xstest_safe" in benchmarks and "gsm8k" in benchmarks
