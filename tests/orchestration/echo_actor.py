"""A plain class the ActorGroup tests run as actors (importable by Ray's workers)."""

from __future__ import annotations

import os
import time


class Echo:
    """A plain class the group runs as actors."""

    def __init__(self, rank: int, fail_at_start: bool = False) -> None:
        if fail_at_start:
            raise ValueError(f"rank {rank} cannot start")
        self.rank = rank

    def tag(self, items: list[int], factor: int = 1) -> list[tuple[int, int]]:
        return [(self.rank, item * factor) for item in items]

    def rank_of(self) -> int:
        return self.rank

    def fail(self, error: str) -> None:
        if error != "none":
            raise {"value": ValueError, "key": KeyError}[error]("on purpose")

    def pid(self) -> int:
        return os.getpid()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)
