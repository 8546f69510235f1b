"""Every case of the bad-input corpus (cases.yaml) gives its one clear error line with exit
status 2, or succeeds where succeeding is right: no traceback, nothing silently wrong. The
commands run in this process with `ray.init` stubbed (corpus.py), so no engine ever starts."""

from __future__ import annotations

import pytest

from tests.bad_inputs import corpus

CASES = corpus.load_cases()


def test_the_corpus_is_large_and_covers_every_command():
    assert len(CASES) >= 150
    assert {c["id"].split("/")[0] for c in CASES} >= {"grpo", "sft", "eval", "thinksafe", "dgr", "rewards", "compare"}


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_bad_input(case, tiny_models, tmp_path_factory):
    result = corpus.run_case(case, tmp_path_factory.mktemp("bad_inputs"), tiny_models["tied"])
    assert result.category in ("clear", "handled"), f"{result.category}: {result.why}\n{result.stderr[-3000:]}"
