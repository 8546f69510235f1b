#!/usr/bin/env bash
# Submit an rl-safety GRPO job to a running Ray cluster (`ray job submit`).
#
#   RAY_ADDRESS=http://HEAD:8265 launch/ray_job_submit.sh CONFIG [key=value ...] [--resume]
#
# The repository is uploaded as the job's working directory (so CONFIG and `reward_modules`
# paths are relative to the repository root); every node must already have the environment
# (`bash scripts/setup.sh gpu`, or the same container image). run.output_dir must be a path every
# node sees (shared filesystem): RUN_DIR sets it (default /shared/runs).
# Environment: RAY_ADDRESS (the dashboard address, required), RUN_DIR, SUBMISSION_ID,
# RUNTIME_ENV_JSON (replaces the default runtime environment), NO_WAIT=1 (return once submitted),
# RAY (ray), DRY_RUN=1 prints the command. A cluster with token authentication needs
# RAY_AUTH_MODE=token and the token (~/.ray/auth_token or RAY_AUTH_TOKEN) here too.
set -euo pipefail

[[ $# -ge 1 ]] || { sed -n '2,13p' "$0" >&2; exit 2; }
CONFIG=$1; shift
REPO=$(cd "$(dirname "$0")/.." && pwd)
RAY=${RAY:-ray}
: "${RAY_ADDRESS:?set RAY_ADDRESS to the dashboard address of the cluster, e.g. http://head:8265}"
RUN_DIR=${RUN_DIR:-/shared/runs}
DEFAULT_RUNTIME_ENV='{"excludes": [".git", ".venv", "runs", "__pycache__"], "env_vars": {"TOKENIZERS_PARALLELISM": "false"}}'
RUNTIME_ENV_JSON=${RUNTIME_ENV_JSON:-$DEFAULT_RUNTIME_ENV}

submit=("$RAY" job submit --address="$RAY_ADDRESS" --working-dir="$REPO" --runtime-env-json="$RUNTIME_ENV_JSON")
[[ -n ${SUBMISSION_ID:-} ]] && submit+=(--submission-id="$SUBMISSION_ID")
[[ ${NO_WAIT:-0} == 1 ]] && submit+=(--no-wait)
submit+=(-- python -m rl_safety grpo --config "$CONFIG" cluster.address=auto run.output_dir="$RUN_DIR" "$@")

if [[ ${DRY_RUN:-0} == 1 ]]; then printf '%q ' "${submit[@]}"; echo; else exec "${submit[@]}"; fi
