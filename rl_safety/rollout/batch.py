"""A step's rollouts, typed: samples (prompt + completion) in groups, their rewards, and the
padded tensors the learners train on."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rl_safety.data.prompts import PromptExample
from rl_safety.rollout.vllm_engine import Completion


@dataclass
class Sample:
    prompt: PromptExample
    completion: Completion
    group: int  # index of the prompt's group in this step


@dataclass
class RolloutBatch:
    """Scored rollouts: groups of `group_size` consecutive samples answer one prompt each."""

    samples: list[Sample]
    raw: dict[str, list[float | None]]  # each reward's values (None: not applicable)
    rewards: torch.Tensor  # [B] the combined reward, shaped (overlong penalty included)
    penalty: torch.Tensor  # [B] the overlong penalty in `rewards` (0 without)

    def split(self, group_size: int) -> list[RolloutBatch]:
        return [RolloutBatch(self.samples[i:i + group_size], {k: v[i:i + group_size] for k, v in self.raw.items()},
                             self.rewards[i:i + group_size], self.penalty[i:i + group_size])
                for i in range(0, len(self.samples), group_size)]

    @staticmethod
    def join(groups: list[RolloutBatch]) -> RolloutBatch:
        """One batch of whole groups, renumbered in order."""
        samples = [Sample(s.prompt, s.completion, g) for g, group in enumerate(groups) for s in group.samples]
        raw = {k: [v for group in groups for v in group.raw[k]] for k in groups[0].raw}
        return RolloutBatch(samples, raw, torch.cat([group.rewards for group in groups]),
                            torch.cat([group.penalty for group in groups]))


def build_batch(samples: list[Sample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded prompt+response tensors. Token-level tensors are shifted [B, L-1]: entry t
    belongs to token t+1, so response token j of a prompt of length p sits at t = p - 1 + j."""
    L = max(len(s.prompt.token_ids) + len(s.completion.token_ids) for s in samples)
    B = len(samples)
    input_ids = torch.full((B, L), pad_id, dtype=torch.long)
    attention_mask = torch.zeros(B, L, dtype=torch.long)
    response_mask = torch.zeros(B, L - 1)
    rollout_logprobs = torch.zeros(B, L - 1)
    for i, s in enumerate(samples):
        p, r = len(s.prompt.token_ids), len(s.completion.token_ids)
        input_ids[i, :p] = torch.tensor(s.prompt.token_ids)
        input_ids[i, p:p + r] = torch.tensor(s.completion.token_ids, dtype=torch.long)
        attention_mask[i, :p + r] = 1
        response_mask[i, p - 1:p - 1 + r] = 1
        rollout_logprobs[i, p - 1:p - 1 + r] = torch.tensor(s.completion.logprobs)
    return {"input_ids": input_ids, "attention_mask": attention_mask,
            "response_mask": response_mask, "rollout_logprobs": rollout_logprobs}
