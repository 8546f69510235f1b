"""Every paper preset carries the authors' numbers, read from the YAML and checked against the
values cited from the authors' code (seanie12/ThinkSafe @ fa99448, git-disl/Safety-Tax @ 6f25209,
TRL 0.21's GRPOConfig defaults where the authors left a value to TRL). The options the presets
need (PEFT's default LoRA targets, a warmup ratio) are checked to do what they say."""

from __future__ import annotations

import math

import pytest

from rl_safety.config import ConfigError, GRPOConfig, SFTConfig, load_config
from rl_safety.config.refine import DGRConfig, ThinkSafeConfig
from tests.conftest import REPO

CONFIGS = REPO / "configs"


def get(cfg, dotted):
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


# ThinkSafe train.py + scripts/*/train.sh: LoRA r 32, alpha r // 2, dropout 0.05, PEFT's default
# targets; lr 1e-5 cosine, warmup_ratio 0.1; adamw_torch (HF defaults: betas 0.9 / 0.999, weight
# decay 0); max grad norm 1.0; bf16; gradient checkpointing; max length 16384; seed 42.
THINKSAFE_SFT = {
    "learner.lora.rank": 32, "learner.lora.alpha": 16, "learner.lora.dropout": 0.05, "learner.lora.target_modules": None,
    "learner.learning_rate": 1e-5, "learner.lr_schedule": "cosine", "learner.warmup_ratio": 0.1,
    "learner.warmup_steps": 0, "learner.adam_betas": (0.9, 0.999), "learner.weight_decay": 0.0,
    "learner.max_grad_norm": 1.0, "model.dtype": "bfloat16", "learner.gradient_checkpointing": True,
    "data.max_tokens": 16384, "run.seed": 42,
}


@pytest.mark.parametrize("name, epochs, prompt_loss, model, data", [
    ("sft_qwen3_8b_thinksafe_1ep.yaml", 1, True, "Qwen/Qwen3-8B", "Seanie-lee/ThinkSafe-Qwen3-8B"),       # train.sh defaults
    ("sft_qwen3_8b_thinksafe_3ep_pm.yaml", 3, False, "Qwen/Qwen3-8B", "Seanie-lee/ThinkSafe-Qwen3-8B"),  # train_and_eval.sh
    ("sft_r1distill_qwen_7b_thinksafe_lora.yaml", 1, True, "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B",
     "Seanie-lee/ThinkSafe-R1-Distill-7B"),
])
def test_thinksafe_sft_presets(name, epochs, prompt_loss, model, data):
    cfg = load_config(SFTConfig, CONFIGS / name)
    for key, value in THINKSAFE_SFT.items():
        assert get(cfg, key) == value, key
    assert (cfg.training.epochs, cfg.training.prompt_loss, cfg.model.path, cfg.data.train) == (epochs, prompt_loss, model, data)
    assert cfg.data.dataset == "thinksafe"
    # effective batch 8 (train.py: effective_batch_size 8, per-device 1)
    assert cfg.learner.micro_batch_size * cfg.training.gradient_accumulation_steps * cfg.learner.num_ranks == 8


def test_thinksafe_grpo_baseline_preset():
    """grpo.sh + grpo_train.py: guard P(safe) + format at 1:1, beta 0.04, epsilon 0.2, loss_type grpo,
    lr 1e-5 cosine warmup_ratio 0.1, 8 generations, effective batch 64, temperature 0.7, max
    completion 16384, max prompt 1024, LoRA r 32 / alpha 16 / dropout 0.05 on PEFT's default targets;
    TRL 0.21 defaults for the rest (top_p 1.0, no top-k, scale_rewards, num_iterations 1)."""
    cfg = load_config(GRPOConfig, CONFIGS / "grpo_qwen3_0.6b_thinksafe_baseline.yaml")
    a, lr, r = cfg.algorithm, cfg.learner, cfg.rollout
    assert [(x.name, x.weight) for x in cfg.rewards] == [("guard_p_safe", 1.0), ("think_format", 1.0)]
    guard = cfg.rewards[0].args
    assert (guard["model"], guard["view"], guard["top_logprobs"]) == ("meta-llama/Llama-Guard-3-8B", "full", 2)
    assert (a.kl_coef, a.kl_placement, a.kl_estimator, a.k3_clamp) == (0.04, "loss", "k3", None)
    assert (a.clip_low, a.clip_high, a.dual_clip, a.policy_loss) == (0.2, 0.2, None, "ppo_clip")
    assert (a.loss_aggregation, a.advantage_estimator) == ("seq_mean_token_mean", "grpo")
    assert (a.group_size, a.prompts_per_step * a.group_size) == (8, 64)
    assert (a.epochs_per_step, a.mini_batches_per_step, a.dynamic_sampling, a.overlong) == (1, 1, False, "none")
    assert (lr.learning_rate, lr.lr_schedule, lr.warmup_ratio, lr.weight_decay, lr.max_grad_norm) == (1e-5, "cosine", 0.1, 0.0, 1.0)
    assert (lr.lora.rank, lr.lora.alpha, lr.lora.dropout, lr.lora.target_modules) == (32, 16, 0.05, None)
    assert lr.gradient_checkpointing and cfg.model.dtype == "bfloat16" and cfg.run.seed == 42
    assert (r.temperature, r.top_p, r.top_k, r.max_new_tokens, cfg.data.max_prompt_tokens) == (0.7, 1.0, 0, 16384, 1024)
    assert (cfg.model.path, cfg.data.train, cfg.data.prompt_key) == (
        "Qwen/Qwen3-0.6B", "Seanie-lee/ThinkSafe-Qwen3-0.6B", "instruction")


