"""Shared fixtures: tiny real checkpoints (built from a config, tokenizer trained in-process)
and small prompt files, created once per test session."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The project's data directory beside the checkout (a git worktree elsewhere sets the variable)
SHARED_DATA = Path(os.environ.get("RL_SAFETY_SHARED_DATA", REPO.parent / "shared" / "data"))
USER_REWARDS = REPO / "tests" / "fixtures" / "user_rewards.py"


@pytest.fixture(autouse=True, scope="module")
def end_ray_session_left_by_module():
    """A command run in-process (toy's GRPO arm, `run_grpo`) keeps the Ray session it connected, as
    a CLI process would until it exits; a later module's `ray.init` would then fail. Each module
    ends with no Ray session of its own left behind."""
    yield
    ray = sys.modules.get("ray")  # not imported here: most modules never load Ray
    if ray is not None and ray.is_initialized():
        ray.shutdown()


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """{"tied": path, "untied": path}: 2-layer Qwen2, hidden 128, head_dim 64."""
    from rl_safety.models.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("tiny_models")
    return {
        "tied": build_tiny_model(root / "tied", tie_word_embeddings=True, seed=0),
        "untied": build_tiny_model(root / "untied", tie_word_embeddings=False, seed=1),
    }


@pytest.fixture(scope="session")
def prompt_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "prompts.jsonl"
    with path.open("w") as f:
        for i in range(64):
            f.write(json.dumps({"prompt": f"Write letters {i}", "label": "benign" if i % 2 else "harmful"}) + "\n")
    return path


@pytest.fixture
def xstest_dir() -> Path:
    path = SHARED_DATA / "xstest"
    if not path.is_dir():
        pytest.skip(f"XSTest completions not found at {path.resolve()} (the project's ../shared/data, "
                    "or $RL_SAFETY_SHARED_DATA)")
    return path
