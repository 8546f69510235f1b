"""`rl-safety <command>`: the project's command line (also `python -m rl_safety`)."""

from __future__ import annotations

import logging
import sys


def _grpo(argv: list[str]) -> int:
    from rl_safety.config import GRPOConfig
    from rl_safety.config.loader import config_from_command_line

    cfg, args = config_from_command_line(
        GRPOConfig, argv, "rl-safety grpo", "GRPO with verifiable rewards",
        add_arguments=lambda p: p.add_argument("--resume", action="store_true",
                                               help="continue from the run's last checkpoint"),
    )
    from rl_safety.trainers.grpo import run_grpo

    print(f"batch plan: {cfg.batch_plan()}")
    final = run_grpo(cfg, source=args.config, resume=args.resume)
    print(f"done: final policy in {final}")
    return 0


def _rewards(argv: list[str]) -> int:
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
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: rl-safety {" + ",".join(COMMANDS) + "} ...", file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from rl_safety.config.loader import ConfigError

    try:
        return COMMANDS[argv[0]](argv[1:])
    except ConfigError as err:  # found before (or instead of) any work: the message says what and where
        print(f"rl-safety {argv[0]}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
