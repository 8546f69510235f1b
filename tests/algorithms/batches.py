"""Random batches for the algorithm tests: logprobs, old logprobs, a response mask, advantages."""

from __future__ import annotations

import torch


def rand_batch(seed: int, B: int = 6, T: int = 5):
    """(logp [B, T], old [B, T], mask [B, T] with each row's first token in, advantages [B])."""
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(B, T, generator=g) * 3
    old = logp + (torch.rand(B, T, generator=g) - 0.5) * 0.6
    mask = (torch.rand(B, T, generator=g) > 0.3).float()
    mask[:, 0] = 1
    adv = torch.randn(B, generator=g)
    return logp, old, mask, adv
