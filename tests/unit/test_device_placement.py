"""Every tensor that enters a forward is on its module's device (the GPU path, checked on CPU).

The driver builds batches on its CPU and ships them through Ray; on a GPU the learner's,
the reference policy's and the SFT rank's modules sit on cuda:0. Here the module sits on torch's
`meta` device instead (the one other device every CPU build has): a forward that receives a
tensor from anywhere else fails its assertion, exactly as a CPU batch meeting GPU weights would.
Meta tensors carry shapes but no values, so each test runs a code path up to the point where a
value is read (the optimizer step, the copy back to the CPU) and checks that it got there.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from rl_safety.config import GRPOConfig, load_config
from rl_safety.config.grpo import ModelSection
from rl_safety.learner.deepspeed_learner import Learner
from rl_safety.learner.model import frozen_reference
from rl_safety.trainers.sft import IGNORE, SFTRank, collate

META = torch.device("meta")
VOCAB = 11


class MetaLM(torch.nn.Module):
    """A causal LM whose weights live on the meta device; its forward asserts that every
    tensor it receives is on the device of its parameters, and records what it saw."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(VOCAB, 4, device=META)
        self.head = torch.nn.Linear(4, VOCAB, device=META)
        self.seen: dict[str, torch.device] = {}

    def forward(self, **inputs):
        own = next(self.parameters()).device
        for name, value in inputs.items():
            if isinstance(value, torch.Tensor):
                assert value.device == own, f"forward got {name} on {value.device}, its module is on {own}"
                self.seen[name] = value.device
        return SimpleNamespace(logits=self.head(self.embed(inputs["input_ids"])))


class LossReached(Exception):
    def __init__(self, loss: torch.Tensor) -> None:
        super().__init__("backward reached")
        self.loss = loss


class MetaPolicy:
    """The parts of `PolicyModel` a learner micro-step uses, on the meta device; the backward
    stops the step (a meta loss has no value to step with) and hands the loss to the test."""

    device = META
    optimizer_steps = 0

    def __init__(self, module: MetaLM) -> None:
        self.engine = module

    def backward_step(self, loss: torch.Tensor, boundary: bool | None = None) -> None:
        raise LossReached(loss)


def grpo_learner(tmp_path) -> Learner:
    path = tmp_path / "c.yaml"
    path.write_text("model: {path: m}\ndata: {train: d.jsonl}\nrewards: [{name: r}]\n")
    cfg = load_config(GRPOConfig, path, ["algorithm.prompts_per_step=2", "algorithm.group_size=2",
                                          "learner.micro_batch_size=2", "algorithm.kl_coef=0.1",
                                          "algorithm.importance_correction=truncate"])
    learner = Learner.__new__(Learner)  # the rank without DeepSpeed: its policy is the meta one
    learner.cfg, learner.rank, learner.world_size = cfg, 0, 1
    learner.policy = MetaPolicy(MetaLM())
    learner.engine = learner.policy.engine
    learner.reference = None
    learner.layout = "padded"  # no learner.max_tokens_per_micro_batch
    return learner


def cpu_sequences(batch: int = 2, length: int = 6) -> dict[str, torch.Tensor]:
    """Token ids and masks as the driver builds them: on the CPU."""
    return {"input_ids": torch.randint(0, VOCAB, (batch, length)),
            "attention_mask": torch.ones(batch, length, dtype=torch.long)}


@pytest.mark.parametrize("on_policy", [False, True], ids=["old-logprobs-given", "on-policy"])
def test_learner_update_moves_the_whole_micro_batch_to_the_module(tmp_path, on_policy):
    learner = grpo_learner(tmp_path)
    seqs = cpu_sequences()
    shifted = torch.zeros(2, 5)
    mini_batch = {**seqs, "response_mask": torch.ones(2, 5), "ref_logprobs": shifted, "rollout_logprobs": shifted,
                  "advantages": torch.tensor([[1.0], [-1.0]]).expand(2, 5), "rows": torch.arange(2),
                  "global_tokens": 10.0, "global_sequences": 2.0}
    if not on_policy:  # else the learner takes them (and the importance weights) from the update's forward
        mini_batch.update(old_logprobs=shifted, importance_weights=torch.ones(2, 5))
    with pytest.raises(LossReached) as reached:
        learner.train([mini_batch])
    # the loss mixes the forward's logits with every per-token tensor of the batch (old and
    # reference logprobs, advantages, mask, importance weights): one left on the CPU raises
    # "Tensor on device cpu is not on the expected device meta" before the backward
    assert reached.value.loss.device == META
    assert learner.engine.seen == {"input_ids": META, "attention_mask": META}


def test_learner_logprobs_run_on_the_module_and_come_back_to_the_cpu(tmp_path):
    learner = grpo_learner(tmp_path)
    # the forward and the logprob math ran on meta; the last step copies the result to the
    # CPU for the driver, which a meta tensor (no data) refuses
    with pytest.raises(NotImplementedError, match="Cannot copy out of meta tensor"):
        learner.logprobs(**cpu_sequences())
    assert learner.engine.seen == {"input_ids": META, "attention_mask": META}


def test_reference_is_placed_on_the_learners_device_and_fed_there(tmp_path, tiny_models):
    learner = grpo_learner(tmp_path)
    model = ModelSection(path=str(tiny_models["tied"]), dtype="float32")
    frozen = frozen_reference(model, learner.cfg.learner, device=META)  # ZeRO-2: a plain replica per rank
    assert {p.device for p in frozen.parameters()} == {META}
    assert not any(p.requires_grad for p in frozen.parameters()) and not frozen.training
    learner.reference = MetaLM()  # a forward that can run on meta (a Hugging Face one reads mask values)
    with pytest.raises(NotImplementedError, match="Cannot copy out of meta tensor"):
        learner.logprobs(**cpu_sequences(), reference=True)
    assert learner.reference.seen == {"input_ids": META, "attention_mask": META}
    assert learner.engine.seen == {}  # the reference pass did not run the policy


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_sft_micro_step_moves_the_batch_to_the_module(packed):
    rank = SFTRank.__new__(SFTRank)
    rank.policy = MetaPolicy(MetaLM())
    rows = [[([1, 2, 3], [IGNORE, 2, 3]), ([4, 5], [4, 5])] if packed else [([1, 2, 3], [IGNORE, 2, 3])],
            [([6, 7, 8, 9], [IGNORE, IGNORE, 8, 9])]]
    batch = collate(rows, pad_id=0)
    assert {v.device for v in batch.values()} == {torch.device("cpu")}
    with pytest.raises(LossReached) as reached:
        rank._micro_step(batch, step_tokens=6.0)
    assert reached.value.loss.device == META  # the labels met the logits on the module's device
    expected = {"input_ids": META, "position_ids": META} if packed else {"input_ids": META, "attention_mask": META}
    assert rank.policy.engine.seen == expected
