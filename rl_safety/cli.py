"""`rl-safety [--debug] [--plugin FILE ...] <command>`: the project's command line (also
`python -m rl_safety`).

Commands are the entries of `COMMANDS` and every registered safety-data method
(`rl_safety.refine.methods`: dgr, thinksafe, ...). `--plugin FILE` imports a Python file first,
e.g. one that registers a data method, a reward or an eval scorer.

The error boundary of every command is here: a user error (`rl_safety.errors`) is one line
`rl-safety CMD: error: WHAT (WHERE)` and exit status 2; anything else is a bug and keeps its
traceback. `--debug` anywhere on the command line shows the traceback of user errors too.
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Callable

COMMANDS = {  # command -> "module:function" that runs it on its arguments
    "grpo": "rl_safety.trainers.commands:grpo",
    "sft": "rl_safety.trainers.commands:sft",
    "eval": "rl_safety.eval.harness:main",
    "compare": "rl_safety.eval.compare:main",
    "shift": "rl_safety.eval.shift:main",
    "rewards": "rl_safety.cli:rewards",
    "toy": "rl_safety.toy.cli:main",
}


def rewards(argv: list[str]) -> int:
    """`rl-safety rewards`: the reward lab (rewards.lab), and `refusal-accuracy`, an evaluation of
    the rewards' refusal detector kept in eval/."""
    if argv and argv[0] == "refusal-accuracy":
        from rl_safety.eval import detector

        return detector.main(argv[1:])
    from rewards import lab

    return lab.main(argv)


def _entry(target: str) -> Callable[[list[str]], int]:
    module, function = target.split(":")
    return lambda argv: getattr(importlib.import_module(module), function)(argv)


def commands() -> dict[str, Callable[[list[str]], int]]:
    from rl_safety.refine.methods import data_methods

    found = {name: _entry(target) for name, target in COMMANDS.items()}
    for name, method in data_methods().items():
        found.setdefault(name, method.main)
    return found


def main(argv: list[str] | None = None) -> int:
    from rl_safety.errors import user_errors

    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    plugins = []
    while argv and argv[0] == "--plugin" and len(argv) > 1:
        plugins.append(argv[1])
        del argv[:2]
    try:
        for path in plugins:
            from rewards import load_module

            load_module(path)
    except user_errors() as err:
        print(f"rl-safety: error: --plugin {path}: {err}", file=sys.stderr)
        return 2
    table = commands()
    usage = "usage: rl-safety [--debug] [--plugin FILE ...] {" + ",".join(table) + "} ..."
    if argv and argv[0] in ("-h", "--help"):
        print(usage)
        return 0
    if not argv or argv[0] not in table:
        what = f"unknown command {argv[0]!r}" if argv else "no command given"
        print(f"rl-safety: error: {what} (commands: {', '.join(table)}; {usage})", file=sys.stderr)
        return 2
    command = argv[0]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        return table[command](argv[1:])
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
