#!/usr/bin/env bash
# Start a Ray head on this machine, run one rl-safety command on it, then stop that head.
#
#   launch/local_head.sh COMMAND ARGS...     COMMAND: grpo, sft, dgr, thinksafe or eval, e.g.
#   launch/local_head.sh grpo --config CONFIG [key=value ...] [--resume]
#   launch/local_head.sh eval --model RUN/final --suite default [key=value ...]
#
# Other machines may join the head while the job starts (`ray start --address=THIS_HOST:RAY_PORT`).
# Environment: RAY_PORT (6379), NUM_CPUS / NUM_GPUS / RAY_RESOURCES (what the head declares;
# Ray detects CPUs/GPUs when unset), RAY (ray), PYTHON (python), DRY_RUN=1 prints the commands.
# On exit only the head started here is stopped (its process group): not `ray stop`, which
# stops every Ray process of the user on the machine.
# Security: the head requires token authentication (RAY_AUTH_MODE=token; the token is
# ~/.ray/auth_token, created here if missing, or RAY_AUTH_TOKEN) and its dashboard / job API
# listens on 127.0.0.1 only (reach it from elsewhere with `ssh -L 8265:127.0.0.1:8265 HOST`).
set -euo pipefail
# Ray 2.60 turns token authentication on in `ray start` only when a token exists, and not in the
# drivers that connect: say it once for both, and make the token first.
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-token}

[[ $# -ge 1 ]] || { sed -n '2,15p' "$0" >&2; exit 2; }
COMMAND=$1; shift
case $COMMAND in grpo|sft|dgr|thinksafe|eval) ;;
    *) echo "unknown command '$COMMAND' (the first argument is the command: grpo, sft, dgr, thinksafe or eval)" >&2; exit 2 ;;
esac
RAY=${RAY:-ray}
PYTHON=${PYTHON:-python}
RAY_PORT=${RAY_PORT:-6379}
ADDRESS=127.0.0.1:$RAY_PORT

run() {  # run a command, or print it under DRY_RUN=1
    if [[ ${DRY_RUN:-0} == 1 ]]; then printf '%q ' "$@"; echo; else "$@"; fi
}

if [[ $RAY_AUTH_MODE == token ]]; then
    # prints the token: kept off the terminal and out of logs
    if [[ ${DRY_RUN:-0} == 1 ]]; then echo "$RAY get-auth-token --generate >/dev/null"
    else "$RAY" get-auth-token --generate >/dev/null; fi
fi
head=("$RAY" start --head --block --port="$RAY_PORT" --dashboard-host=127.0.0.1)
[[ -n ${NUM_CPUS:-} ]] && head+=(--num-cpus="$NUM_CPUS")
[[ -n ${NUM_GPUS:-} ]] && head+=(--num-gpus="$NUM_GPUS")
[[ -n ${RAY_RESOURCES:-} ]] && head+=(--resources="$RAY_RESOURCES")

if [[ ${DRY_RUN:-0} == 1 ]]; then
    run setsid "${head[@]}"
else
    setsid "${head[@]}" &
    HEAD_PID=$!
    stop_head() {  # `ray start --block` drains and stops its processes on SIGTERM; then the rest
        kill -TERM "$HEAD_PID" 2>/dev/null || return 0
        for _ in $(seq 40); do kill -0 "$HEAD_PID" 2>/dev/null || break; sleep 1; done
        kill -KILL -- "-$HEAD_PID" 2>/dev/null || true
    }
    trap stop_head EXIT
    for i in $(seq 120); do  # wait for the head to answer
        "$RAY" status --address="$ADDRESS" >/dev/null 2>&1 && break
        kill -0 "$HEAD_PID" 2>/dev/null || { echo "the Ray head exited" >&2; exit 1; }
        [[ $i == 120 ]] && { echo "the Ray head did not answer at $ADDRESS in 120 s" >&2; exit 1; }
        sleep 1
    done
fi
run "$PYTHON" -m rl_safety "$COMMAND" cluster.address="$ADDRESS" "$@"
