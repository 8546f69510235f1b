"""Reasoning rewards: math answers (math-verify), GSM8K numbers, multiple-choice letters, and the
`<think>...</think>` format. Answers are always read from the final answer (after `</think>`),
so a correct number that appears only while thinking earns nothing."""

from __future__ import annotations

import functools
import logging
import re
import threading
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any

from rewards.registry import register, require_column
from rewards.text import completion_text, split_response

log = logging.getLogger(__name__)

VERIFY_TIMEOUT_S = 10.0
_MAX_ANSWER_CHARS = 4000  # the tail of a rambling answer is where its result is; bounds SymPy's input


def _run_bounded(fn: Callable[[], Any], timeout_s: float) -> Any:
    """`fn()` in a daemon thread, waited on for `timeout_s`. math-verify's own timeouts use
    SIGALRM, which only works on the main thread (in Ray workers or threads it raises, and a
    wrapper that swallows that scores every answer 0), so they are disabled and bounded here.
    A computation that overruns cannot be killed; it finishes in the background."""
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["value"] = fn()
        except BaseException as err:  # re-raised in the caller's thread
            result["error"] = err

    thread = threading.Thread(target=target, daemon=True, name="verify_math")
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise TimeoutError(f"math verification took over {timeout_s} s")
    if "error" in result:
        raise result["error"]
    return result["value"]


@functools.cache
def _math_verify():
    import math_verify
    from latex2sympy2_extended import NormalizationConfig

    logging.getLogger("math_verify").setLevel(logging.ERROR)  # "timeout disabled" warning on every call
    # math-verify's README settings for rewards: boxed first, units and \text stripped.
    prediction_config = [
        math_verify.LatexExtractionConfig(
            boxed_match_priority=0,
            normalization_config=NormalizationConfig(basic_latex=True, units=True, malformed_operators=False,
                                                     nits=False, boxed="all", equations=False),
        ),
        math_verify.ExprExtractionConfig(),
    ]
    return math_verify, prediction_config


@functools.lru_cache(maxsize=4096)
def parse_gold(gold: str) -> tuple:
    """A reference answer parsed by math-verify (empty when it cannot be parsed). Plain answers
    ("\\frac{1}{2}", "1,000") are boxed first so the LaTeX extractor reads them whole."""
    math_verify, _ = _math_verify()
    text = gold if "\\boxed" in gold or "$" in gold else f"\\boxed{{{gold}}}"
    return tuple(_run_bounded(lambda: math_verify.parse(text, parsing_timeout=None), VERIFY_TIMEOUT_S))


def verify_math(prediction: str, gold: str) -> bool:
    """True when the final answer of `prediction` (a completion; its last `\\boxed{}` first, else
    the last expression) equals `gold` mathematically: fractions vs decimals, radicals,
    expanded vs factored expressions, thousands separators, units and \\text{} ignored.
    Safe off the main thread; a verification that overruns `VERIFY_TIMEOUT_S` counts as wrong
    (and is logged). Raises ValueError when `gold` cannot be parsed (a dataset problem)."""
    answer = split_response(completion_text(prediction)).answer
    if not answer:
        return False
    gold_parsed = parse_gold(gold)
    if not gold_parsed:
        raise ValueError(f"reference answer {gold!r} cannot be parsed as math")
    math_verify, prediction_config = _math_verify()
    answer = answer[-_MAX_ANSWER_CHARS:]

    def check() -> bool:
        parsed = math_verify.parse(answer, prediction_config, parsing_timeout=None)
        return bool(parsed) and math_verify.verify(list(gold_parsed), parsed, timeout_seconds=None)

    try:
        return _run_bounded(check, VERIFY_TIMEOUT_S)
    except TimeoutError:
        log.warning("verify_math: gave up after %s s on answer %r (gold %r); counted as wrong",
                    VERIFY_TIMEOUT_S, answer[-200:], gold)
        return False


_NUMBER = r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+"
_GSM8K_ANCHORS = (rf"####\s*\$?\s*({_NUMBER})", rf"\\boxed\{{\s*\\?\$?\s*({_NUMBER})",
                  rf"answer is\s*:?\s*\\?\$?\s*({_NUMBER})")


def _as_decimal(text: str) -> Decimal | None:
    try:
        return Decimal(text.replace(",", "").rstrip("."))
    except InvalidOperation:
        return None


def gsm8k_number(text: str) -> Decimal | None:
    """The numeric answer of a GSM8K-style text: after `####` (the dataset's gold format), else
    the last `\\boxed{}`, else after the last "answer is", else the last number; "$1,234." -> 1234."""
    for pattern in _GSM8K_ANCHORS:
        found = re.findall(pattern, text, flags=re.IGNORECASE)
        if found:
            return _as_decimal(found[-1])
    numbers = re.findall(_NUMBER, text)
    return _as_decimal(numbers[-1]) if numbers else None


def verify_gsm8k(prediction: str, gold: str) -> bool:
    """True when the final answer's number equals the gold number (a GSM8K solution with
    `#### N`, or just N). Raises ValueError when the gold has no number."""
    expected = gsm8k_number(gold)
    if expected is None:
        raise ValueError(f"reference answer {gold!r} has no number")
    answer = split_response(completion_text(prediction)).answer
    return bool(answer) and gsm8k_number(answer) == expected


