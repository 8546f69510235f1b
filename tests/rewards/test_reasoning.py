"""Math verification (hand-checked equivalences, off the main thread), GSM8K numbers, option
letters and the think format, each on inputs whose values are worked out by hand."""

from __future__ import annotations

import threading
import time

import pytest

import rewards
from rewards.reasoning import verify_math

# (prediction, gold): mathematically equal.
EQUIVALENT = [
    ("\\boxed{\\frac{1}{2}}", "0.5"), ("\\boxed{0.5}", "\\frac{1}{2}"), ("\\boxed{\\dfrac{3}{4}}", "3/4"),
    ("\\boxed{2\\sqrt{2}}", "\\sqrt{8}"), ("\\boxed{\\frac{\\sqrt{3}}{3}}", "\\frac{1}{\\sqrt{3}}"),
    ("\\boxed{3\\sqrt{2}}", "\\sqrt{18}"), ("\\boxed{(x+1)^2}", "x^2+2x+1"), ("\\boxed{1,000}", "1000"),
    ("The answer is 1,234,567.", "1234567"), ("\\boxed{10^{3}}", "1{,}000"), ("\\boxed{5\\text{ cm}}", "5"),
    ("\\boxed{\\text{12 apples}}", "12"), ("The total is $\\$12.50$.", "12.5"),
    ("<think>maybe 3</think> so \\boxed{\\pi/2}", "\\frac{\\pi}{2}"),
    ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "\\left( 3, \\frac{\\pi}{2} \\right)"),
    ("\\boxed{x = 4}", "4"), ("Therefore $x=\\boxed{-5}$", "-5"), ("Final answer: $\\frac{6}{8}$", "\\frac{3}{4}"),
    ("\\boxed{2^{10}}", "1024"), ("\\boxed{-\\frac{1}{3}}", "-1/3"), ("\\boxed{\\{1, 2, 3\\}}", "\\{3,2,1\\}"),
    ("\\boxed{[0, 1)}", "[0,1)"), ("\\boxed{\\frac{x}{2}+\\frac{x}{2}}", "x"), ("So the area is \\boxed{16\\pi}.", "16\\pi"),
    ("\\boxed{\\sin^2 x + \\cos^2 x}", "1"), ("\\boxed{0.25}", "25\\%"), ("\\boxed{\\frac{7}{2}}", "3.5"),
]
# (prediction, gold): different values, or no final answer.
NOT_EQUIVALENT = [
    ("\\boxed{3}", "4"), ("\\boxed{\\frac{1}{3}}", "0.33"), ("\\boxed{\\sqrt{2}}", "2"), ("\\boxed{x^2+1}", "(x+1)^2"),
    ("\\boxed{1000}", "100"), ("\\boxed{1,001}", "1000"), ("\\boxed{-2}", "2"), ("\\boxed{(1,2)}", "(2,1)"),
    ("\\boxed{[0,1]}", "[0,1)"), ("\\boxed{2\\pi}", "\\pi"), ("\\boxed{5\\text{ cm}}", "6"),
    ("\\boxed{\\frac{2}{3}}", "\\frac{3}{2}"), ("The answer is 12 apples.", "13"), ("\\boxed{x+1}", "x-1"),
    ("\\boxed{\\sqrt{3}}", "3"), ("\\boxed{1.5}", "\\frac{2}{3}"), ("\\boxed{10^{4}}", "1{,}000"),
    ("<think>\\boxed{7}</think> I am not sure.", "7"),  # the right number only in the thought
    ("<think>I think it is 7", "7"),  # no final answer
    ("", "1"),
]


def test_verify_math_agrees_with_hand_checked_cases():
    wrong = [(p, g, True) for p, g in EQUIVALENT if not verify_math(p, g)]
    wrong += [(p, g, False) for p, g in NOT_EQUIVALENT if verify_math(p, g)]
    agreement = 1 - len(wrong) / (len(EQUIVALENT) + len(NOT_EQUIVALENT))
    print(f"verify_math: {agreement:.1%} of {len(EQUIVALENT) + len(NOT_EQUIVALENT)} agree; misses {wrong}")
    assert agreement >= 0.95


def test_verify_math_off_the_main_thread():
    """math-verify's default timeouts use SIGALRM, which fails off the main thread (Ray workers,
    thread pools); verify_math must still give right answers there. Golds unseen so far, so
    parsing happens in the thread too."""
    cases = [("\\boxed{\\frac{9}{12}}", "0.75", True), ("\\boxed{\\sqrt{50}}", "5\\sqrt{2}", True),
             ("\\boxed{41}", "42", False)]
    results: dict[int, object] = {}

    def work() -> None:
        try:
            results[0] = [verify_math(p, g) for p, g, _ in cases]
        except Exception as err:  # surfaced by the assert below
            results[0] = err

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(60)
    assert results[0] == [expected for _, _, expected in cases]


def test_math_accuracy_values():
    fn = rewards.get("math_accuracy")
    completions = ["<think>2+2</think>\\boxed{4}", "\\boxed{5}", "\\boxed{4}", "<think>\\boxed{4}"]
    assert fn(["q"] * 4, completions, answer=["4", "4", "", "4"]) == [1.0, 0.0, None, 0.0]


