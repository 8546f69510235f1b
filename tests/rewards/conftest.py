"""Fixtures for the rewards tests: the project's shared data directory (outside the repo)."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


@pytest.fixture
def xstest_dir() -> Path:
    path = SHARED_DATA / "xstest"
    if not path.is_dir():
        pytest.skip(f"XSTest completions not found at {path.resolve()} (the project's ../shared/data)")
    return path
