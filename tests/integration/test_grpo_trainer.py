"""End-to-end GRPO on real Ray, vLLM (CPU), DeepSpeed (gloo) and PEFT, with tiny models.

Every run checks `rollout_learner_logprob_diff` < 1e-4 in fp32 at every step: vLLM's processed
logprobs of the sampled tokens against the learner's recomputation, after each weight sync.
If a sync sent wrong or stale weights (LoRA not merged, a stale tied lm_head), the diff from
step 1 on would be of the order of the weight change, and the trainer itself stops above
`run.logprob_diff_bound`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from rl_safety.config import GRPOConfig, load_config
from tests.conftest import USER_REWARDS

pytestmark = pytest.mark.integration


def write_config(tmp_path: Path, model: Path, prompts: Path, overrides: dict) -> Path:
    config = {
        "model": {"path": str(model), "dtype": "float32"},
        "data": {"train": str(prompts), "max_prompt_tokens": 64},
        # vowels: ~5/264 of a random byte-level policy's characters, so most groups have spread
        "rewards": [{"name": "char_fraction", "args": {"target": "aeiou"}}],
        "reward_modules": [str(USER_REWARDS)],
        "rollout": {"max_new_tokens": 16, "temperature": 1.0, "kv_cache_memory_mb": 64, "enforce_eager": True},
        "learner": {"num_ranks": 2, "zero_stage": 2, "learning_rate": 2e-3, "micro_batch_size": 4},
        "algorithm": {"group_size": 4, "prompts_per_step": 4, "kl_coef": 0.0},
        "cluster": {"placement": "separate"},
        "run": {"output_dir": str(tmp_path / "runs"), "name": "t", "total_steps": 3,
                "logprob_diff_bound": 1e-4, "progress_bar": False, "rollouts_saved_per_step": 4},
    }
    for key, value in overrides.items():
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def read_metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def run(tmp_path, model, prompts, overrides, resume=False):
    from rl_safety.trainers.grpo import run_grpo

    path = write_config(tmp_path, model, prompts, overrides)
    cfg = load_config(GRPOConfig, path)
    final = run_grpo(cfg, str(path), resume=resume)
    return Path(cfg.run.output_dir) / cfg.run.name, final


@pytest.fixture(autouse=True, scope="module")
def ray_session(tmp_path_factory):
    """One local Ray for the module. Its workers build torch extensions (if any) in a directory
    of their own, which must stay empty: a learner start compiles nothing (deepspeed_learner.py)."""
    import os

    import ray

    extensions = tmp_path_factory.mktemp("torch_extensions")
    saved = os.environ.get("TORCH_EXTENSIONS_DIR")
    os.environ["TORCH_EXTENSIONS_DIR"] = str(extensions)  # inherited by the Ray workers
    ray.init(address="local", num_cpus=8, include_dashboard=False)
    yield extensions
    ray.shutdown()
    if saved is None:
        os.environ.pop("TORCH_EXTENSIONS_DIR")
    else:
        os.environ["TORCH_EXTENSIONS_DIR"] = saved


@pytest.mark.parametrize(
    "embeddings,overrides",
    [
        ("tied", {"learner.zero_stage": 2, "cluster.placement": "separate"}),
        ("untied", {"learner.zero_stage": 3, "cluster.placement": "colocated", "algorithm.kl_coef": 0.05,
                    "rollout.num_engines": 2}),
        ("tied", {"learner.zero_stage": 2, "cluster.placement": "colocated", "rollout.num_engines": 2,
                  "learner.lora": {"rank": 8, "alpha": 16}, "algorithm.kl_coef": 0.05,
                  "learner.learning_rate": 1e-2}),
        ("untied", {"learner.zero_stage": 2, "cluster.placement": "separate", "learner.learning_rate": 1e-2,
                    "learner.lora": {"rank": 8, "alpha": 16, "sync": "adapter"}}),
        ("untied", {"learner.zero_stage": 3, "cluster.placement": "separate", "learner.learning_rate": 1e-2,
                    "learner.lora": {"rank": 8, "alpha": 16, "sync": "merged"}}),
    ],
    ids=["zero2-separate-tied", "zero3-colocated-untied-kl", "lora-merged-colocated-tied-kl",
         "lora-adapter-separate-untied", "lora-merged-zero3-separate-untied"],
)
def test_sync_keeps_rollout_and_learner_logprobs_equal(tmp_path, tiny_models, prompt_file, embeddings, overrides):
    run_dir, final = run(tmp_path, tiny_models[embeddings], prompt_file, overrides)
    metrics = read_metrics(run_dir)
    assert [m["step"] for m in metrics] == [0, 1, 2]
    for m in metrics:
        assert m["rollout_learner_logprob_diff"] < 1e-4, m
    # The weights did change between steps (else a diff of 0 would prove nothing).
    assert metrics[-1]["train/grad_norm"] > 0
    assert (final / "config.json").exists()
    assert (run_dir / "rollouts" / "step_2.jsonl").exists()
    assert (run_dir / "config.yaml").exists()
    if overrides.get("algorithm.kl_coef"):
        assert metrics[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # policy == reference before any update
        assert metrics[-1]["kl"] > 0


def test_reward_rises_on_a_learnable_task(tmp_path, tiny_models, prompt_file):
    """The tiny random policy writes a vowel about 5/|vocab| ~ 2% of the time. GRPO on the
    char_fraction reward must raise the mean reward by a clear margin. Chance cannot do it: with
    a fixed policy, the step mean over 32 samples x 16 characters has a standard error below 0.01
    (Bernoulli(p~0.02) per character), so a rise of >= 0.15 is > 15 standard errors."""
    run_dir, _ = run(tmp_path, tiny_models["tied"], prompt_file, {
        "run.total_steps": 12, "algorithm.prompts_per_step": 8, "learner.learning_rate": 3e-3,
        "learner.num_ranks": 1, "learner.micro_batch_size": 8, "learner.zero_stage": 0,
        "run.logprob_diff_bound": 1e-3,
    })
    metrics = read_metrics(run_dir)
    rewards_by_step = [m["reward/char_fraction/mean"] for m in metrics]
    first, last = sum(rewards_by_step[:2]) / 2, sum(rewards_by_step[-2:]) / 2
    # a reward's diagnostics are logged every step, not added to the total; the rollouts carry
    # the columns the rewards saw, the text contract's prompt_opens_think among them
    assert all(0.0 <= m["reward/char_fraction/empty/mean"] <= 1.0 for m in metrics)
    row = json.loads((run_dir / "rollouts" / "step_0.jsonl").read_text().splitlines()[0])
    assert set(row["rewards"]) == {"char_fraction", "char_fraction/empty"}
    assert row["prompt_opens_think"] is False and row["label"] in ("harmful", "benign")
    print("char_fraction by step:", [round(r, 3) for r in rewards_by_step])
    assert first < 0.1
    assert last - first >= 0.15, rewards_by_step


def test_resume_reproduces_the_next_steps(tmp_path, tiny_models, prompt_file, caplog, ray_session):
    """Run 4 steps with a checkpoint every 2; resume a copy whose step-3 checkpoint is damaged: the
    resume refuses (before any actor starts) without a checkpoint or with a changed config, then
    passes over the damaged step 3, says so, and resumes from step 1: steps 2-3 must reproduce
    the uninterrupted run's metrics (same prompts across the epoch boundary, same sampling seeds,
    same optimizer state). 64 prompts / 16 per step: step 4 starts epoch 2."""
    import logging
    import shutil

    import ray

    from rl_safety.runs import RunError

    caplog.set_level(logging.INFO)
    overrides = {"run.total_steps": 4, "run.save_every": 2, "run.keep_checkpoints": 3,
                 "algorithm.prompts_per_step": 16, "learner.micro_batch_size": 8}
    full_dir, _ = run(tmp_path / "full", tiny_models["tied"], prompt_file, overrides)
    full = read_metrics(full_dir)

    # A run that died after step 3's checkpoint, whose step-3 files were then damaged.
    cut = tmp_path / "cut"
    shutil.copytree(tmp_path / "full", cut)
    cut_dir = cut / "runs" / "t"
    shutil.rmtree(cut_dir / "final")
    cut_overrides = {**overrides, "run.output_dir": str(cut / "runs")}
    checkpoints = cut_dir / "checkpoints"
    aside = cut / "aside"
    shutil.move(checkpoints, aside)
    checkpoints.mkdir()
    with pytest.raises(RunError, match="--resume: no intact checkpoint under"):
        run(cut, tiny_models["tied"], prompt_file, cut_overrides, resume=True)
    shutil.rmtree(checkpoints)
    shutil.move(aside, checkpoints)
    with pytest.raises(RunError, match=r"in algorithm.group_size \(4 recorded, 8 now\).*--allow-config-change"):
        run(cut, tiny_models["tied"], prompt_file, {**cut_overrides, "algorithm.group_size": 8}, resume=True)
    assert not ray.util.list_named_actors()  # both refused before any actor started
    shard = next((checkpoints / "step_3").rglob("*model_states.pt"))
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])  # a torn copy

    resumed_dir, _ = run(cut, tiny_models["tied"], prompt_file, cut_overrides, resume=True)
    assert f"checkpoint {checkpoints / 'step_3'} is damaged and will not be loaded" in caplog.text
    assert f"resumed from {checkpoints / 'step_1'} at step 2" in caplog.text
    resumed = read_metrics(resumed_dir)
    assert [m["step"] for m in resumed] == [0, 1, 2, 3]
    for key in ("reward/char_fraction/mean", "response_length/mean", "train/loss", "train/grad_norm",
                "rollout_learner_logprob_diff"):
        for step in (2, 3):
            assert resumed[step][key] == pytest.approx(full[step][key], rel=1e-4, abs=1e-6), (key, step)
    assert (checkpoints / "step_3" / "manifest.json").exists()  # step 3 written again, intact
    assert not list(ray_session.iterdir())  # no learner start built a torch extension (no build lock to leave)


def test_more_learner_ranks_than_cpus_fails_before_any_actor(tmp_path, tiny_models, prompt_file):
    import ray

    from rl_safety.orchestration.cluster import ClusterError

    with pytest.raises(ClusterError, match=r"learner.num_ranks=16 \+ rollout.num_engines=1 x rollout.tensor_parallel_size=1 "
                                          r"\(cluster.placement=separate\) need 17 CPU\(s\) but the Ray cluster has 8"):
        run(tmp_path, tiny_models["tied"], prompt_file, {"learner.num_ranks": 16, "learner.micro_batch_size": 1})
    assert not [a for a in ray.util.list_named_actors()]


def test_a_nan_reward_stops_the_run_naming_the_reward(tmp_path, tiny_models, prompt_file):
    import rewards

    with pytest.raises(rewards.RewardError, match="broken_nan.*nan"):
        run(tmp_path, tiny_models["tied"], prompt_file, {
            "rewards": [{"name": "char_fraction"}, {"name": "broken_nan"}],
            "learner.num_ranks": 1, "learner.zero_stage": 0})