def test_gsm8k_accuracy_values():
    fn = rewards.get("gsm8k_accuracy")
    gold = "She sells 16 - 3 - 4 = 9 eggs.\nShe makes 9 * 2 = $18.\n#### 18"
    completions = ["<think>9 eggs times 2</think>She makes $18 every day.", "The answer is 18.00", "\\boxed{17}",
                   "#### 1,000", "<think>it is 18", "The answer is 7."]
    answers = [gold, "18", "18", "1000", "18", None]
    assert fn(["q"] * 6, completions, answer=answers) == [1.0, 1.0, 0.0, 1.0, 0.0, None]


def test_multiple_choice_values():
    fn = rewards.get("multiple_choice")
    completions = ["Reasoning...\nAnswer: C", "The answer is (b)", "\\boxed{D}", "I first thought A. Answer: B",
                   "<think>Answer: A</think>The answer is B", "B", "Answer: A",
                   "The answer is a bit unclear."]  # a lower-case word is no choice
    answers = ["C", "B", "D", "A", "A", "(B)", "K", "A"]  # "K" is no option letter: skipped (None)
    assert fn(["q"] * 8, completions, answer=answers) == [1.0, 1.0, 1.0, 0.0, 0.0, 1.0, None, 0.0]


def test_accuracy_rewards_need_the_answer_column():
    with pytest.raises(rewards.RewardError, match="'math_accuracy' raised ValueError: math_accuracy needs a dataset column 'answer'"):
        rewards.score([rewards.RewardSpec("math_accuracy")], ["q"], ["\\boxed{1}"], {"label": ["math"]})


@pytest.mark.parametrize("text, prompt_opens_think, strict, soft", [
    ("<think>reason</think>answer", False, 1.0, 1.0),
    ("<think>reason</think>", False, 0.0, 0.75),  # no answer
    ("<think></think>answer", False, 0.0, 0.75),  # no reasoning
    ("reason</think>answer", False, 0.0, 0.75),  # opening tag missing
    ("reason</think>answer", True, 1.0, 1.0),  # ... which R1-style prompts already opened
    ("<think>reason</think>answer", True, 0.0, 0.0),  # a second opening then: malformed, no answer
    ("no tags at all", False, 0.0, 0.0),
    ("no tags at all", True, 0.0, 0.25),  # a thought never closed
    ("<think>a</think>b</think>c", False, 0.0, 0.25),  # two closing tags: malformed
])
def test_think_format(text, prompt_opens_think, strict, soft):
    fn = rewards.get("think_format")
    assert fn(["q"], [text], prompt_opens_think=[prompt_opens_think]) == [strict]
    assert fn(["q"], [text], [prompt_opens_think], mode="soft") == [soft]


def test_two_boxed_answers_are_a_hedge_and_unparseable_gold_is_not_applicable():
    assert verify_math("\\boxed{4} or \\boxed{5}", "4") is False
    assert verify_math("\\boxed{4}, so \\boxed{4}", "4") is False  # the rule is the count, not the values
    assert verify_math("\\boxed{4}", "4") is True
    assert rewards.get("math_accuracy")(["q"], ["\\boxed{4}"], answer=["\\boxed{}"]) == [None]


HOSTILE = {
    "one_megabyte": "<think>" + "think " * 20 + "</think>" + "word " * 200_000 + "\\boxed{4}",
    "unicode": "<think>\u202e\u200b</think>\\boxed{\u0661\u0662\u200d\ufeff\U0001f4a3" + "\u0301" * 5000 + "}",
    "power_tower": "<think>x</think>\\boxed{9^{9^{9}}}",
    "huge_factorial": "<think>x</think>\\boxed{100000000!}",
}


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_completions_return_within_the_bound_and_never_raise(name):
    """math verification runs in a child process killed after its deadline (SymPy's big-integer
    work ignores threads' timeouts and signals); every built-in CPU reward returns a value. The
    bound: VERIFY_TIMEOUT_S per answer, plus a fresh child's start after a kill; the test's
    margin is generous (speed is measured in benchmarks/, not asserted here)."""
    from rewards.reasoning import VERIFY_TIMEOUT_S

    text = HOSTILE[name]
    specs = [rewards.RewardSpec(n) for n in ("math_accuracy", "gsm8k_accuracy", "multiple_choice", "think_format",
                                             "safety", "safety_stance", "repetition_penalty")]
    specs.append(rewards.RewardSpec("overlong_penalty", args={"max_length": 100, "cache_length": 10}))
    started = time.perf_counter()
    raw = rewards.score(specs, ["What is 2+2?"], [text], {"answer": ["1"], "label": ["benign"]})
    elapsed = time.perf_counter() - started
    assert raw["math_accuracy"] == [0.0] and raw["safety"][0] is not None
    assert elapsed < VERIFY_TIMEOUT_S + 120, f"{name}: {elapsed:.1f} s"
    # the next call is not slowed by the abandoned work: its child was killed
    started = time.perf_counter()
    assert verify_math("\\boxed{4}", "4")
    assert time.perf_counter() - started < VERIFY_TIMEOUT_S + 120
