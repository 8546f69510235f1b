"""The on-policy fast path: without an old-logprob pass, the learner takes old = logprobs.detach()
of the update's own forward (and the importance weights from it). Checked here on the real
`Learner.train` / `_micro_step` code and a real tiny Qwen2 with a LoRA adapter (fp32, CPU),
with DeepSpeed's engine replaced by the plain module: the gradient of the one optimizer step
equals the two-pass path's (a no-grad old-logprob pass in eval mode, importance weights computed
as the driver does), and the old logprobs it returns equal that pass's. With LoRA dropout left
on, the two differ: the reason dropout is off by default.
"""

from __future__ import annotations

import pytest
import torch

from rl_safety.algorithms import grpo_math
from rl_safety.config import GRPOConfig, load_config
from rl_safety.config.loader import ConfigError
from rl_safety.learner.deepspeed_learner import Learner
from rl_safety.learner.model import disable_dropout, load_model
from rl_safety.trainers.grpo import old_logprobs_from_update

B, L = 4, 12


class PlainPolicy:
    """`PolicyModel`'s surface a learner step uses, on a plain module: the backward accumulates
    gradients; the optimizer step is left out (the test compares the step's gradient)."""

    device = torch.device("cpu")
    optimizer_steps = 0

    def __init__(self, module: torch.nn.Module) -> None:
        self.engine = self.module = module

    def backward_step(self, loss: torch.Tensor, boundary: bool | None = None) -> None:
        loss.backward()

    def grad_norm(self) -> float:
        return float("nan")

    def learning_rate(self) -> float:
        return 0.0


def grpo_config(tmp_path, model: str, overrides: list[str]) -> GRPOConfig:
    path = tmp_path / "c.yaml"
    path.write_text(f"model: {{path: {model}, dtype: float32}}\ndata: {{train: d.jsonl}}\nrewards: [{{name: r}}]\n")
    return load_config(GRPOConfig, path, ["algorithm.prompts_per_step=2", "algorithm.group_size=2",
                                          "learner.micro_batch_size=2", *overrides])


def learner_on(cfg: GRPOConfig) -> Learner:
    learner = Learner.__new__(Learner)  # the rank without DeepSpeed
    learner.cfg, learner.rank, learner.world_size, learner.reference = cfg, 0, 1, None
    learner.layout = "padded"  # no learner.max_tokens_per_micro_batch
    module = load_model(cfg.model, cfg.learner, seed=0)
    with torch.no_grad():  # a non-zero adapter, so the update's gradient reaches every LoRA weight
        for name, param in module.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.02)
    if not cfg.learner.dropout:
        disable_dropout(module)
    learner.policy = PlainPolicy(module)
    learner.engine = module
    return learner


def mini_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, 200, (B, L), generator=g)
    attention_mask = torch.ones(B, L, dtype=torch.long)
    attention_mask[1, 9:] = 0  # a shorter sequence, right-padded
    response_mask = torch.zeros(B, L - 1)
    response_mask[:, 4:] = 1
    response_mask[1, 8:] = 0
    return {"input_ids": input_ids, "attention_mask": attention_mask, "response_mask": response_mask,
            "advantages": torch.randn(B, 1, generator=g).expand(B, L - 1).contiguous(),
            "rows": torch.arange(B), "global_tokens": float(response_mask.sum()), "global_sequences": float(B)}


def gradients(learner: Learner) -> dict[str, torch.Tensor]:
    grads = {n: p.grad.clone() for n, p in learner.policy.module.named_parameters() if p.grad is not None}
    learner.policy.module.zero_grad(set_to_none=True)
    return grads


def two_pass_and_fast(learner: Learner, batch: dict[str, torch.Tensor]):
    """(gradient, old logprobs) of the step with an old-logprob pass, and of the fast path."""
    a = learner.cfg.algorithm
    old = learner.logprobs(batch["input_ids"], batch["attention_mask"])  # eval mode, no grad (the pass)
    # vLLM's logprobs: the learner's plus noise, so the importance weights vary and some pass the cap
    rollout = old + 0.05 * torch.randn(old.shape, generator=torch.Generator().manual_seed(1))
    given = {**batch, "rollout_logprobs": rollout, "old_logprobs": old}
    if a.importance_correction != "none":  # as the driver computes them from the pass
        given["importance_weights"] = grpo_math.truncated_importance_weights(
            old, rollout, batch["response_mask"], cap=a.importance_cap, level=a.importance_level,
            mode=a.importance_correction)
    stats = learner.train([given])
    assert "old_logprobs" not in stats
    two_pass = gradients(learner)
    stats = learner.train([{**batch, "rollout_logprobs": rollout}])
    fast = gradients(learner)
    reused = torch.zeros_like(old)
    reused[stats["rows"]] = stats["old_logprobs"]
    return (two_pass, old), (fast, reused)


