"""Per-token logprobs of sequences under a causal LM (the learner's policy and its KL reference).

Token-level tensors are *shifted*: position t of a [B, L-1] tensor refers to token
``input_ids[:, t + 1]`` predicted from the prefix ``input_ids[:, : t + 1]``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from rl_safety.learner import packing
from rl_safety.learner.model import to_device


def sequence_logprobs(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      temperature: float, micro_batch_size: int, device: torch.device | str,
                      layout: str = "padded", max_tokens_per_micro_batch: int | None = None,
                      common_count: Callable[[int], int] | None = None) -> torch.Tensor:
    """Logprobs [B, L-1] of each next token (temperature-scaled, as vLLM's processed logprobs) of
    the right-padded batch, computed micro-batch by micro-batch on `device` (the model's) and
    returned on the CPU, where the driver compares them with vLLM's and ships them to the
    learners. Micro-batches in `layout` (`rl_safety.learner.packing`): `micro_batch_size` padded
    rows, or concatenated bins / length buckets of at most `max_tokens_per_micro_batch` tokens.
    `common_count`: data-parallel ranks whose forwards are collectives (ZeRO-3) must run equally
    many; it maps this rank's micro-batch count to the count all ranks run, and the missing
    ones are two-token forwards whose output is discarded."""
    plan = packing.micro_batches(attention_mask, layout, micro_batch_size, max_tokens_per_micro_batch)
    if common_count is not None:
        plan += [[]] * (common_count(len(plan)) - len(plan))
    logprobs = torch.zeros(input_ids.shape[0], input_ids.shape[1] - 1)
    for rows in plan:  # an empty one only keeps the ranks' collectives in step
        part = to_device(packing.select_rows({"input_ids": input_ids, "attention_mask": attention_mask}, rows),
                         device)
        values, _ = packing.forward_logprobs(model, part["input_ids"], part["attention_mask"], temperature,
                                             packed=layout == "concatenated")
        if rows:
            logprobs[rows, : values.shape[1]] = values.float().cpu()
    return logprobs

