"""The GRPO run schema. Each field: its default and a one-line meaning."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from rl_safety.config.cluster import GRPOClusterSection
from rl_safety.config.engine import EngineSection, SamplingSection
from rl_safety.config.loader import Conflict, NameInParent, Section


class ModelSection(Section):
    path: str = Field(min_length=1, description="Hugging Face checkpoint directory or hub name of the starting policy")
    dtype: Literal["float32", "bfloat16"] = Field("bfloat16", description="training and rollout dtype")
    chat_template: bool = Field(True, description="wrap each prompt as a user turn with the tokenizer's chat template")
    system_prompt: str | None = Field(None, description="optional system turn before every prompt")
    trust_remote_code: bool = False


class LoraSection(Section):
    rank: int = Field(16, ge=1)
    alpha: float = Field(32.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] | None = Field(
        "all-linear", description="modules to adapt; null = PEFT's default for the architecture "
                                  "(q_proj, v_proj for Qwen2/Qwen3/Llama: the ThinkSafe authors' setting)")
    sync: Literal["merged", "adapter"] = Field(
        "merged", description="send base+BA merged weights to vLLM, or the adapter alone (vLLM LoRA)"
    )

    @field_validator("target_modules")
    @classmethod
    def _named_modules(cls, value: list[str] | str | None) -> list[str] | str | None:
        if isinstance(value, list) and (not value or not all(isinstance(m, str) and m for m in value)):
            raise ValueError("target_modules: a non-empty list of module names, 'all-linear', or null (PEFT's default)")
        return value


class DataSection(Section):
    train: str = Field(min_length=1, description="JSON/JSONL/Parquet/CSV file, or a Hugging Face dataset name")
    split: str = "train"
    prompt_key: str = Field("prompt", min_length=1, description="column holding the prompt text")
    max_prompt_tokens: int = Field(512, ge=1, description="longer prompts are dropped, and counted in the log")
    shuffle: bool = True


class RolloutSection(EngineSection, SamplingSection):
    """GRPO's vLLM rollout engines and how they sample (completions per prompt:
    `algorithm.group_size`). GRPO samples untruncated: top_p 1 and top_k 0
    (`GRPOConfig._untruncated_sampling`)."""


class LearnerSection(Section):
    num_ranks: int = Field(1, ge=1, description="DeepSpeed data-parallel ranks")
    zero_stage: Literal[0, 1, 2, 3] = 2
    offload: bool = Field(False, description="ZeRO CPU offload of optimizer state (and params at stage 3)")
    gradient_checkpointing: bool = False
    learning_rate: float = Field(1e-6, gt=0)
    lr_schedule: Literal["constant", "cosine"] = "constant"
    warmup_steps: int = Field(0, ge=0, description="linear warmup over this many optimizer steps")
    warmup_ratio: float = Field(
        0.0, ge=0, lt=1, description="warmup over this share of all optimizer steps, rounded up (Hugging Face's "
                                     "warmup_ratio); set this or warmup_steps, not both")
    weight_decay: float = Field(0.0, ge=0)
    adam_betas: tuple[float, float] = Field((0.9, 0.999), strict=False, description="Adam's (beta1, beta2), each in [0, 1)")
    max_grad_norm: float = Field(1.0, gt=0)
    micro_batch_size: int = Field(4, ge=1, description="sequences per forward/backward per rank")
    max_tokens_per_micro_batch: int | None = Field(
        None, ge=1, description="token-budget learner: each forward/backward (training, old and reference logprobs) "
                                "takes whole sequences into micro-batches of at most this many tokens (laid out "
                                "as GRPO's learner.packing_layout says) instead of micro_batch_size padded "
                                "sequences; at least data.max_prompt_tokens + rollout.max_new_tokens. null: padded")
    lora: LoraSection | None = Field(None, description="train a LoRA adapter instead of all weights")

    @model_validator(mode="after")
    def _one_warmup(self) -> LearnerSection:
        if self.warmup_steps and self.warmup_ratio:
            raise Conflict(f"learner.warmup_steps={self.warmup_steps} and learner.warmup_ratio={self.warmup_ratio}: "
                           "set one of them", "learner.warmup_steps", "learner.warmup_ratio")
        return self

    def warmup_for(self, total_steps: int) -> int:
        """Warmup steps of a run of `total_steps` optimizer steps: warmup_steps, or
        ceil(warmup_ratio x total_steps) as Hugging Face's Trainer computes it."""
        return math.ceil(self.warmup_ratio * total_steps) if self.warmup_ratio else self.warmup_steps

    @field_validator("adam_betas")
    @classmethod
    def _betas(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= b < 1 for b in value):
            raise ValueError(f"each beta must be in [0, 1), got {list(value)}")
        return value


