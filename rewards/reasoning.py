"""Reasoning rewards: math answers (math-verify), GSM8K numbers, multiple-choice letters, and the
`<think>...</think>` format. Answers are always read from the final answer (after `</think>`),
so a correct number that appears only while thinking earns nothing."""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable
from decimal import Decimal, InvalidOperation

from rewards.bounded import BoundedCaller
from rewards.registry import register, require_column
from rewards.text import THINK_CLOSE, THINK_OPEN, completion_text, responses, split_response

log = logging.getLogger(__name__)

VERIFY_TIMEOUT_S = 5.0  # per answer; an overrun counts as wrong
_MAX_ANSWER_CHARS = 4000  # the tail of a rambling answer is where its result is; bounds SymPy's input
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")


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
def _parse_gold(gold: str) -> tuple:
    """A reference answer parsed by math-verify (empty when it cannot be parsed). Plain answers
    ("\\frac{1}{2}", "1,000") are boxed first so the LaTeX extractor reads them whole."""
    math_verify, _ = _math_verify()
    text = gold if "\\boxed" in gold or "$" in gold else f"\\boxed{{{gold}}}"
    return tuple(math_verify.parse(text, parsing_timeout=None))


def _verify_in_child(answer: str, gold: str) -> bool | None:
    """Runs in the bounded child process (math-verify's SIGALRM timeouts off: the child is
    killed instead). None when the gold cannot be parsed."""
    gold_parsed = _parse_gold(gold)
    if not gold_parsed:
        return None
    math_verify, prediction_config = _math_verify()
    parsed = math_verify.parse(answer, prediction_config, parsing_timeout=None)
    return bool(parsed) and bool(math_verify.verify(list(gold_parsed), parsed, timeout_seconds=None))


_CALLER = BoundedCaller(warmup=_math_verify)


def verify_math(completion: str, gold: str, *, prompt_opens_think: bool = False,
                timeout_s: float = VERIFY_TIMEOUT_S) -> bool | None:
    """True when the final answer of `completion` (its `\\boxed{}`, else its last expression)
    equals `gold` mathematically: fractions vs decimals, radicals, expanded vs factored
    expressions, thousands separators, units and \\text{} ignored. An answer with two or more
    `\\boxed{}` is a hedge and scores False, whatever they hold. None when `gold` cannot be
    parsed (not applicable: rewarding anything there would leak reward).

    The check runs in a child process killed after `timeout_s` seconds (SymPy's big-integer
    work, e.g. `9^{9^{9}}`, holds the GIL and ignores signals off the main thread): an overrun
    counts as wrong and is logged. Never raises on a completion, whatever its size or characters.
    """
    answer = split_response(completion, prompt_opens_think).answer
    if answer is not None and len(_BOXED.findall(answer)) > 1:
        answer = None
    try:
        result = _CALLER.call(_verify_in_child, (answer or "")[-_MAX_ANSWER_CHARS:], gold, timeout_s=timeout_s)
    except TimeoutError:
        log.warning("verify_math: over %s s on answer %r (gold %r); counted as wrong", timeout_s,
                    (answer or "")[-200:], gold)
        return False
    except Exception as err:  # math-verify / SymPy failing on odd input: the answer is not verified
        log.warning("verify_math: %s: %s on answer %r; counted as wrong", err.__class__.__name__, err,
                    (answer or "")[-200:])
        return False
    return result if result is None else bool(answer) and result


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


def verify_gsm8k(completion: str, gold: str, *, prompt_opens_think: bool = False) -> bool | None:
    """True when the final answer's number equals the gold number (a GSM8K solution with
    `#### N`, or just N); None when the gold has no number."""
    expected = gsm8k_number(gold)
    if expected is None:
        return None
    answer = split_response(completion, prompt_opens_think).answer
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


def verify_choice(completion: str, gold: str, *, prompt_opens_think: bool = False) -> bool | None:
    """True when the final answer chooses the gold letter; None when the gold is no letter A-J."""
    letter = gold.strip().strip("()").upper()
    if not re.fullmatch(r"[A-J]", letter):
        return None
    answer = split_response(completion, prompt_opens_think).answer
    return bool(answer) and choice_letter(answer) == letter


