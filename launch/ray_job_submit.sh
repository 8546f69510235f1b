#!/usr/bin/env bash
# Submit an rl-safety job to a running Ray cluster (`ray job submit`).
#
#   RAY_ADDRESS=http://HEAD:8265 launch/ray_job_submit.sh COMMAND ARGS...
#   COMMAND: grpo, sft, dgr, thinksafe or eval, e.g. grpo --config CONFIG [key=value ...] [--resume]
#
# The repository is uploaded as the job's working directory (so CONFIG and `reward_modules`
# paths are relative to the repository root); every node must already have the environment
# (`bash scripts/setup.sh gpu`, or the same container image). Outputs must go where every node
# sees them (shared filesystem): RUN_DIR (default /shared/runs) sets run.output_dir of grpo and
# sft; give dgr / thinksafe an output.path and eval an --output there.
# Environment: RAY_ADDRESS (the dashboard address, required), RUN_DIR, SUBMISSION_ID,
# RUNTIME_ENV_JSON (replaces the default runtime environment), NO_WAIT=1 (return once submitted),
# RAY (ray), PYTHON (python), DRY_RUN=1 prints the command (the runtime environment's env_vars
# values and any password in RAY_ADDRESS masked: they often hold tokens). A cluster with token
# authentication (every cluster should have it: its job API runs any code it is sent) needs
# RAY_AUTH_MODE=token and the token (~/.ray/auth_token or RAY_AUTH_TOKEN) here too.
set -euo pipefail

[[ $# -ge 1 ]] || { sed -n '2,17p' "$0" >&2; exit 2; }
COMMAND=$1; shift
case $COMMAND in grpo|sft) OUTPUT=(run.output_dir="${RUN_DIR:-/shared/runs}") ;; dgr|thinksafe|eval) OUTPUT=() ;;
    *) echo "unknown command '$COMMAND' (the first argument is the command: grpo, sft, dgr, thinksafe or eval)" >&2; exit 2 ;;
esac
REPO=$(cd "$(dirname "$0")/.." && pwd)
RAY=${RAY:-ray}
PYTHON=${PYTHON:-python}
: "${RAY_ADDRESS:?set RAY_ADDRESS to the dashboard address of the cluster, e.g. http://head:8265}"
DEFAULT_RUNTIME_ENV='{"excludes": [".git", ".venv", "runs", "__pycache__"], "env_vars": {"TOKENIZERS_PARALLELISM": "false"}}'
RUNTIME_ENV_JSON=${RUNTIME_ENV_JSON:-$DEFAULT_RUNTIME_ENV}

submit=("$RAY" job submit --address="$RAY_ADDRESS" --working-dir="$REPO" --runtime-env-json="$RUNTIME_ENV_JSON")
[[ -n ${SUBMISSION_ID:-} ]] && submit+=(--submission-id="$SUBMISSION_ID")
[[ ${NO_WAIT:-0} == 1 ]] && submit+=(--no-wait)
submit+=(-- python -m rl_safety "$COMMAND" cluster.address=auto "${OUTPUT[@]}" "$@")

masked() {  # the command line for DRY_RUN, secrets replaced by ***
    "$PYTHON" - "$@" <<'PY'
import json, re, shlex, sys
shown = []
for arg in sys.argv[1:]:
    if arg.startswith("--runtime-env-json="):
        try:
            env = json.loads(arg.split("=", 1)[1])
            env["env_vars"] = {key: "***" for key in env.get("env_vars") or {}}
            arg = "--runtime-env-json=" + json.dumps(env)
        except (ValueError, AttributeError, TypeError):
            arg = "--runtime-env-json=***"
    shown.append(shlex.quote(re.sub(r"(://[^/@\s]*?:)[^/@\s]+@", r"\1***@", arg)))
print(" ".join(shown))
PY
}

if [[ ${DRY_RUN:-0} == 1 ]]; then masked "${submit[@]}"; else exec "${submit[@]}"; fi
