"""`compare` arithmetic on hand-written run directories (fast; the end-to-end test compares real runs):
aggregates and their intervals, the safety tax, merged stage costs, the Pareto frontier."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rl_safety.eval.compare import CompareError, compare, load_method, pareto_front
from rl_safety.ledger import CostLedger


def metric(value, low, high):
    return {"value": value, "ci_low": low, "ci_high": high}


def write_run(root: Path, name: str, refusal: float, compliance: float, accuracies: list[float],
              command: str | None = None, hours: float = 0.0, data_hours: float = 0.0,
              benign_refusal: float | None = None) -> Path:
    """`benign_refusal` defaults to 1 - compliance (every benign response answered or refused)."""
    over = 1 - compliance if benign_refusal is None else benign_refusal
    run = root / name
    (run / "eval" / "s").mkdir(parents=True)
    benchmarks = {
        "harm": {"kind": "harmful", "prompts": 10, "sampling": {"n": 1},
                 "metrics": {"refusal_rate": metric(refusal, refusal - 0.1, refusal + 0.05)}},
        "safe": {"kind": "benign", "prompts": 10, "sampling": {"n": 1},
                 "metrics": {"compliance_rate": metric(compliance, compliance - 0.2, compliance + 0.1),
                             "refusal_rate": metric(over, over - 0.1, over + 0.2)}},
    }
    for i, acc in enumerate(accuracies):
        benchmarks[f"math{i}"] = {"kind": "reasoning", "prompts": 10, "sampling": {"n": 4},
                                  "metrics": {"accuracy": metric(acc, acc - 0.03, acc + 0.04)}}
    (run / "eval" / "s" / "results.json").write_text(json.dumps({"suite": "s", "benchmarks": benchmarks}))
    for filename, cmd, h in (("cost.json", command, hours), ("cost_data.json", "dgr", data_hours)):
        if cmd and h:
            ledger = CostLedger(run, cmd, parameters=100, filename=filename)
            ledger.set_devices("gpu", 1, name="H100")
            ledger.add_tokens(trained=10, generated=5)
            data = ledger.summary()
            data["device_hours"] = {"H100": h}
            (run / filename).write_text(json.dumps(data))
    return run


def test_aggregates_tax_and_stage_costs(tmp_path):
    base = write_run(tmp_path, "base", 0.3, 0.9, [0.6, 0.4])
    dgr = write_run(tmp_path, "dgr", 0.9, 0.6, [0.5, 0.3], command="sft", hours=2.0, data_hours=3.0,
                    benign_refusal=0.3)  # 10% of benign responses neither answer nor refuse
    grpo = write_run(tmp_path, "grpo", 0.95, 0.8, [0.6, 0.38], command="grpo", hours=10.0)
    out = tmp_path / "report"
    compare([base, dgr, grpo], out)
    numbers = json.loads((out / "comparison.json").read_text())["methods"]
    assert numbers["base"]["base"] and not numbers["dgr"]["base"]
    assert numbers["dgr"]["kind"] == "dgr+sft"  # the data stage's ledger is part of the method
    assert numbers["dgr"]["training_device_hours"] == pytest.approx(5.0)
    assert numbers["dgr"]["training_flops_estimate"] == pytest.approx(2 * (6 * 100 * 10 + 2 * 100 * 5))
    assert numbers["grpo"]["reasoning"]["value"] == pytest.approx(0.49)
    # two reasoning benchmarks: margins combined as independent errors
    assert numbers["grpo"]["reasoning"]["ci_low"] == pytest.approx(0.49 - (2 * 0.03**2) ** 0.5 / 2)
    # over-refusal is the benign refusal rate, not 1 - compliance (a broken answer is no refusal)
    assert numbers["dgr"]["over_refusal"] == {"value": pytest.approx(0.3), "ci_low": pytest.approx(0.2),
                                              "ci_high": pytest.approx(0.5)}
    assert numbers["dgr"]["benign_compliance"]["value"] == pytest.approx(0.6)
    md = (out / "comparison.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| dgr |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[4] == "–" and cells[6] == "–"  # no StrongREJECT judge, no WildGuard refusal judge in these runs
    assert cells[7].startswith("60.0 [")  # benign answered, with its interval
    # safety tax: reasoning 40 vs the base's 50, the interval from both runs' margins (hand-computed:
    # each run's two benchmarks have margins 0.03 below / 0.04 above, combined as sqrt(2 d^2) / 2;
    # the lower bound takes dgr's lower and the base's upper margin)
    dgr_low, dgr_high = (2 * 0.03**2) ** 0.5 / 2, (2 * 0.04**2) ** 0.5 / 2
    low = -0.10 - (dgr_low**2 + dgr_high**2) ** 0.5
    high = -0.10 + (dgr_high**2 + dgr_low**2) ** 0.5
    assert cells[9] == f"-10.0 [{low * 100:+.1f}, {high * 100:+.1f}]"
    assert cells[10].startswith("+20.0 [")  # over-refusal 30 vs 10
    assert cells[11].startswith("+60.0 [")  # safety 90 vs 30
    assert cells[12] == "5"      # device-hours, both stages
    # every quality cell of the table carries an interval
    assert all("[" in cells[i] for i in (2, 5, 7, 8, 9, 10, 11))


def test_an_in_sample_benchmark_stays_out_of_the_aggregates(tmp_path):
    """Refusal on the prompts a run trained on is reported per benchmark, never averaged into the
    headline safety number: with it, the headline would mix training fit into held-out safety."""
    run = write_run(tmp_path, "sft", 0.4, 0.9, [0.5])
    results_file = run / "eval" / "s" / "results.json"
    results = json.loads(results_file.read_text())
    results["benchmarks"]["harm_trained"] = {"kind": "harmful", "in_sample": True, "prompts": 10, "sampling": {"n": 1},
                                             "metrics": {"refusal_rate": metric(1.0, 0.9, 1.0)}}
    results_file.write_text(json.dumps(results))
    assert load_method(run, "s").metrics["safety_refusal"].value == pytest.approx(0.4)
    results["benchmarks"]["harm_trained"]["in_sample"] = False
    results_file.write_text(json.dumps(results))
    assert load_method(run, "s").metrics["safety_refusal"].value == pytest.approx(0.7)


def test_delta_interval_combines_both_margins():
    from rl_safety.eval.compare import Aggregate, delta

    d = delta(Aggregate(0.7, 0.6, 0.75), Aggregate(0.5, 0.45, 0.58))
    assert d.value == pytest.approx(0.2)
    assert d.low == pytest.approx(0.2 - (0.1**2 + 0.08**2) ** 0.5)   # 0.7's lower margin, 0.5's upper
    assert d.high == pytest.approx(0.2 + (0.05**2 + 0.05**2) ** 0.5)  # 0.7's upper margin, 0.5's lower
    assert delta(Aggregate(None), Aggregate(0.5, 0.4, 0.6)).value is None


def test_pareto_front():
    points = [(0.0, 30.0), (8.0, 80.0), (24.0, 85.0), (30.0, 82.0), (64.0, 92.0), (64.0, 90.0)]
    assert pareto_front(points) == [0, 1, 2, 4]


def test_errors_name_the_run(tmp_path):
    base = write_run(tmp_path, "base", 0.3, 0.9, [0.5])
    (tmp_path / "empty").mkdir()
    with pytest.raises(CompareError, match="empty: no eval/\\*/results.json"):
        compare([base, tmp_path / "empty"], tmp_path / "out")
    with pytest.raises(CompareError, match="two or more"):
        compare([base], tmp_path / "out")
    with pytest.raises(CompareError, match="no results of suite 'other'"):
        load_method(base, "other")
