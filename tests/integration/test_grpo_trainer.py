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
        "rewards": [{"name": "char_fraction", "args": {"target": "a"}}],
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
def ray_session():
    import ray

    ray.init(num_cpus=8, include_dashboard=False)
    yield
    ray.shutdown()


@pytest.mark.parametrize(
    "embeddings,overrides",
    [
        ("tied", {"learner.zero_stage": 2, "cluster.placement": "separate"}),
        ("untied", {"learner.zero_stage": 3, "cluster.placement": "colocated", "algorithm.kl_coef": 0.05,
                    "rollout.num_engines": 2}),
        ("tied", {"learner.zero_stage": 2, "cluster.placement": "colocated", "rollout.num_engines": 2,
                  "learner.lora": {"rank": 8, "alpha": 16}, "algorithm.kl_coef": 0.05,
                  "learner.learning_rate": 1e-2}),
    ],
    ids=["zero2-separate-tied", "zero3-colocated-untied-kl", "lora-merged-colocated-tied-kl"],
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
