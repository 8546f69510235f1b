"""Suite configs and benchmark files: a bad row or a bad config fails with a message naming it."""

from __future__ import annotations

import json

import pytest

from rl_safety.config.loader import ConfigError, load_config
from rl_safety.data.prompts import DatasetError
from rl_safety.eval.harness import REPO, find_suite
from rl_safety.eval.suite import Benchmark, Suite, load_benchmark, resolve_data
from tests.conftest import SHARED_DATA


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def gsm8k(**overrides):
    return Benchmark(**{"name": "gsm", "kind": "reasoning", "data": "x", "fields": {"prompt": "question", "answer": "answer"},
                        "scorers": ["gsm8k"], **overrides})


@pytest.mark.parametrize("bad_row,message", [
    ({"answer": "#### 3"}, r"row 2 \(0-based\): field 'prompt' \(column 'question'\) is missing"),
    ({"question": "  ", "answer": "#### 3"}, r"row 2 \(0-based\): field 'prompt' .* is missing or empty"),
    ({"question": "q?", "answer": None}, r"row 2 \(0-based\): field 'answer' \(column 'answer'\) is missing"),
    ({"question": "q?", "answer": "three"}, r"row 2 \(0-based\): answer 'three' .* has no number"),
])
def test_a_malformed_row_is_named(tmp_path, bad_row, message):
    rows = [{"question": "1+1?", "answer": "#### 2"}, {"question": "2+2?", "answer": "#### 4"}, bad_row]
    source = write_rows(tmp_path / "bench.jsonl", rows)
    with pytest.raises(DatasetError, match=message):
        load_benchmark(gsm8k(), source)


def test_a_missing_column_is_named(tmp_path):
    source = write_rows(tmp_path / "bench.jsonl", [{"problem": "1+1?", "answer": "#### 2"}])
    with pytest.raises(DatasetError, match=r"no column for prompt -> 'question'; its columns are \['answer', 'problem'\]"):
        load_benchmark(gsm8k(), source)


def test_where_limit_and_template(tmp_path):
    rows = [{"q": f"item {i}", "label": "safe" if i % 2 else "unsafe"} for i in range(10)]
    source = write_rows(tmp_path / "b.jsonl", rows)
    b = Benchmark(name="x", kind="benign", data="b.jsonl", fields={"prompt": "q"}, where={"label": "safe"},
                  limit=3, prompt_template="Q: {prompt}", scorers=["refusal"])
    got = load_benchmark(b, source)
    assert [(p.row, p.text) for p in got] == [(1, "Q: item 1"), (3, "Q: item 3"), (5, "Q: item 5")]


@pytest.mark.parametrize("change,message", [
    ({"scorers": ["bleu"]}, "scorers \\['bleu'\\] not among"),
    ({"fields": {"prompt": "q"}, "scorers": ["math"]}, "a verifier scorer needs fields.answer"),
    ({"fields": {"question": "q"}}, "fields must map 'prompt'"),
    ({"sampling": {"n": 0}}, "benchmarks.0.sampling.n"),
])
def test_bad_benchmark_configs(tmp_path, change, message):
    bench = {"name": "b", "kind": "reasoning", "data": "b.jsonl", "fields": {"prompt": "q", "answer": "a"},
             "scorers": ["gsm8k"], **change}
    path = tmp_path / "suite.yaml"
    path.write_text(json.dumps({"name": "s", "benchmarks": [bench]}))
    with pytest.raises(ConfigError, match=message):
        load_config(Suite, path)


@pytest.mark.parametrize("scorer, message", [("guard", "no guard section"),
                                             ("strongreject", "no strongreject_judge section")])
def test_judge_scorers_need_their_judge_section(tmp_path, scorer, message):
    path = tmp_path / "suite.yaml"
    path.write_text(json.dumps({"name": "s", "benchmarks": [
        {"name": "b", "kind": "harmful", "data": "b.jsonl", "fields": {"prompt": "q"}, "scorers": [scorer]}]}))
    with pytest.raises(ConfigError, match=message):
        load_config(Suite, path)


def test_shipped_suites_load_and_resolve():
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    path = find_suite("default")
    assert path == REPO / "configs" / "eval" / "default.yaml"
    suite = load_config(Suite, path)
    counts = {b.name: len(load_benchmark(b, resolve_data(suite, path, b.data))) for b in suite.benchmarks}
    assert counts == {"xstest_safe": 250, "xstest_unsafe": 200, "gsm8k": 1319, "math500": 500, "aime24": 30}
    assert load_config(Suite, find_suite("safety_guard")).guard.format == "llama_guard_3"
    with pytest.raises(ConfigError, match="neither a file nor one of configs/eval/"):
        find_suite("nonexistent")


def test_eval_command_stops_on_a_bad_row_before_loading_the_model(tmp_path, capsys):
    from rl_safety.cli import main as cli

    write_rows(tmp_path / "bench.jsonl", [{"question": "1+1?", "answer": "#### 2"}, {"question": "2+2?"}])
    (tmp_path / "suite.yaml").write_text(json.dumps({"name": "s", "benchmarks": [
        {"name": "gsm", "kind": "reasoning", "data": "bench.jsonl", "fields": {"prompt": "question", "answer": "answer"},
         "scorers": ["gsm8k"]}]}))
    code = cli(["eval", "--model", str(tmp_path / "no-model"), "--suite", str(tmp_path / "suite.yaml"),
                "--output", str(tmp_path / "out")])
    assert code == 2
    err = capsys.readouterr().err
    assert "bench.jsonl row 1 (0-based): field 'answer' (column 'answer') is missing" in err
    assert not (tmp_path / "out").exists()
