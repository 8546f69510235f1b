"""End-to-end GRPO on real Ray, vLLM (CPU), DeepSpeed (gloo) and PEFT, with tiny models.

Every run checks `rollout_learner_logprob_diff` < 1e-4 in fp32 at every step: vLLM's processed
logprobs of the sampled tokens against the learner's recomputation, after each weight sync.
If a sync sent wrong or stale weights (LoRA not merged, a stale tied lm_head), the diff from
step 1 on would be of the order of the weight change, and the trainer itself stops above
`run.logprob_diff_bound`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from rl_safety.config import GRPOConfig, load_config
from tests.conftest import REPO, USER_REWARDS

USER_ALGORITHMS = REPO / "tests" / "extending" / "plugins" / "group_sign.py"

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


# A cap one float32 step above 1: the fp32 noise between vLLM's and the learner's logprobs
# (|log ratio| up to ~1e-6 per token) crosses it on some tokens, so capping / masking visibly
# acts (at the default cap of 2 nothing reaches it).
NOISE_CAP = 1.0 + 2.0**-23
# The algorithm options no other run uses ride on two of the sync runs below (no Ray/vLLM/DeepSpeed
# session of their own; the overlong modes are exclusive, hence two); `check_algorithm_options`
# recomputes from the saved rollouts (all 16 samples of each step) what each should have done.
#
# Overlong penalty (shaping before the flat-group filter), dynamic sampling with oversampling,
# refill and padding; 2 mini-batches x 2 epochs; token-level truncated IS; a user's advantage
# estimator found by name; PPO-clip with dual-clip. Responses of at most 4 tokens: few groups have
# spread (a vowel in 4 characters is rare; harmful prompts score 0), so a round of 6 prompts
# rarely yields the 4 groups a batch needs.
DYNAMIC_SAMPLING_OPTIONS = {
    "rewards": [{"name": "benign_char_fraction", "args": {"target": "aeiou"}}],
    "rollout.max_new_tokens": 4, "run.rollouts_saved_per_step": 16,
    "algorithm.dynamic_sampling": True, "algorithm.dynamic_sampling_oversample": 1.5,
    "algorithm.max_sampling_rounds": 3, "algorithm.dynamic_sampling_shortfall": "pad",
    "algorithm.overlong": "penalty", "algorithm.overlong_buffer": 2,
    "algorithm.mini_batches_per_step": 2, "algorithm.epochs_per_step": 2,
    "algorithm.importance_correction": "truncate", "algorithm.importance_level": "token",
    "algorithm.importance_cap": NOISE_CAP,
    "algorithm.modules": [str(USER_ALGORITHMS)], "algorithm.advantage_estimator": "group_sign",
    "algorithm.dual_clip": 3.0,
}
# Overlong filter (whole responses out of the loss; a mini-batch, or one rank's share of it, may be
# left empty); sequence-level masked IS; GSPO; KL to the reference in the reward with
# REINFORCE++-baseline. Up to 64 tokens, so that about half the responses end before the limit
# and stay in the loss.
FILTER_OPTIONS = {
    "rollout.max_new_tokens": 64, "run.rollouts_saved_per_step": 16,
    "algorithm.overlong": "filter", "algorithm.mini_batches_per_step": 2,
    "algorithm.importance_correction": "mask", "algorithm.importance_level": "sequence",
    "algorithm.importance_cap": NOISE_CAP,
    "algorithm.policy_loss": "gspo", "algorithm.loss_aggregation": "seq_mean_token_mean",
    "algorithm.kl_coef": 0.05, "algorithm.kl_placement": "reward", "algorithm.kl_estimator": "k1",
    "algorithm.advantage_estimator": "reinforce_plus_plus_baseline",
}

# The token-budget learner (learner.max_tokens_per_micro_batch) rides on two sync runs on 2 ranks:
# ZeRO-3 on-policy in the layout learner.packing_layout=auto picks on CPU (sdpa attention: length
# buckets), with the frozen reference partitioned over the ranks (every forward gathers the
# weights: the ranks' micro-batch counts must agree in the reference pass and the update; the
# update's forward gives the old logprobs), and ZeRO-2 LoRA forced to the concatenated layout
# (what auto picks for flash-attention on GPU) with the adapter-disabled reference and the
# overlong filter (empty mini-batches). The budget is the longest possible sequence (64 prompt +
# 16 response tokens; 64 + 64 with FILTER_OPTIONS, hence twice it), so the ranks' micro-batch
# counts differ. The sync check (vLLM vs learner logprobs < 1e-4 per token) then compares the
# layout's forwards with vLLM's; one optimizer step per mini-batch is asserted for every run.
PACKED_BUDGET = 80


@pytest.mark.parametrize(
    "embeddings,overrides",
    [
        ("tied", {"learner.zero_stage": 2, "cluster.placement": "separate", **DYNAMIC_SAMPLING_OPTIONS}),
        ("untied", {"learner.zero_stage": 3, "cluster.placement": "colocated", "algorithm.kl_coef": 0.05,
                    "algorithm.kl_estimator": "k3+", "rollout.num_engines": 2,
                    "learner.max_tokens_per_micro_batch": PACKED_BUDGET, "run.rollouts_saved_per_step": 16}),
        ("tied", {"learner.zero_stage": 2, "cluster.placement": "colocated", "rollout.num_engines": 2,
                  "learner.lora": {"rank": 8, "alpha": 16}, "algorithm.kl_coef": 0.05,
                  "learner.learning_rate": 1e-2}),
        ("untied", {"learner.zero_stage": 2, "cluster.placement": "separate", "learner.learning_rate": 1e-2,
                    "learner.lora": {"rank": 8, "alpha": 16, "sync": "adapter"}, **FILTER_OPTIONS,
                    "learner.max_tokens_per_micro_batch": 2 * PACKED_BUDGET,
                    "learner.packing_layout": "concatenated"}),
        ("untied", {"learner.zero_stage": 3, "cluster.placement": "separate", "learner.learning_rate": 1e-2,
                    "learner.lora": {"rank": 8, "alpha": 16, "sync": "merged"},
                    "algorithm.importance_correction": "none"}),
    ],
    ids=["zero2-separate-tied-dynamic-sampling-penalty-epochs-tis-user-estimator",
         "zero3-colocated-untied-kl3plus-packed", "lora-merged-colocated-tied-kl",
         "lora-adapter-separate-untied-filter-mis-gspo-kl-in-reward-rfpp-baseline-packed-concatenated",
         "lora-merged-zero3-separate-untied-no-is"],
)
def test_sync_keeps_rollout_and_learner_logprobs_equal(tmp_path, tiny_models, prompt_file, embeddings, overrides):
    run_dir, final = run(tmp_path, tiny_models[embeddings], prompt_file, overrides)
    metrics = read_metrics(run_dir)
    assert [m["step"] for m in metrics] == [0, 1, 2]
    for m in metrics:
        assert m["rollout_learner_logprob_diff"] < 1e-4, m
    # The weights did change before the last sync (else a diff of 0 would prove nothing).
    assert any(m["train/optimizer_steps"] > 0 and m["train/grad_norm"] > 0 for m in metrics[:-1])
    assert (final / "config.json").exists()
    assert (run_dir / "rollouts" / "step_2.jsonl").exists()
    assert (run_dir / "config.yaml").exists()
    a = {k.removeprefix("algorithm."): v for k, v in overrides.items() if k.startswith("algorithm.")}
    if overrides.get("algorithm.kl_coef"):
        assert metrics[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # policy == reference before any update
        assert metrics[-1]["kl"] > 0
        # the reference logprobs (each learner rank on its shard: its replica, its ZeRO-3
        # partition, or with LoRA its adapter-disabled policy) against vLLM's at the start
        assert metrics[0]["reference_rollout_logprob_diff"] < 1e-4
        assert metrics[-1]["reference_rollout_logprob_diff"] > metrics[0]["reference_rollout_logprob_diff"]
    # on-policy (one epoch, one mini-batch, no KL in the reward): no old-logprob pass, the update's
    # forward gives them (the diff check above then comes from it); otherwise the pass runs
    on_policy = (a.get("epochs_per_step", 1) == a.get("mini_batches_per_step", 1) == 1
                 and a.get("kl_placement") != "reward")
    for m in metrics:
        assert m["train/old_logprobs_recomputed"] == (0.0 if on_policy else 1.0)
        # without dynamic sampling the passes (if any) ran on the learners while the rewards were scored
        passes = not on_policy or a.get("kl_coef", 0) > 0
        assert m["logprobs/overlapped_with_reward"] == float(passes and not a.get("dynamic_sampling"))
    for m in metrics:  # an optimizer step per mini-batch and epoch; only the overlong filter empties one
        assert m["train/optimizer_steps"] + m["train/empty_mini_batches"] == \
            a.get("epochs_per_step", 1) * a.get("mini_batches_per_step", 1)
        if a.get("overlong") != "filter":
            assert m["train/empty_mini_batches"] == 0
        if a.get("importance_correction") == "none":
            assert not any(key.startswith("importance/") for key in m)
        elif "importance_cap" not in a:  # the default: truncated at importance_cap=2
            assert 0.99 < m["importance/weight_mean"] <= m["importance/weight_max"] <= 2.0
    budget = overrides.get("learner.max_tokens_per_micro_batch")
    if budget:  # token budget: each rank's micro-batches hold at most `budget` tokens
        concatenated = overrides.get("learner.packing_layout") == "concatenated"
        for step, m in enumerate(metrics):
            if m["train/empty_mini_batches"]:
                continue
            # concatenated: no padding; length buckets (auto on CPU): rows within 10% of their longest
            assert (m["train/real_token_fraction"] == 1.0) if concatenated else m["train/real_token_fraction"] >= 0.9
            tokens = sum(r["prompt_tokens"] + r["response_tokens"] for r in read_rollouts(run_dir, step))
            assert m["train/micro_batches"] >= math.ceil(tokens / (2 * budget)) * a.get("epochs_per_step", 1)
    if "overlong" in a:
        check_algorithm_options(run_dir, metrics, a)


def read_rollouts(run: Path, step: int) -> list[dict]:
    return [json.loads(line) for line in (run / "rollouts" / f"step_{step}.jsonl").read_text().splitlines()]


def by_group(rows: list[dict]) -> list[list[dict]]:
    groups: dict[int, list[dict]] = {}
    for row in rows:
        groups.setdefault(row["group"], []).append(row)
    return list(groups.values())


def check_algorithm_options(run_dir: Path, metrics: list[dict], a: dict) -> None:
    """What DYNAMIC_SAMPLING_OPTIONS or FILTER_OPTIONS (`a`: the algorithm keys) should have done,
    recomputed from the saved rollouts of each step; fails if the run did something else."""
    for m in metrics:
        print({k: v for k, v in m.items() if k.split("/")[0] in
               ("dynamic_sampling", "importance", "train", "kl", "kl_penalty", "overlong_penalty")})
    # importance weights: the fp32 noise crosses the cap in some steps (not in every one: on some
    # CPUs a sequence-level ratio, a mean over tokens, lands on exactly 1 for a whole step)
    assert any(m["importance/ratio_max"] > NOISE_CAP for m in metrics)
    for step, m in enumerate(metrics):
        rows = read_rollouts(run_dir, step)
        assert len(rows) == 16
        in_loss = [r for r in rows if not (a["overlong"] == "filter" and r["truncated"])]
        # the tokens the learner trained on: every epoch, only responses the overlong mode keeps
        assert m["train/loss_tokens"] == a.get("epochs_per_step", 1) * sum(r["response_tokens"] for r in in_loss)
        assert math.isfinite(m["train/loss"])
        # where a ratio crossed the cap, truncate caps it and mask zeroes it
        if in_loss:
            assert (m["importance/over_cap_fraction"] > 0) == (m["importance/ratio_max"] > NOISE_CAP)
            if a["importance_correction"] == "truncate":
                assert m["importance/weight_max"] <= NOISE_CAP
            else:
                assert m["importance/weight_mean"] == pytest.approx(1 - m["importance/over_cap_fraction"], abs=1e-4)
        if a["overlong"] == "penalty":
            for r in rows:  # the shaped reward the estimator saw: the raw reward + DAPO's penalty
                excess = min(max(r["response_tokens"] - (4 - 2), 0), 2)
                assert r["reward"] == pytest.approx(r["rewards"]["benign_char_fraction"] - excess / 2, abs=1e-6)
            # dynamic sampling: ceil(4 x 1.5) = 6 prompts a round; the batch holds groups with
            # (shaped) reward spread, and flat ones only as the padding it reports
            assert m["dynamic_sampling/prompts_drawn"] == 6 * m["dynamic_sampling/rounds"]
            groups = by_group(rows)
            flat = [g for g in groups if max(r["reward"] for r in g) - min(r["reward"] for r in g) <= 1e-6]
            assert len(flat) == m["dynamic_sampling/padded_flat_groups"]
            assert m["dynamic_sampling/groups_with_spread"] + len(flat) == 4
            # the user's estimator, looked up by its config name: the sign of reward - group mean
            for g in groups:
                mean = sum(r["reward"] for r in g) / len(g)
                for r in g:
                    d = r["reward"] - mean
                    assert r["advantage"] == (0.0 if abs(d) < 1e-6 else math.copysign(1.0, d))
        else:
            assert (m["train/loss_tokens"] == 0) == (m["train/optimizer_steps"] == 0)
            # KL in the reward: REINFORCE++-baseline of (reward - kl_penalty), whitened over all
            # response tokens of the batch, by hand
            scores = [r["reward"] - r["kl_penalty"] for r in rows]
            centered = []
            for g in range(4):
                group = scores[g * 4:(g + 1) * 4]
                centered += [x - sum(group) / 4 for x in group]
            tokens = [c for c, r in zip(centered, rows) for _ in range(r["response_tokens"])]
            mean = sum(tokens) / len(tokens)
            std = math.sqrt(sum((x - mean) ** 2 for x in tokens) / (len(tokens) - 1) + 1e-8)
            for c, r in zip(centered, rows):
                assert r["advantage"] == pytest.approx((c - mean) / std, rel=1e-4, abs=1e-4)
    if a["overlong"] == "penalty":
        assert max(m["dynamic_sampling/rounds"] for m in metrics) >= 2  # a refill round happened
    else:
        assert all(r["kl_penalty"] == pytest.approx(0.0, abs=1e-5) for r in read_rollouts(run_dir, 0))
        # after an update the penalty is not 0, so the check above saw it subtracted
        assert any(abs(r["kl_penalty"]) > 1e-4 for r in read_rollouts(run_dir, 1))


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
