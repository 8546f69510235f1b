"""What the command line shows a user when something they gave cannot be used.

A `UserError` is a problem with the user's input -- a config, a data file, a path, a run
directory, a reward module, a model path -- found by our checks. The CLI (`rl_safety.cli`) prints
it as one line, `rl-safety CMD: error: WHAT (WHERE)`, and exits with status 2; any other exception
is a bug of ours and keeps its traceback (`--debug` shows the traceback of user errors too).
Messages put the whole story on their first line; further lines, if any, only add detail.
"""

from __future__ import annotations

import argparse


class UserError(Exception):
    """Input the user can fix; the message says what is wrong and where (file, line, key)."""


class UsageError(UserError):
    """A command line that does not parse (missing or unknown arguments)."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse, except that a bad command line raises `UsageError` (one line through the CLI's
    error boundary) instead of printing usage and calling `sys.exit` itself, and that options
    are never abbreviated (`--resum` is an error, not a silent `--resume`)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        raise UsageError(f"{message} (see {self.prog} --help)")


def user_errors() -> tuple[type[BaseException], ...]:
    """The exception types the CLI reports as user errors: ours, and the rewards package's
    (which does not depend on rl_safety) for reward set-up and reward values."""
    import rewards

    return UserError, rewards.RewardSetupError, rewards.RewardError