class GRPOLearnerSection(LearnerSection):
    packing_layout: Literal["auto", "concatenated", "length_buckets"] = Field(
        "auto", description="micro-batch layout under max_tokens_per_micro_batch: concatenated (sequences one after "
                            "another in one row, padding-free; fast only with a varlen attention kernel: "
                            "flash-attention), length_buckets (similar-length sequences as padded rows trimmed to "
                            "their longest, >= 90% real tokens; for sdpa/eager, which attend over every pair of a "
                            "row), auto: concatenated for flash-attention models, else length_buckets")
    dropout: bool = Field(
        False, description="dropout (the model's and lora.dropout) in the policy's forwards; off by default, "
                           "so the update's forward is the policy that sampled and the on-policy ratio is exactly 1 "
                           "(TRL's disable_dropout)")


class AlgorithmSection(Section):
    group_size: int = Field(8, ge=2, description="completions sampled per prompt (G); advantages are relative to "
                                                 "the group, so at least 2")
    prompts_per_step: int = Field(8, ge=1, description="prompts per rollout batch (after dynamic sampling)")
    mini_batches_per_step: int = Field(1, ge=1, description="optimizer steps per rollout batch and epoch")
    epochs_per_step: int = Field(1, ge=1, description="passes over each rollout batch (old logprobs kept)")
    modules: list[str] = Field(
        default_factory=list, description="user .py files registering advantage estimators, policy losses or "
                                          "loss aggregations (imported before the names below are checked)")
    advantage_estimator: str = Field(
        "grpo", description="registered in rl_safety.algorithms.advantages: grpo, dr_grpo (no std), rloo, "
                            "reinforce_plus_plus, reinforce_plus_plus_baseline, or one of `modules`")
    policy_loss: str = Field("ppo_clip", description="ppo_clip (per-token ratio) or gspo (sequence ratio), or one of `modules`")
    clip_low: float = Field(0.2, ge=0, lt=1)
    clip_high: float = Field(0.28, ge=0, le=10, description="> clip_low = DAPO clip-higher")
    dual_clip: float | None = Field(
        3.0, gt=1, description="dual-clip c (verl's clip_ratio_c): loss <= c|A| where A < 0; null: plain PPO")
    kl_coef: float = Field(0.0, ge=0, description="0 drops the reference model entirely")
    kl_placement: Literal["loss", "reward"] = Field(
        "loss", description="KL to the reference as a loss term, or subtracted per token from the reward")
    kl_estimator: Literal["k1", "k2", "k3", "k3+"] = Field(
        "k3", description="see losses.kl_estimate: in the loss k3 follows grad KL(ref||pi), k2 and k3+ "
                          "grad KL(pi||ref), k1 none (refused); in the reward k1 is the usual choice")
    k3_clamp: float | None = Field(10.0, gt=0, description="upper bound on the per-token k3 value (verl: 10); null: none")
    loss_aggregation: str = Field(
        "token_mean", description="token_mean, seq_mean_token_mean or seq_mean_token_sum_norm (Dr.GRPO), "
                                  "or one of `modules`")
    dynamic_sampling: bool = Field(False, description="drop groups whose (shaped) rewards are all equal and draw more")
    dynamic_sampling_oversample: float = Field(
        1.0, ge=1, description="prompts drawn per sampling round = ceil(prompts_per_step x this) (DAPO's "
                               "generation batch; surplus groups with spread are dropped)")
    max_sampling_rounds: int = Field(4, ge=1, description="sampling rounds tried to fill a batch")
    dynamic_sampling_shortfall: Literal["pad", "error"] = Field(
        "pad", description="fewer groups with spread than prompts_per_step after max_sampling_rounds: fill up "
                           "with flat groups (logged) or stop the run")
    recompute_old_logprobs: Literal["auto", "always"] = Field(
        "auto", description="auto: skip the forward-only old-logprob pass when training is on-policy (one epoch, "
                            "one mini-batch, no dropout, no KL in the reward: `old_logprobs_from_update`) and take "
                            "old = logprobs.detach() of the update's forward (verl, TRL); always: run the pass")
    importance_correction: Literal["none", "truncate", "mask"] = Field(
        "truncate", description="truncated IS weight for the rollout/learner logprob mismatch"
    )
    importance_level: Literal["token", "sequence"] = "token"
    importance_cap: float = Field(2.0, gt=1, le=1e6)
    overlong: Literal["none", "filter", "penalty"] = Field(
        "none", description="truncated responses: keep, drop from the loss, or DAPO soft penalty"
    )
    overlong_buffer: int = Field(64, ge=1, description="penalty ramp length before max_new_tokens")
    overlong_penalty_factor: float = Field(1.0, ge=0)

    @field_validator("modules")
    @classmethod
    def _load_modules(cls, paths: list[str]) -> list[str]:
        from rl_safety.algorithms import registry

        registry.load_modules(paths)  # RewardSetupError (a ValueError) naming the file
        return paths

    @field_validator("advantage_estimator", "policy_loss", "loss_aggregation")
    @classmethod
    def _registered(cls, name: str, info: ValidationInfo) -> str:
        from rl_safety.algorithms import advantages, losses

        found = {"advantage_estimator": advantages.ADVANTAGE_ESTIMATORS, "policy_loss": losses.POLICY_LOSSES,
                 "loss_aggregation": losses.LOSS_AGGREGATIONS}[info.field_name]
        found.get(name)  # ValueError listing the registered names
        return name

    @model_validator(mode="after")
    def _check(self) -> AlgorithmSection:
        if self.kl_coef > 0 and self.kl_placement == "loss" and self.kl_estimator == "k1":
            raise Conflict(
                "algorithm.kl_estimator=k1 with kl_placement=loss: k1's expected gradient is "
                "E[grad log pi] = 0, so it does not regularise; use k2 or k3+ (gradient of KL(pi||ref)), "
                "k3 (gradient of KL(ref||pi)), or kl_placement=reward",
                "algorithm.kl_estimator", "algorithm.kl_placement", "algorithm.kl_coef")
        if self.kl_coef > 0 and self.kl_placement == "reward" and self.kl_estimator == "k3+":
            raise Conflict(
                "algorithm.kl_estimator=k3+ with kl_placement=reward: '+' changes only the gradient, and "
                "none flows through a reward; use k3 (or k1, the usual choice in the reward)",
                "algorithm.kl_estimator", "algorithm.kl_placement", "algorithm.kl_coef")
        if self.policy_loss == "gspo" and self.loss_aggregation != "seq_mean_token_mean":
            raise Conflict(
                "algorithm.policy_loss=gspo needs loss_aggregation=seq_mean_token_mean (GSPO's objective "
                f"is a mean over sequences), got {self.loss_aggregation}",
                "algorithm.policy_loss", "algorithm.loss_aggregation")
        return self