# An option letter: upper case, or any case inside parentheses ("(b)"); "answer is a bit..." is none.
_LETTER = r"(\([A-Ja-j]\)|[A-J](?![A-Za-z]))"
_CHOICE_PATTERNS = (
    rf"(?i:answer)\s*(?:(?i:is)|:)?\s*:?\s*\$?\s*(?:\\boxed\{{)?{_LETTER}",
    rf"\\boxed\{{\s*{_LETTER}\s*\}}",
    rf"^\s*{_LETTER}\.?\s*$",
)


def choice_letter(text: str) -> str | None:
    """The chosen option letter (A-J) of a final answer: the last "Answer: X" (simple-evals'
    format), else the last `\\boxed{X}`, else an answer that is just the letter."""
    for pattern in _CHOICE_PATTERNS:
        found = re.findall(pattern, text, flags=re.MULTILINE)
        if found:
            return found[-1].strip("()").upper()
    return None


def verify_choice(prediction: str, gold: str) -> bool:
    """True when the final answer chooses the gold letter."""
    letter = gold.strip().strip("()").upper()
    if not re.fullmatch(r"[A-J]", letter):
        raise ValueError(f"reference answer {gold!r} is not an option letter A-J")
    answer = split_response(completion_text(prediction)).answer
    return bool(answer) and choice_letter(answer) == letter


# verifier name -> fn(prediction, gold) -> bool; shared by the accuracy rewards and length shaping.
VERIFIERS: dict[str, Callable[[str, str], bool]] = {
    "math": verify_math, "gsm8k": verify_gsm8k, "multiple_choice": verify_choice,
}


def correctness(verifier: str, completions: list, answer: list | None, reward: str) -> list[bool | None]:
    """Per sample: is the completion correct against the `answer` column? None where the gold
    is missing or empty (not a question of this kind) or unusable (logged)."""
    answer = require_column(answer, "answer", reward)
    if verifier not in VERIFIERS:
        raise ValueError(f"{reward}: unknown verifier {verifier!r}; choose from {sorted(VERIFIERS)}")
    check = VERIFIERS[verifier]
    out: list[bool | None] = []
    for completion, gold in zip(completions, answer, strict=True):
        if gold is None or not str(gold).strip():
            out.append(None)
            continue
        try:
            out.append(check(completion_text(completion), str(gold)))
        except ValueError as err:  # unusable gold: rewarding anything here would leak reward
            log.warning("%s: %s; sample skipped (None)", reward, err)
            out.append(None)
    return out


def _accuracy(verifier: str, completions: list, answer: list | None, reward: str) -> list[float | None]:
    return [None if ok is None else float(ok) for ok in correctness(verifier, completions, answer, reward)]


@register("math_accuracy")
def math_accuracy(prompts: list[str], completions: list, answer: list | None = None, **_: object) -> list[float | None]:
    """1.0 when the final answer equals the `answer` column by math-verify, else 0.0; None where
    the sample has no (parseable) reference answer."""
    return _accuracy("math", completions, answer, "math_accuracy")


@register("gsm8k_accuracy")
def gsm8k_accuracy(prompts: list[str], completions: list, answer: list | None = None, **_: object) -> list[float | None]:
    """1.0 when the final answer's number equals the `answer` column's (`#### N` or N), else 0.0;
    None where there is no reference number. No SymPy: cheap."""
    return _accuracy("gsm8k", completions, answer, "gsm8k_accuracy")


@register("multiple_choice")
def multiple_choice(prompts: list[str], completions: list, answer: list | None = None, **_: object) -> list[float | None]:
    """1.0 when the final answer picks the `answer` column's letter ("Answer: C"), else 0.0."""
    return _accuracy("multiple_choice", completions, answer, "multiple_choice")


@register("think_format")
def think_format(prompts: list[str], completions: list, *, mode: str = "strict",
                 opened_in_prompt: bool = False, **_: object) -> list[float]:
    """Format of "<think>reasoning</think>answer". Four checks: (1) the opening tag is right:
    the completion starts with the only `<think>` (or, with `opened_in_prompt` for R1-style
    templates whose prompt already opened it, has no `<think>`); (2) exactly one `</think>`;
    (3) non-empty reasoning; (4) a non-empty answer after it. mode="strict": 1.0 when all hold,
    else 0.0; mode="soft": 0.25 per check that holds."""
    if mode not in ("strict", "soft"):
        raise ValueError(f"think_format: mode={mode!r}, expected 'strict' or 'soft'")
    out = []
    for completion in completions:
        text = completion_text(completion).strip()
        opens = text.count("<think>")
        opening_ok = opens == 0 if opened_in_prompt else opens == 1 and text.startswith("<think>")
        closes_once = text.count("</think>") == 1
        response = split_response(text) if closes_once else None
        checks = [opening_ok, closes_once, bool(response and response.reasoning), bool(response and response.answer)]
        out.append(float(all(checks)) if mode == "strict" else 0.25 * sum(checks))
    return out
