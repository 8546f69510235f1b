"""Length and repetition shaping on inputs whose values are worked out by hand."""

from __future__ import annotations

import pytest

import rewards


def test_overlong_penalty():
    # max 100, cache 20: free up to 80, then (80 - n) / 20 down to -1 at 100, -1 beyond.
    fn = rewards.get("overlong_penalty")
    lengths = [10, 80, 90, 95, 100, 150]
    assert fn([""] * 6, ["x" * n for n in lengths], max_length=100, cache_length=20) == [0.0, 0.0, -0.5, -0.75, -1.0, -1.0]
    with pytest.raises(ValueError, match="cache_length"):
        fn([""], ["x"], max_length=10, cache_length=20)


def test_cosine_length():
    fn = rewards.get("cosine_length")
    # 50 characters of 100: cos(pi/2) = 0 -> midpoint. Correct: 0.5 + 0.5 * (1.0 - 0.5) = 0.75;
    # wrong: -0.5 + 0.5 * (-1.0 + 0.5) = -0.75. At or beyond max_length the far end: 0.5 and -0.5.
    half, long = "\\boxed{4}".rjust(50), "\\boxed{4}".rjust(120)
    values = fn([""] * 5, [half, half, long, long, half], answer=["4", "5", "4", "5", ""], max_length=100)
    assert values[4] is None
    assert values[:4] == pytest.approx([0.75, -0.75, 0.5, -0.5])
    # shorter correct answers earn more: 9 characters of 100
    short = fn([""], ["\\boxed{4}"], answer=["4"], max_length=100)[0]
    assert 0.75 < short < 1.0
    assert fn([""], ["Answer: B"], answer=["B"], max_length=9, verifier="multiple_choice") == [pytest.approx(0.5)]


def test_repetition_penalty():
    fn = rewards.get("repetition_penalty")
    # "a b a b", n=2: n-grams (a b), (b a), (a b): 1 - 2/3 repeated -> -1/3
    # "a a a a a", n=1: 5 unigrams, 1 distinct -> 1 - 1/5 = 0.8 -> -0.8 (max_penalty -1)
    assert fn([""], ["a b a b"], ngram_size=2) == [pytest.approx(-1 / 3)]
    assert fn([""], ["A a a A a"], ngram_size=1) == [pytest.approx(-0.8)]
    assert fn([""] * 3, ["a b c", "hi", "one two three four"], ngram_size=3, max_penalty=-0.5) == [0.0, 0.0, 0.0]
