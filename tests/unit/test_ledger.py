"""The cost ledger on known inputs: parameter count, FLOPs arithmetic, device-hours, resume."""

from __future__ import annotations

import json

import pytest

from rl_safety.ledger import CostLedger, count_parameters, process_peak_memory


def test_parameter_count_from_safetensors_headers(tiny_models):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_models["untied"])
    assert count_parameters(tiny_models["untied"]) == sum(p.numel() for p in model.parameters())
    assert count_parameters("no/such/dir") is None


def test_tokens_flops_phases_and_device_hours(tmp_path):
    ledger = CostLedger(tmp_path, "sft", parameters=1000)
    ledger.set_devices("gpu", count=4, name="H100")
    ledger.add_tokens(trained=10, generated=3)
    ledger.add_tokens(trained=5, prefilled=2, forward_only=7)
    ledger.add_phase_times({"timing/train": 1.5, "generation": 0.5})
    ledger.add_phase_times({"timing/train": 1.0})
    with pytest.raises(ValueError, match="unknown token kind"):
        ledger.add_tokens(trained_on=1)
    data = json.loads(ledger.finish().read_text())
    assert data["tokens"] == {"generated": 3, "prefilled": 2, "trained": 15, "forward_only": 7}
    assert data["flops_estimate"]["training"] == 6 * 1000 * 15
    assert data["flops_estimate"]["total"] == 6 * 1000 * 15 + 2 * 1000 * (3 + 2 + 7)
    assert "estimate" in data["flops_estimate"]["note"]
    assert data["phase_time_s"] == {"train": 2.5, "generation": 0.5}
    assert data["devices"] == {"kind": "gpu", "name": "H100", "count": 4}
    hours = data["device_hours"]["H100"]
    assert hours == pytest.approx(4 * data["wall_time_s"] / 3600, rel=0.05, abs=1e-6)
    assert data["peak_memory_gb"]["driver"]["rss_gb"] > 0.01
    assert data["complete"] and data["command"] == "sft"


def test_resume_carries_the_totals_on(tmp_path):
    first = CostLedger(tmp_path, "grpo", parameters=10)
    first.set_devices("cpu", count=2)
    first.add_tokens(generated=100, trained=40)
    first.add_phase_times({"generation": 2.0})
    first.finish(complete=False)
    before = json.loads((tmp_path / "cost.json").read_text())
    second = CostLedger(tmp_path, "grpo", parameters=10, resume=True)
    second.set_devices("cpu", count=2)
    second.add_tokens(generated=50)
    second.add_phase_times({"generation": 1.0})
    after = json.loads(second.finish().read_text())
    assert after["segments"] == 2 and after["complete"]
    assert after["tokens"]["generated"] == 150 and after["tokens"]["trained"] == 40
    assert after["phase_time_s"]["generation"] == 3.0
    assert after["wall_time_s"] >= before["wall_time_s"]
    name = after["devices"]["name"]
    assert after["device_hours"][name] >= before["device_hours"][name]
    # without resume a new run starts from zero
    fresh = json.loads(CostLedger(tmp_path, "grpo", parameters=10).write().read_text())
    assert fresh["tokens"]["generated"] == 0 and fresh["segments"] == 1


def test_peak_memory_of_this_process():
    assert process_peak_memory()["rss_gb"] > 0
