"""Shaping rewards: overlong penalty (DAPO), cosine length scaling (Yeo et al. 2025, "Demystifying
Long Chain-of-Thought Reasoning"), n-gram repetition penalty.

Lengths are counted in characters of the whole completion (reasoning included) unless the
`tokenizer` argument names a Hugging Face tokenizer (a hub id or a local path), then in its tokens.
"""

from __future__ import annotations

import functools
import math

from rewards.reasoning import correctness
from rewards.registry import register
from rewards.text import completion_text


@functools.lru_cache(maxsize=4)
def _tokenizer(name: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(name)


def completion_lengths(completions: list, tokenizer: str | None = None) -> list[int]:
    """Length of each completion: characters, or tokens of `tokenizer` (no special tokens)."""
    texts = [completion_text(c) for c in completions]
    if tokenizer is None:
        return [len(t) for t in texts]
    tok = _tokenizer(tokenizer)
    return [len(tok.encode(t, add_special_tokens=False)) for t in texts]


@register("overlong_penalty")
def overlong_penalty(prompts: list[str], completions: list, *, max_length: int, cache_length: int,
                     tokenizer: str | None = None, **_: object) -> list[float]:
    """DAPO's soft overlong punishment: 0 up to `max_length - cache_length`, then linear down to
    -1 at `max_length`, and -1 beyond. E.g. max 100, cache 20: length 80 -> 0, 90 -> -0.5."""
    if not 0 < cache_length <= max_length:
        raise ValueError(f"overlong_penalty: need 0 < cache_length <= max_length, got {cache_length}, {max_length}")
    free = max_length - cache_length
    return [0.0 if n <= free else max(-1.0, (free - n) / cache_length)
            for n in completion_lengths(completions, tokenizer)]


@register("cosine_length")
def cosine_length(prompts: list[str], completions: list, answer: list | None = None,
                  prompt_opens_think: list | None = None, *, max_length: int,
                  verifier: str = "math", min_value_correct: float = 0.5, max_value_correct: float = 1.0,
                  min_value_wrong: float = -1.0, max_value_wrong: float = -0.5,
                  tokenizer: str | None = None, **_: object) -> list[float | None]:
    """Correctness scaled by length on a cosine: a correct answer earns `max_value_correct` at
    length 0 falling to `min_value_correct` at `max_length` (shorter is better); a wrong one
    earns `min_value_wrong` at length 0 rising to `max_value_wrong` at `max_length` (thinking
    longer is less bad). Lengths beyond `max_length` count as `max_length`. Correctness comes
    from `verifier` ("math", "gsm8k" or "multiple_choice") against the `answer` column; None
    where there is no reference answer."""
    if max_length <= 0:
        raise ValueError(f"cosine_length: max_length must be positive, got {max_length}")
    correct = correctness(verifier, completions, answer, "cosine_length", prompt_opens_think)
    out: list[float | None] = []
    for ok, n in zip(correct, completion_lengths(completions, tokenizer), strict=True):
        if ok is None:
            out.append(None)
            continue
        at_zero, at_max = (max_value_correct, min_value_correct) if ok else (min_value_wrong, max_value_wrong)
        cosine = math.cos(math.pi * min(n, max_length) / max_length)  # 1 at length 0, -1 at max_length
        out.append(at_max + 0.5 * (at_zero - at_max) * (1.0 + cosine))
    return out


@register("repetition_penalty")
def repetition_penalty(prompts: list[str], completions: list, *, ngram_size: int = 3,
                       max_penalty: float = -1.0, **_: object) -> list[float]:
    """`max_penalty` x the share of repeated word n-grams: 1 - distinct / total n-grams of
    lower-cased words. 0.0 for text without repeats or shorter than `ngram_size` words; "a b a b"
    with n=2 has n-grams (a b, b a, a b): 1 - 2/3 -> max_penalty / 3."""
    if ngram_size < 1 or max_penalty > 0:
        raise ValueError(f"repetition_penalty: need ngram_size >= 1 and max_penalty <= 0, got {ngram_size}, {max_penalty}")
    out = []
    for completion in completions:
        words = completion_text(completion).lower().split()
        ngrams = [tuple(words[i:i + ngram_size]) for i in range(len(words) - ngram_size + 1)]
        out.append(max_penalty * (1.0 - len(set(ngrams)) / len(ngrams)) if ngrams else 0.0)
    return out