class RewardSection(Section):
    name: str = Field(min_length=1, description="name registered in the rewards package or a reward_modules file")
    weight: float = Field(1.0, description="factor of this reward in the total (any finite number)")
    args: dict[str, Any] = Field(default_factory=dict, description="keyword arguments for the reward, checked "
                                 "against its signature before anything starts")
    normalize: Literal["none", "group", "batch"] = Field(
        "none", description="z-score this reward within each group / the batch before weighting"
    )


class RunSection(Section):
    output_dir: str = Field("runs", min_length=1)
    name: NameInParent = Field("grpo", description="the run directory is output_dir/name")
    total_steps: int = Field(10, ge=1)
    seed: int = Field(0, ge=0)
    save_every: int = Field(0, ge=0, description="DeepSpeed checkpoint every K steps (0: only at the end)")
    keep_checkpoints: int = Field(2, ge=1)
    max_restarts: int = Field(
        0, ge=0, description="after an actor dies, restart all actors from the last checkpoint up to this "
                             "many times; needs a checkpoint (run.save_every) (0: stop with the error; `--resume` continues)"
    )
    rollouts_saved_per_step: int = Field(16, ge=0, description="sampled rollouts written to rollouts/step_N.jsonl")
    logprob_diff_bound: float = Field(
        0.05, gt=0, description="stop if mean |rollout - learner logprob| exceeds this (broken weight sync)"
    )
    tensorboard: bool = False
    wandb_project: str | None = Field(None, min_length=1)
    progress_bar: bool = True