def test_thinksafe_generation_presets_filter_with_the_authors_guard():
    """synthesize_data.py: temperature 0.6, top_p 0.95, max_tokens 16384, n 1; top_k 20 for Qwen
    (the family default), 0 otherwise; Llama-Guard-3-8B on the full response."""
    for name in ("thinksafe_qwen3_8b.yaml", "thinksafe_r1distill_qwen_7b.yaml"):
        cfg = load_config(ThinkSafeConfig, CONFIGS / name)
        g = cfg.generation
        assert (g.temperature, g.top_p, g.max_new_tokens, g.n, g.top_k) == (0.6, 0.95, 16384, 1, "family")
        assert cfg.thinksafe.filter == "guard" and cfg.thinksafe.guard.model == "meta-llama/Llama-Guard-3-8B"
        assert cfg.thinksafe.guard.view == "full" and cfg.data.dataset == "safechain"


# Safety-Tax script/safety_alignment/sft.sh, sft_cot.sh: full fine-tuning, lr 5e-5, cosine (min lr 0),
# 5 epochs, Adam betas (0.9, 0.95), weight decay 1e-4, micro batch 1, accumulation 1, 8 GPUs,
# block size 32768, gradient checkpointing, no warmup.
SAFETY_TAX_SFT = {
    "learner.learning_rate": 5e-5, "learner.lr_schedule": "cosine", "training.epochs": 5,
    "learner.adam_betas": (0.9, 0.95), "learner.weight_decay": 1e-4, "learner.micro_batch_size": 1,
    "training.gradient_accumulation_steps": 1, "learner.num_ranks": 8, "data.max_tokens": 32768,
    "learner.gradient_checkpointing": True, "learner.warmup_steps": 0, "learner.warmup_ratio": 0.0,
    "learner.lora": None, "training.prompt_loss": False,
}


@pytest.mark.parametrize("name, data, dataset", [
    ("sft_r1distill_qwen_32b_directrefusal_safetytax.yaml", "TianshengHuang/DirectRefusal", "directrefusal_text"),
    ("sft_r1distill_qwen_32b_small_safechain_safetytax.yaml", "TianshengHuang/Small_SafeChain", "small_safechain_text"),
    ("sft_r1distill_qwen_1.5b_directrefusal.yaml", "TianshengHuang/DirectRefusal", "directrefusal_text"),
])
def test_safety_tax_sft_presets(name, data, dataset):
    cfg = load_config(SFTConfig, CONFIGS / name)
    if "32b" in name:  # sharded full fine-tuning of 32B: ZeRO-3
        assert cfg.model.path == "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B" and cfg.learner.zero_stage == 3
    for key, value in SAFETY_TAX_SFT.items():
        assert get(cfg, key) == value, key
    assert (cfg.data.train, cfg.data.dataset) == (data, dataset)


@pytest.mark.parametrize("name, data, dataset", [
    ("dgr_r1distill_qwen_1.5b_directrefusal.yaml", "TianshengHuang/DirectRefusal", "directrefusal"),
    ("dgr_qwen3_8b_directrefusal.yaml", "TianshengHuang/DirectRefusal", "directrefusal"),
    ("dgr_r1distill_qwen_7b_r1act.yaml", "Yeonjun/R1-Act-train", "r1_act"),
])
def test_dgr_presets(name, data, dataset):
    cfg = load_config(DGRConfig, CONFIGS / name)
    assert (cfg.data.train, cfg.data.dataset, cfg.dgr.on_failed_refinement) == (data, dataset, "original")
    assert "ours" in (CONFIGS / name).read_text()  # the refinement prompt and sampling are marked as ours


def test_peft_default_targets_are_q_and_v_on_qwen(tiny_models):
    """target_modules null hands the choice to PEFT: on a Qwen2 model it adapts q_proj and v_proj
    only (the ThinkSafe authors' setting), where 'all-linear' adapts every linear layer."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    def adapted(target_modules):
        model = AutoModelForCausalLM.from_pretrained(tiny_models["tied"], dtype=torch.float32)
        peft = get_peft_model(model, LoraConfig(r=32, lora_alpha=16, lora_dropout=0.05, target_modules=target_modules,
                                                task_type="CAUSAL_LM"))
        return {name.split(".lora_A")[0].split(".")[-1] for name, _ in peft.named_parameters() if ".lora_A" in name}

    cfg = load_config(SFTConfig, CONFIGS / "sft_qwen3_8b_thinksafe_1ep.yaml")
    assert adapted(cfg.learner.lora.target_modules) == {"q_proj", "v_proj"}
    assert adapted("all-linear") == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def test_warmup_ratio_rounds_up_as_hugging_face_and_excludes_warmup_steps():
    base = ["model.path=m", "data.train=d"]
    cfg = load_config(SFTConfig, None, [*base, "learner.warmup_ratio=0.1"])
    # transformers' TrainingArguments.get_warmup_steps: math.ceil(num_training_steps * warmup_ratio)
    assert [cfg.learner.warmup_for(n) for n in (95, 100, 1)] == [math.ceil(9.5), 10, 1]
    assert load_config(SFTConfig, None, [*base, "learner.warmup_steps=7"]).learner.warmup_for(100) == 7
    with pytest.raises(ConfigError, match="learner.warmup_steps=5 and learner.warmup_ratio=0.1: set one of them"):
        load_config(SFTConfig, None, [*base, "learner.warmup_steps=5", "learner.warmup_ratio=0.1"])
    with pytest.raises(ConfigError, match="learner.warmup_ratio"):
        load_config(SFTConfig, None, [*base, "learner.warmup_ratio=1.5"])
    with pytest.raises(ConfigError, match="target_modules: a non-empty list"):
        load_config(SFTConfig, None, [*base, "learner.lora={rank: 8, target_modules: []}"])
