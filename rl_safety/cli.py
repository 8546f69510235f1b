"""`rl-safety <command>`: the project's command line (also `python -m rl_safety`).

The error boundary of every command is here: a user error (`rl_safety.errors`) is one line
`rl-safety CMD: error: WHAT (WHERE)` and exit status 2; anything else is a bug and keeps its
traceback. `--debug` anywhere on the command line shows the traceback of user errors too.
"""

from __future__ import annotations

import logging
import sys


def _grpo(argv: list[str]) -> int:
    from rl_safety.config import GRPOConfig
    from rl_safety.config.loader import config_from_command_line
    from rl_safety.preflight import add_resume_arguments

    cfg, args = config_from_command_line(GRPOConfig, argv, "rl-safety grpo", "GRPO with verifiable rewards",
                                         add_arguments=add_resume_arguments)
    from rl_safety.trainers.grpo import run_grpo

    print(f"batch plan: {cfg.batch_plan()}")
    final = run_grpo(cfg, source=args.config, resume=args.resume, allow_config_change=args.allow_config_change)
    print(f"done: final policy in {final}")
    return 0


def _rewards(argv: list[str]) -> int:
    if argv and argv[0] == "refusal-accuracy":  # an evaluation of the rewards' detector, kept in eval/
        from rl_safety.eval import detector

        return detector.main(argv[1:])
    from rewards import lab

    return lab.main(argv)


def _toy(argv: list[str]) -> int:
    from rl_safety.toy import cli

    return cli.main(argv)


def _shift(argv: list[str]) -> int:
    from rl_safety.eval import shift

    return shift.main(argv)


def _sft(argv: list[str]) -> int:
    from rl_safety.trainers import sft

    return sft.main(argv)


def _dgr(argv: list[str]) -> int:
    from rl_safety.refine import dgr

    return dgr.main(argv)


def _thinksafe(argv: list[str]) -> int:
    from rl_safety.refine import thinksafe

    return thinksafe.main(argv)


def _eval(argv: list[str]) -> int:
    from rl_safety.eval import harness

    return harness.main(argv)


def _compare(argv: list[str]) -> int:
    from rl_safety.eval import compare

    return compare.main(argv)


COMMANDS = {"grpo": _grpo, "rewards": _rewards, "toy": _toy, "shift": _shift, "sft": _sft, "dgr": _dgr,
            "thinksafe": _thinksafe, "eval": _eval, "compare": _compare}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    usage = "usage: rl-safety [--debug] {" + ",".join(COMMANDS) + "} ..."
    if argv and argv[0] in ("-h", "--help"):
        print(usage)
        return 0
    if not argv or argv[0] not in COMMANDS:
        what = f"unknown command {argv[0]!r}" if argv else "no command given"
        print(f"rl-safety: error: {what} (commands: {', '.join(COMMANDS)}; {usage})", file=sys.stderr)
        return 2
    command = argv[0]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from rl_safety.errors import user_errors

    try:
        return COMMANDS[command](argv[1:])
    except user_errors() as err:
        if debug:
            import traceback

            traceback.print_exc()
        print(f"rl-safety {command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"rl-safety {command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