class GRPOConfig(Section):
    model: ModelSection
    data: DataSection
    rewards: list[RewardSection] = Field(min_length=1)
    reward_modules: list[str] = Field(default_factory=list, description="user .py files registering rewards")
    rollout: RolloutSection = RolloutSection()
    learner: GRPOLearnerSection = GRPOLearnerSection()
    algorithm: AlgorithmSection = AlgorithmSection()
    cluster: GRPOClusterSection = GRPOClusterSection()
    run: RunSection = RunSection()

    @model_validator(mode="after")
    def _check_batch_plan(self) -> GRPOConfig:
        a, lr = self.algorithm, self.learner
        sequences = a.prompts_per_step * a.group_size
        if sequences % a.mini_batches_per_step:
            raise Conflict(
                f"algorithm.mini_batches_per_step={a.mini_batches_per_step} does not divide the "
                f"{sequences} sequences per step (prompts_per_step x group_size)",
                "algorithm.mini_batches_per_step", "algorithm.prompts_per_step", "algorithm.group_size")
        per_rank = sequences // a.mini_batches_per_step
        if per_rank % lr.num_ranks:
            raise Conflict(f"learner.num_ranks={lr.num_ranks} does not divide a mini-batch of {per_rank} sequences",
                           "learner.num_ranks", "algorithm.mini_batches_per_step", "algorithm.prompts_per_step",
                           "algorithm.group_size")
        per_rank //= lr.num_ranks
        if per_rank % lr.micro_batch_size:
            raise Conflict(
                f"learner.micro_batch_size={lr.micro_batch_size} does not divide the {per_rank} "
                "sequences each rank gets per mini-batch",
                "learner.micro_batch_size", "learner.num_ranks", "algorithm.mini_batches_per_step",
                "algorithm.prompts_per_step", "algorithm.group_size")
        longest = self.data.max_prompt_tokens + self.rollout.max_new_tokens
        if lr.max_tokens_per_micro_batch is not None and lr.max_tokens_per_micro_batch < longest:
            raise Conflict(
                f"learner.max_tokens_per_micro_batch={lr.max_tokens_per_micro_batch} is below the longest "
                f"possible sequence, data.max_prompt_tokens + rollout.max_new_tokens = {longest}: such a "
                "sequence would fit in no micro-batch",
                "learner.max_tokens_per_micro_batch", "data.max_prompt_tokens", "rollout.max_new_tokens")
        if lr.packing_layout != "auto" and lr.max_tokens_per_micro_batch is None:
            raise Conflict(f"learner.packing_layout={lr.packing_layout} lays out token-budget micro-batches, but "
                           "learner.max_tokens_per_micro_batch is null (padded micro-batches): set a budget or "
                           "drop the layout", "learner.packing_layout", "learner.max_tokens_per_micro_batch")
        if self.rollout.temperature == 0:
            raise Conflict("rollout.temperature must be > 0: the learner's logprobs are divided by it",
                           "rollout.temperature")
        if a.clip_high < a.clip_low:
            raise Conflict(f"algorithm.clip_high={a.clip_high} must be >= clip_low={a.clip_low} (clip-higher widens "
                           "the upper bound)", "algorithm.clip_high", "algorithm.clip_low")
        if self.cluster.placement == "colocated":
            engines = self.rollout.num_engines * self.rollout.tensor_parallel_size
            if engines != lr.num_ranks:
                raise Conflict(
                    f"cluster.placement=colocated shares each device between one learner rank and one "
                    f"rollout worker: rollout.num_engines x tensor_parallel_size ({engines}) must equal "
                    f"learner.num_ranks ({lr.num_ranks})",
                    "cluster.placement", "rollout.num_engines", "rollout.tensor_parallel_size", "learner.num_ranks")
        if a.overlong == "penalty" and a.overlong_buffer >= self.rollout.max_new_tokens:
            raise Conflict(f"algorithm.overlong_buffer={a.overlong_buffer} must be smaller than "
                           f"rollout.max_new_tokens={self.rollout.max_new_tokens}",
                           "algorithm.overlong_buffer", "rollout.max_new_tokens", "algorithm.overlong")
        if lr.lora is not None and lr.lora.sync == "adapter" and lr.zero_stage == 3:
            raise Conflict("learner.lora.sync=adapter with zero_stage=3 is not supported; use sync=merged",
                           "learner.lora.sync", "learner.zero_stage")
        return self

    @model_validator(mode="after")
    def _untruncated_sampling(self) -> GRPOConfig:
        """The learner's logprobs are log softmax(logits / temperature) over the whole vocabulary,
        while vLLM's processed logprobs (the importance weights' denominator, the weight-sync
        check) are taken after top-p / top-k truncation: GRPO samples untruncated."""
        ro = self.rollout
        if ro.top_p != 1.0 or ro.top_k != 0:
            raise Conflict(
                f"rollout.top_p={ro.top_p} / rollout.top_k={ro.top_k} truncate sampling, but the learner's "
                "logprobs are of the untruncated distribution, so rollout and learner logprobs would disagree "
                "(a false WeightSyncError, biased importance weights); set rollout.top_p=1 and rollout.top_k=0",
                "rollout.top_p", "rollout.top_k")
        return self

    def batch_plan(self) -> str:
        """The batch arithmetic, printed at start-up so nobody has to guess what a step is."""
        a, lr = self.algorithm, self.learner
        sequences = a.prompts_per_step * a.group_size
        mini = sequences // a.mini_batches_per_step
        per_rank = mini // lr.num_ranks
        return (
            f"{a.prompts_per_step} prompts x {a.group_size} completions = {sequences} sequences per step; "
            f"{a.epochs_per_step} epoch(s) x {a.mini_batches_per_step} mini-batch(es) of {mini} = "
            f"{a.epochs_per_step * a.mini_batches_per_step} optimizer step(s) per rollout batch; "
            f"{per_rank} sequences per rank per mini-batch in micro-batches of {lr.micro_batch_size} "
            f"({per_rank // lr.micro_batch_size} accumulation step(s)) on {lr.num_ranks} rank(s)"
        )
