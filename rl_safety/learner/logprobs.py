"""Per-token logprobs of sequences under a causal LM (the learner's policy and its KL reference).

Token-level tensors are *shifted*: position t of a [B, L-1] tensor refers to token
``input_ids[:, t + 1]`` predicted from the prefix ``input_ids[:, : t + 1]``.
"""

from __future__ import annotations

import torch

from rl_safety.algorithms.grpo_math import logprobs_from_logits
from rl_safety.learner.model import to_device


def sequence_logprobs(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      temperature: float, micro_batch_size: int, device: torch.device | str) -> torch.Tensor:
    """Logprobs [B, L-1] of each next token (temperature-scaled, as vLLM's processed logprobs),
    computed micro-batch by micro-batch on `device` (the model's) and returned on the CPU, where
    the driver compares them with vLLM's and ships them to the learners."""
    logprobs = []
    for start in range(0, input_ids.shape[0], micro_batch_size):
        part = to_device({"input_ids": input_ids[start : start + micro_batch_size],
                          "attention_mask": attention_mask[start : start + micro_batch_size]}, device)
        logits = model(**part, use_cache=False).logits[:, :-1].float()
        logprobs.append(logprobs_from_logits(logits, part["input_ids"][:, 1:], temperature))
    return torch.cat(logprobs).cpu()
