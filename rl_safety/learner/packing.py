"""Per-token logprobs and entropy of a causal LM's forward, padded or padding-free, with the
vocabulary-wide math done a chunk of tokens at a time.

Micro-batch layouts of a right-padded batch (`micro_batches`; `layout_for` picks one):
- `padded` (`learner.max_tokens_per_micro_batch` null): runs of `micro_batch_size` rows, each
  micro-batch trimmed to its own longest sequence, with the attention mask.
- `concatenated` (token budget, attention with a varlen kernel: flash-attention): the sequences of
  a micro-batch, padding removed, one after another in ONE row whose `position_ids` restart at 0
  for every sequence, passed without an attention mask. Transformers (5.x
  `masking_utils.find_packed_sequence_indices`) reads the sequence boundaries from the position
  ids: flash-attention takes its varlen path (attention cost ~ sum of L_i^2), sdpa / eager get a
  block-diagonal causal mask but still compute all N x N pairs of the row. Bins filled first-fit
  decreasing under the token budget; 100% real tokens.
- `length_buckets` (token budget, no varlen kernel: sdpa, eager): the sequences sorted by length
  and cut into micro-batches of similar lengths (each at least `MIN_FILL` of its micro-batch's
  longest), laid out as padded rows trimmed to that longest: at least 90% real tokens, attention
  ~ sum of b x L^2 of rows of about one length, and at most the budget of (padded) tokens each.
Every layout gives the logprobs of the padded forward: no token attends across sequences, rotary
positions are each sequence's own.

Outputs are returned in the shifted [b, L-1] layout of `rl_safety.learner.logprobs` (position t
refers to input_ids[:, t + 1]); positions past a sequence's end are 0 on the concatenated path
(the padded rows leave the logprob of a pad token there): every consumer masks them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

LAYOUTS = ("padded", "concatenated", "length_buckets")
# length_buckets: the shortest sequence of a micro-batch is at least this share of its longest,
# so at most 10% of the tokens computed are padding
MIN_FILL = 0.9

# Tokens per chunk of the vocabulary-wide math: with a 152k vocabulary one fp32 chunk of 1024
# tokens is 0.6 GB (a few of them live at once), against ~40 GB for 64k tokens' full fp32 logits.
CHUNK_TOKENS = 1024


class _ChunkedTokenLogprobs(torch.autograd.Function):
    """log softmax(logits / temperature)[target] per token, and (no-grad) the entropy of that
    softmax, from [N, V] logits of any dtype, upcasting one chunk of rows at a time to fp32.
    Backward recomputes each chunk's softmax from the saved logits and per-token logsumexp, so
    neither pass keeps an fp32 [N, V] tensor: d logp / d logits = (onehot(target) - p) / T."""

    @staticmethod
    def forward(ctx, logits, targets, temperature, chunk, with_entropy):
        n = logits.shape[0]
        logprobs = torch.empty(n, dtype=torch.float32, device=logits.device)
        lse = torch.empty(n, dtype=torch.float32, device=logits.device)
        entropy = torch.empty(n if with_entropy else 0, dtype=torch.float32, device=logits.device)
        for s in range(0, n, chunk):
            x = logits[s : s + chunk].to(torch.float32, copy=True)  # modified in place below
            if temperature != 1.0:
                x.div_(temperature)  # in place: no second, temperature-scaled copy
            lse[s : s + chunk] = torch.logsumexp(x, dim=-1)
            logprobs[s : s + chunk] = x.gather(-1, targets[s : s + chunk, None]).squeeze(-1) - lse[s : s + chunk]
            if with_entropy:  # H = -sum_v p_v log p_v (lse - sum_v p_v x_v would cancel digits)
                log_p = x.sub_(lse[s : s + chunk, None])
                entropy[s : s + chunk] = -(log_p.exp() * log_p).sum(-1)
        ctx.save_for_backward(logits, targets, lse)
        ctx.temperature, ctx.chunk = temperature, chunk
        ctx.mark_non_differentiable(entropy)
        return logprobs, entropy

    @staticmethod
    def backward(ctx, grad_logprobs, _grad_entropy):
        logits, targets, lse = ctx.saved_tensors
        grad = torch.empty_like(logits)
        for s in range(0, logits.shape[0], ctx.chunk):
            g = logits[s : s + ctx.chunk].to(torch.float32, copy=True)
            if ctx.temperature != 1.0:
                g.div_(ctx.temperature)
            up = grad_logprobs[s : s + ctx.chunk, None]
            g.sub_(lse[s : s + ctx.chunk, None]).exp_().mul_(-up)  # -p * upstream
            g.scatter_add_(-1, targets[s : s + ctx.chunk, None], up)
            if ctx.temperature != 1.0:
                g.div_(ctx.temperature)
            grad[s : s + ctx.chunk] = g
        return grad, None, None, None, None


def chunked_logprobs(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0,
                     chunk: int = CHUNK_TOKENS, with_entropy: bool = False
                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """[N, V] logits (any dtype), [N] target ids -> ([N] fp32 logprob of each target under
    softmax(logits / temperature), differentiable w.r.t. the logits; [N] fp32 entropy of that
    softmax, detached, or None). Equal to a full fp32 log_softmax up to fp32 rounding."""
    if logits.ndim != 2 or targets.shape != logits.shape[:1]:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)}: expected [N, V] and [N]")
    logprobs, entropy = _ChunkedTokenLogprobs.apply(logits, targets, float(temperature), chunk, with_entropy)
    return logprobs, (entropy if with_entropy else None)


def layout_for(max_tokens: int | None, requested: str, attention_implementation: str | None) -> str:
    """The micro-batch layout (one of `LAYOUTS`) of `learner.max_tokens_per_micro_batch` and
    `learner.packing_layout` (`requested`: auto, concatenated or length_buckets) for a model whose
    attention is `attention_implementation` (its `config._attn_implementation`). auto:
    concatenated only where attention has a varlen kernel (flash-attention, any version), since
    sdpa / eager compute every pair of a concatenated row (N^2 for N packed tokens, against the
    sum of the sequences' L^2)."""
    if max_tokens is None:
        return "padded"
    if requested != "auto":
        return requested
    from transformers.utils.generic import is_flash_attention_requested

    return ("concatenated" if is_flash_attention_requested(requested_attention_implementation=attention_implementation)
            else "length_buckets")


def _refuse_too_long(lengths: Sequence[int], max_tokens: int) -> None:
    longest = max(lengths, default=0)
    if longest > max_tokens:
        raise ValueError(f"a sequence of {longest} tokens exceeds learner.max_tokens_per_micro_batch={max_tokens}")


def first_fit_decreasing(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Indices of `lengths` in bins of at most `max_tokens` tokens: longest first, each into the
    first bin with room (first-fit decreasing). Bins are listed in the order they were opened."""
    _refuse_too_long(lengths, max_tokens)
    bins: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        b = next((b for b, r in enumerate(room) if r >= lengths[i]), None)
        if b is None:
            bins.append([])
            room.append(max_tokens)
            b = len(bins) - 1
        bins[b].append(i)
        room[b] -= lengths[i]
    return bins


def length_buckets(lengths: Sequence[int], max_tokens: int, min_fill: float = MIN_FILL) -> list[list[int]]:
    """Indices of `lengths` grouped into micro-batches, longest first: each is padded only to its
    own longest sequence (its first index), holds at most `max_tokens` tokens after that padding
    (rows x longest), and takes only sequences of at least `min_fill` x that length, so at most
    1 - min_fill of any row is padding and a row attends over about its own length."""
    _refuse_too_long(lengths, max_tokens)
    buckets: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        width = lengths[buckets[-1][0]] if buckets else 0
        if buckets and (len(buckets[-1]) + 1) * width <= max_tokens and lengths[i] >= min_fill * width:
            buckets[-1].append(i)
        else:
            buckets.append([i])
    return buckets


def micro_batches(attention_mask: torch.Tensor, layout: str, micro_batch_size: int,
                  max_tokens: int | None = None) -> list[list[int]]:
    """Row indices of each micro-batch of a right-padded [B, L] batch in `layout` (see the module
    docstring): consecutive runs of `micro_batch_size` rows (padded), first-fit-decreasing bins of
    at most `max_tokens` real tokens (concatenated), or length buckets of at most `max_tokens`
    padded tokens (length_buckets)."""
    if layout == "padded":
        rows = list(range(attention_mask.shape[0]))
        return [rows[s : s + micro_batch_size] for s in range(0, len(rows), micro_batch_size)]
    if max_tokens is None:
        raise ValueError(f"the {layout} layout needs a token budget (learner.max_tokens_per_micro_batch)")
    lengths = attention_mask.sum(dim=1).tolist()
    if layout == "concatenated":
        return first_fit_decreasing(lengths, max_tokens)
    if layout == "length_buckets":
        return length_buckets(lengths, max_tokens)
    raise ValueError(f"unknown micro-batch layout {layout!r}; one of {LAYOUTS}")


def computed_tokens(attention_mask: torch.Tensor, layout: str) -> int:
    """Token positions the model runs for a micro-batch (`select_rows`' output): its real tokens
    concatenated, rows x width in padded rows. Real tokens / this = the real-token fraction."""
    return int(attention_mask.sum()) if layout == "concatenated" else attention_mask.numel()


def select_rows(batch: dict[str, Any], rows: list[int]) -> dict[str, Any]:
    """A micro-batch: `rows` of a right-padded batch (its per-sequence tensors: [B], [B, L] and
    shifted [B, L-1]; other values kept), trimmed to the rows' longest sequence. No rows: the
    first sequence's first two tokens with no token in the loss (response_mask 0: loss and gradient 0), for a data-parallel
    rank with fewer micro-batches than the others (see `sequence_logprobs`, `Learner.train`)."""
    mask = batch["attention_mask"]
    width = int(mask[rows].sum(dim=1).max()) if rows else 2
    part = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor) and v.ndim >= 1 and v.shape[0] == mask.shape[0]:  # per sequence
            v = v[rows or [0]]
            if v.ndim == 2:
                v = v[:, : width if v.shape[1] == mask.shape[1] else width - 1]
            if not rows and k == "response_mask":
                v = torch.zeros_like(v)
        part[k] = v
    return part


def forward_logprobs(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     temperature: float, packed: bool, with_entropy: bool = False
                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One forward of `model` over the right-padded [b, L] rows -> (logprobs [b, L-1] fp32, with
    the model's gradient; entropy [b, L-1] fp32 detached, or None), temperature-scaled as vLLM's
    processed logprobs. `packed` (the concatenated layout): the rows' real tokens go through the
    model as one row [1, N] (see the module docstring); else as the padded [b, L] batch with its
    attention mask."""
    b, width = input_ids.shape
    if not packed:
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
        targets = torch.cat([input_ids[:, 1:], input_ids[:, :1]], dim=1)  # last column: unused
        logprobs, entropy = chunked_logprobs(logits.reshape(b * width, -1), targets.reshape(-1), temperature,
                                             with_entropy=with_entropy)
        return logprobs.view(b, width)[:, :-1], (entropy.view(b, width)[:, :-1] if with_entropy else None)
    real = attention_mask.bool()
    lengths = real.sum(dim=1)
    flat_ids = input_ids[real]  # row-major: the sequences one after another
    position_ids = torch.arange(width, device=input_ids.device).expand(b, width)[real]
    logits = model(input_ids=flat_ids[None], position_ids=position_ids[None], use_cache=False).logits[0]
    targets = torch.cat([flat_ids[1:], flat_ids[:1]])  # the token after each (across a boundary: unused)
    logprobs, entropy = chunked_logprobs(logits, targets, temperature, with_entropy=with_entropy)
    # packed token k is (row, position); its prediction belongs at shifted (row, position) when
    # the position is not its sequence's last
    rows, positions = real.nonzero(as_tuple=True)
    keep = positions < lengths[rows] - 1
    index = (rows[keep], positions[keep])

    def unpack(values: torch.Tensor) -> torch.Tensor:
        return values.new_zeros(b, width - 1).index_put(index, values[keep])

    return unpack(logprobs), (unpack(entropy) if with_entropy else None)
