"""`benchmarks/gpu_check.py --device cpu`, as CI runs it: the learner's device path (batches built on
the CPU, moved to the learner's device, results back) and its numerics against plain PyTorch /
transformers, on a tiny model. A lent GPU machine runs the same script with `--device cuda`."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO

CHECKS = [
    "logprobs float32: learner vs transformers", "logprobs float32: result back on the CPU",
    "logprobs bfloat16: learner vs transformers", "logprobs bfloat16: result back on the CPU",
    "GRPO update ZeRO-2: grad norm", "GRPO update ZeRO-2: weight change", "GRPO update ZeRO-2: HF export",
    "GRPO update ZeRO-3: grad norm", "GRPO update ZeRO-3: weight change", "GRPO update ZeRO-3: HF export",
    "LoRA: the update moved the policy", "LoRA: merged HF export", "SFT step: loss", "SFT step: export",
]


@pytest.mark.integration
def test_gpu_check_passes_on_cpu():
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--device", "cpu"],
                            cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    table = result.stdout.split("\ncheck", 1)[1].splitlines()
    for check in CHECKS:  # every check ran and passed (a check that raised has its own "raised" row)
        rows = [line for line in table if line.startswith(check)]
        assert len(rows) == 1 and rows[0].endswith("yes"), (check, rows)
    assert f"{len(CHECKS)} of {len(CHECKS)} checks passed" in result.stdout
