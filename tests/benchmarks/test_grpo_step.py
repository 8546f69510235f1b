"""`benchmarks/grpo_step.py`'s pure parts and its long-tail model (no Ray, vLLM or DeepSpeed: the
benchmark itself is run by hand, its numbers are not asserted in CI)."""

from __future__ import annotations

import importlib.util
import math
import statistics
import sys

import pytest

from tests.conftest import REPO

spec = importlib.util.spec_from_file_location("grpo_step", REPO / "benchmarks" / "grpo_step.py")
grpo_step = sys.modules["grpo_step"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(grpo_step)


def test_ours_learner_passes_use_the_limits_token_budget(tmp_path):
    # the layout itself is learner/packing.py's length_buckets, tested in tests/unit/test_packing.py
    w = grpo_step.SIZES["large"]
    config = grpo_step.ours_config(w, tmp_path / "model", tmp_path / "prompts.jsonl", tmp_path, steps=2)
    assert config["learner"]["max_tokens_per_micro_batch"] == grpo_step.token_budget(w) == 16 * (64 + 256)


def test_group_advantages_match_the_formula_by_hand():
    rewards = [0.0, 1.0, 0.5, 0.5, 0.2, 0.2]
    adv = grpo_step.group_advantages(rewards, group=2)
    assert adv[0] == pytest.approx(-0.5 / (0.5 + 1e-4)) and adv[1] == pytest.approx(0.5 / (0.5 + 1e-4))
    assert adv[2:] == [0.0, 0.0, 0.0, 0.0]  # flat groups: no signal


def test_summary_excludes_the_warm_up_step():
    steps = [{"step_s": 100.0, "tokens": 10.0}, {"step_s": 2.0, "tokens": 10.0}, {"step_s": 4.0, "tokens": 20.0}]
    s = grpo_step.summary(steps)
    assert s["step_s"] == (3.0, 2.0, 4.0) and s["steps"] == 2
    assert s["tokens_per_s"] == pytest.approx(5.0)


def test_long_tail_model_stops_with_the_chosen_eos_probability_at_every_position(tmp_path):
    """The rewritten embedding gives EOS the same probability 1/mean after any context, so
    lengths are geometric: checked with a plain transformers forward over random token strings."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    w = grpo_step.Workload(hidden=128, layers=2, prompts=1, group=1, new_tokens=64, long_tail_mean_tokens=50)
    path = grpo_step.build_workload_model(tmp_path, w)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    eos = AutoTokenizer.from_pretrained(path).eos_token_id
    ids = torch.randint(5, model.config.vocab_size, (4, 200), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        p_eos = torch.softmax(model(input_ids=ids).logits, dim=-1)[..., eos]
    assert p_eos.min() > 0.8 / 50 and p_eos.max() < 1.2 / 50
    # without the bias the model stops far less often (uniform-ish over ~260 tokens)
    assert grpo_step.eos_logit_bias(50, model.config.vocab_size) == pytest.approx(
        math.log(model.config.vocab_size - 1) - math.log(49))
    assert statistics.fmean(p_eos.flatten().tolist()) == pytest.approx(1 / 50, rel=0.1)