# verifier name -> fn(completion, gold, *, prompt_opens_think) -> bool, or None for an unusable
# gold; shared by the accuracy rewards, length shaping and eval.
VERIFIERS: dict[str, Callable[..., bool | None]] = {
    "math": verify_math, "gsm8k": verify_gsm8k, "multiple_choice": verify_choice,
}


def correctness(verifier: str, completions: list, answer: list | None, reward: str,
                prompt_opens_think: list | None = None) -> list[bool | None]:
    """Per sample: is the completion correct against the `answer` column? None where the gold
    is missing or empty (not a question of this kind) or unusable (logged: rewarding anything
    there would leak reward)."""
    golds = require_column(answer, "answer", reward)
    if verifier not in VERIFIERS:
        raise ValueError(f"{reward}: unknown verifier {verifier!r}; choose from {sorted(VERIFIERS)}")
    check = VERIFIERS[verifier]
    flags = prompt_opens_think if prompt_opens_think is not None else [False] * len(completions)
    out: list[bool | None] = []
    for completion, gold, opens in zip(completions, golds, flags, strict=True):
        if gold is None or not str(gold).strip():
            out.append(None)
            continue
        ok = check(completion, str(gold), prompt_opens_think=bool(opens))
        if ok is None:
            log.warning("%s: reference answer %r cannot be used; sample skipped (None)", reward, gold)
        out.append(ok)
    return out


def _accuracy(verifier: str, completions: list, answer: list | None, reward: str,
              prompt_opens_think: list | None) -> list[float | None]:
    return [None if ok is None else float(ok)
            for ok in correctness(verifier, completions, answer, reward, prompt_opens_think)]


@register("math_accuracy")
def math_accuracy(prompts: list[str], completions: list, answer: list | None = None,
                  prompt_opens_think: list | None = None, **_: object) -> list[float | None]:
    """1.0 when the final answer equals the `answer` column by math-verify, else 0.0 (also for
    two or more `\\boxed{}`: a hedge); None where the sample has no (parseable) reference answer."""
    return _accuracy("math", completions, answer, "math_accuracy", prompt_opens_think)


@register("gsm8k_accuracy")
def gsm8k_accuracy(prompts: list[str], completions: list, answer: list | None = None,
                   prompt_opens_think: list | None = None, **_: object) -> list[float | None]:
    """1.0 when the final answer's number equals the `answer` column's (`#### N` or N), else 0.0;
    None where there is no reference number. No SymPy: cheap."""
    return _accuracy("gsm8k", completions, answer, "gsm8k_accuracy", prompt_opens_think)


@register("multiple_choice")
def multiple_choice(prompts: list[str], completions: list, answer: list | None = None,
                    prompt_opens_think: list | None = None, **_: object) -> list[float | None]:
    """1.0 when the final answer picks the `answer` column's letter ("Answer: C"), else 0.0."""
    return _accuracy("multiple_choice", completions, answer, "multiple_choice", prompt_opens_think)


@register("think_format")
def think_format(prompts: list[str], completions: list, prompt_opens_think: list | None = None, *,
                 mode: str = "strict", **_: object) -> list[float]:
    """Format of "<think>reasoning</think>answer", read by the text contract (`split_response`,
    given whether the prompt opened the thought: the `prompt_opens_think` column). Four checks:
    (1) the opening is right: the completion starts with the only `<think>`, or has none when
    the prompt opened it (R1-distill templates); (2) exactly one `</think>` and no stray tags
    (not truncated, not malformed); (3) non-empty reasoning; (4) a non-empty answer.
    mode="strict": 1.0 when all hold, else 0.0; mode="soft": 0.25 per check that holds."""
    if mode not in ("strict", "soft"):
        raise ValueError(f"think_format: mode={mode!r}, expected 'strict' or 'soft'")
    flags = prompt_opens_think if prompt_opens_think is not None else [False] * len(completions)
    out = []
    for completion, opens, response in zip(completions, flags, responses(completions, prompt_opens_think), strict=True):
        text = completion_text(completion).lstrip()
        opening_ok = THINK_OPEN not in text if opens else text.startswith(THINK_OPEN) and text.count(THINK_OPEN) == 1
        closed_once = response.state == "answered" and text.count(THINK_CLOSE) == 1
        checks = [opening_ok, closed_once, closed_once and bool(response.reasoning), closed_once and bool(response.answer)]
        out.append(float(all(checks)) if mode == "strict" else 0.25 * sum(checks))
    return out