@pytest.mark.parametrize("importance", [("truncate", "token"), ("mask", "sequence"), ("none", "token")],
                         ids=["tis-token", "mis-sequence", "no-is"])
def test_fast_path_update_equals_the_two_pass_update(tmp_path, tiny_models, importance):
    mode, level = importance
    cfg = grpo_config(tmp_path, tiny_models["untied"], [
        "learner.lora={rank: 4, alpha: 8, dropout: 0.3}", f"algorithm.importance_correction={mode}",
        f"algorithm.importance_level={level}", "algorithm.importance_cap=1.02", "algorithm.kl_coef=0"])
    learner = learner_on(cfg)
    (two_pass, old), (fast, reused) = two_pass_and_fast(learner, mini_batch())
    assert torch.allclose(reused, old, rtol=0, atol=1e-6)  # what the driver checks against vLLM's
    assert two_pass.keys() == fast.keys() and any("lora_A" in n for n in fast)
    for name in two_pass:
        assert two_pass[name].abs().max() > 0, name
        torch.testing.assert_close(fast[name], two_pass[name], rtol=1e-5, atol=1e-7, msg=name)


def test_with_dropout_on_the_two_paths_differ(tmp_path, tiny_models):
    """Control: `learner.dropout=true` keeps LoRA's dropout in the update's forward, so an eval-mode
    old pass is not the policy the update differentiates (and the fast path is not taken)."""
    cfg = grpo_config(tmp_path, tiny_models["untied"], [
        "learner.lora={rank: 4, alpha: 8, dropout: 0.3}", "learner.dropout=true",
        "algorithm.importance_correction=none"])
    assert not old_logprobs_from_update(cfg)
    learner = learner_on(cfg)
    torch.manual_seed(0)
    (two_pass, _), (fast, _) = two_pass_and_fast(learner, mini_batch())
    assert any(not torch.allclose(fast[n], two_pass[n], rtol=1e-3, atol=1e-6) for n in two_pass)


def test_disable_dropout_zeroes_every_dropout_and_keeps_train_mode(tiny_models, tmp_path):
    cfg = grpo_config(tmp_path, tiny_models["tied"], ["learner.lora={rank: 4, alpha: 8, dropout: 0.3}"])
    module = load_model(cfg.model, cfg.learner, seed=0)
    for sub in module.modules():  # the tiny Qwen2 has attention dropout too
        if hasattr(sub, "attention_dropout"):
            sub.attention_dropout = 0.1
    assert disable_dropout(module) > 0
    module.train()
    ids = torch.randint(0, 200, (2, 8))
    first, second = module(input_ids=ids).logits, module(input_ids=ids).logits
    assert module.training and torch.equal(first, second)  # deterministic in train mode
    assert all(m.p == 0 for m in module.modules() if isinstance(m, torch.nn.Dropout))


@pytest.mark.parametrize("overrides,expected", [
    ([], True),
    (["algorithm.recompute_old_logprobs=always"], False),
    (["algorithm.epochs_per_step=2"], False),
    (["algorithm.mini_batches_per_step=2"], False),
    (["learner.dropout=true"], False),
    (["algorithm.kl_coef=0.1", "algorithm.kl_placement=loss"], True),  # the reference is a separate pass
    (["algorithm.kl_coef=0.1", "algorithm.kl_placement=reward", "algorithm.kl_estimator=k1"], False),
    (["algorithm.importance_correction=mask", "algorithm.importance_level=sequence"], True),
])
def test_old_logprobs_from_update_only_when_nothing_needs_them_before_the_update(tmp_path, overrides, expected):
    assert old_logprobs_from_update(grpo_config(tmp_path, "m", overrides)) is expected


def test_recompute_old_logprobs_and_dropout_are_validated(tmp_path):
    with pytest.raises(ConfigError, match="recompute_old_logprobs"):
        grpo_config(tmp_path, "m", ["algorithm.recompute_old_logprobs=never"])
    with pytest.raises(ConfigError, match="learner.dropout"):
        grpo_config(tmp_path, "m", ["learner.dropout=maybe"])
