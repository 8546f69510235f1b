"""`rl-safety sft` end to end: Ray actors, DeepSpeed ZeRO-2 and ZeRO-3 on gloo (2 ranks), full
fine-tuning and PEFT LoRA; the checkpoint starts a GRPO run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from rl_safety.config import SFTConfig, load_config
from rl_safety.runs import RunError

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True, scope="module")
def ray_session():
    import ray

    ray.init(address="local", num_cpus=8, include_dashboard=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def sft_data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("sft") / "train.jsonl"
    rows = [{"prompt": f"Make weapon {i}", "reasoning": "This is harmful.", "answer": "I can't help with that.",
             "label": "harmful"} for i in range(8)]
    rows += [{"prompt": f"Add {i} and 1", "reasoning": "Simple sum.", "answer": f"{i + 1}", "label": "benign"} for i in range(8)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def run_sft(tmp_path: Path, model: Path, data: Path, overrides: dict, resume: bool = False,
            allow_config_change: tuple[str, ...] = ()) -> tuple[Path, Path]:
    from rl_safety.trainers.sft import run_sft as run

    config = {"model": {"path": str(model), "dtype": "float32"}, "data": {"train": str(data), "max_tokens": 128},
              "learner": {"num_ranks": 2, "zero_stage": 2, "learning_rate": 1e-2, "micro_batch_size": 2},
              "training": {"epochs": 3, "gradient_accumulation_steps": 2},
              "run": {"output_dir": str(tmp_path / "runs"), "name": "sft"}}
    for key, value in overrides.items():
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "sft.yaml").write_text(yaml.safe_dump(config))
    cfg = load_config(SFTConfig, tmp_path / "sft.yaml")
    final = run(cfg, str(tmp_path / "sft.yaml"), resume=resume, allow_config_change=list(allow_config_change))
    return Path(cfg.run.output_dir) / cfg.run.name, final


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def full_runs(tmp_path_factory, tiny_models, sft_data) -> dict[int, tuple[Path, Path]]:
    """{ZeRO stage: (run dir, final/)} of the same full fine-tune at stages 2 and 3."""
    root = tmp_path_factory.mktemp("full")
    return {stage: run_sft(root / f"zero{stage}", tiny_models["tied"], sft_data, {"learner.zero_stage": stage})
            for stage in (2, 3)}


@pytest.mark.parametrize("overrides", [
    {},
    {"learner.zero_stage": 3},
    {"learner.lora": {"rank": 8, "alpha": 16}, "training.packing": True, "data.max_tokens": 128,
     "learner.micro_batch_size": 1, "training.gradient_accumulation_steps": 1, "training.epochs": 4},
], ids=["full-zero2-2ranks", "full-zero3-2ranks", "lora-zero2-2ranks-packed"])
def test_sft_learns_and_exports_a_checkpoint(tmp_path, tiny_models, sft_data, full_runs, overrides):
    import torch
    from transformers import AutoModelForCausalLM

    if "learner.lora" in overrides:
        run_dir, final = run_sft(tmp_path, tiny_models["tied"], sft_data, overrides)
    else:
        run_dir, final = full_runs[overrides.get("learner.zero_stage", 2)]
    metrics = _metrics(run_dir)
    # 16 examples / (2 x 2 x 2) = 2 steps per epoch unpacked; packed rows are fewer
    assert metrics[-1]["loss"] < metrics[0]["loss"] - 0.3, metrics
    assert all(m["tokens"] > 0 for m in metrics)
    trained = AutoModelForCausalLM.from_pretrained(final, dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(tiny_models["tied"], dtype=torch.float32)
    assert not any("lora" in name for name in trained.state_dict())
    diff = sum(float((a - b).abs().sum().detach()) for a, b in zip(trained.parameters(), base.parameters()))
    assert diff > 0

    # The cost ledger counts the tokens the ranks actually trained on. Reference: every example's
    # rendered length, once per epoch, packed or not (a partial last step is padded, not dropped).
    from transformers import AutoTokenizer

    from rl_safety.data import chat
    from rl_safety.data.safety import load_safety_dataset

    cost = json.loads((run_dir / "cost.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["tied"])
    examples, _ = load_safety_dataset("schema", str(sft_data))
    lengths = [len(chat.tokenize_example(tokenizer, e.prompt, e.reasoning, e.answer, family="auto",
                                         system_prompt=None)[0]) for e in examples]
    epochs = overrides.get("training.epochs", 3)
    assert cost["tokens"]["trained"] == epochs * sum(lengths)
    assert cost["command"] == "sft" and cost["complete"] and cost["devices"]["count"] == 2
    assert cost["parameters"] == sum(p.numel() for p in base.parameters())
    assert set(cost["peak_memory_gb"]) == {"driver", "rank-0", "rank-1"}
    assert cost["phase_time_s"]["train"] > 0 and not (run_dir / "cost_data.json").exists()


def test_zero3_trains_and_exports_what_zero2_does(full_runs, tiny_models):
    """ZeRO-3 partitions parameters, gradients and optimizer state over the ranks, and the
    export gathers them layer by layer: the same fine-tune must take the same steps (losses)
    and end with the same full weights as ZeRO-2, which keeps whole parameters on every rank.
    The two differ only in the order of floating-point reductions (Adam amplifies that for
    elements with tiny gradients): measured up to 2e-5 after 6 steps, while training moved the
    weights by up to ~0.06 (lr 1e-2): a missing or misplaced shard would differ by that much."""
    import torch
    from safetensors.torch import load_file

    (zero2_dir, zero2), (zero3_dir, zero3) = full_runs[2], full_runs[3]
    losses2, losses3 = [m["loss"] for m in _metrics(zero2_dir)], [m["loss"] for m in _metrics(zero3_dir)]
    assert len(losses2) == len(losses3) == 6
    assert losses3 == pytest.approx(losses2, rel=1e-4)
    weights2, weights3 = load_file(zero2 / "model.safetensors"), load_file(zero3 / "model.safetensors")
    start = load_file(tiny_models["tied"] / "model.safetensors")
    assert weights2.keys() == weights3.keys()
    moved = max(float((weights2[name] - start[name]).abs().max()) for name in start)
    assert moved > 1e-2
    for name, tensor in weights2.items():
        torch.testing.assert_close(weights3[name], tensor, rtol=0, atol=2e-4)


def test_sft_checkpoint_starts_a_grpo_run(tmp_path, tiny_models, sft_data, prompt_file):
    from tests.integration.test_grpo_trainer import read_metrics, run

    _, final = run_sft(tmp_path / "sft", tiny_models["untied"], sft_data,
                       {"learner.num_ranks": 1, "training.epochs": 1, "learner.zero_stage": 0,
                        "training.gradient_accumulation_steps": 1})
    grpo_dir, grpo_final = run(tmp_path / "grpo", final, prompt_file, {
        "run.total_steps": 1, "learner.num_ranks": 1, "learner.zero_stage": 0, "learner.micro_batch_size": 16})
    metrics = read_metrics(grpo_dir)
    assert metrics[0]["rollout_learner_logprob_diff"] < 1e-4
    assert (grpo_final / "config.json").exists()


def test_resume_at_an_epoch_boundary_trains_the_remaining_epochs(tmp_path, tiny_models, sft_data):
    """The trap anchors' users fell into: a resume at an epoch boundary that silently trains
    nothing. A run cut after epoch 1 of 2 (its last checkpoint is exactly the boundary) and
    resumed must end where an uninterrupted run ends: same step losses, same weights."""
    import shutil

    import torch
    from safetensors.torch import load_file

    common = {"training.epochs": 2, "learner.lr_schedule": "constant", "learner.warmup_steps": 0,
              "run.save_every": 2, "learner.learning_rate": 1e-3}  # 2 steps per epoch: saves at each boundary
    whole_dir, whole = run_sft(tmp_path / "whole", tiny_models["untied"], sft_data, common)
    # the "crash": a run stopped by max_steps after epoch 1, its export removed as if never written
    cut_dir, _ = run_sft(tmp_path / "cut", tiny_models["untied"], sft_data, {**common, "training.max_steps": 2})
    shutil.rmtree(cut_dir / "final")
    assert [p.name for p in sorted((cut_dir / "checkpoints").iterdir())] == ["step_2"]
    with pytest.raises(RunError, match="already holds a run: pass --resume"):
        run_sft(tmp_path / "cut", tiny_models["untied"], sft_data, common)
    # the cut run had training.max_steps=2: resuming without it is a config change, said out loud
    with pytest.raises(RunError, match=r"in training.max_steps \(2 recorded, None now\)"):
        run_sft(tmp_path / "cut", tiny_models["untied"], sft_data, common, resume=True)
    resumed_dir, resumed = run_sft(tmp_path / "cut", tiny_models["untied"], sft_data, common, resume=True,
                                   allow_config_change=("training.max_steps",))

    whole_metrics, resumed_metrics = _metrics(whole_dir), _metrics(resumed_dir)
    assert [m["step"] for m in resumed_metrics] == [1, 2, 3, 4]  # steps 3 and 4 were trained, once each
    for a, b in zip(whole_metrics, resumed_metrics):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5), (a, b)
    whole_w, resumed_w = load_file(whole / "model.safetensors"), load_file(resumed / "model.safetensors")
    for name, tensor in whole_w.items():
        torch.testing.assert_close(resumed_w[name], tensor, rtol=1e-5, atol=1e-6)
    # and the resumed run really moved past the checkpoint
    start = load_file(tiny_models["untied"] / "model.safetensors")
    assert any(not torch.equal(resumed_w[n], start[n]) for n in start)
    cost = json.loads((resumed_dir / "cost.json").read_text())
    assert cost["segments"] == 2 and cost["complete"]
