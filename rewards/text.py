"""The text contract: how every part of rl-safety reads a completion and a prompt's label.

Rewards, evaluation, GRPO, ThinkSafe/DGR generation and the dataset loaders all go through these
functions, so they never disagree on where an answer starts or what a label means.

**Thought and answer.** Reasoning models write `<think>thought</think>answer`. Whether the
*prompt* already opened the thought is a property of the chat template (R1-distill templates end
the generation prompt with `<think>\\n`; Qwen3's does not): `prompt_opens_think(rendered_prompt)`
reads it off the rendered prompt, and `split_response(completion, prompt_opens_think)` uses it:

| completion                                  | prompt opened `<think>` | prompt did not        |
|---------------------------------------------|-------------------------|-----------------------|
| `thought</think>answer`                     | answered                | answered (implicit open) |
| `<think>thought</think>answer`              | malformed               | answered              |
| `thought...` (no tags)                      | truncated: no answer    | no_thought: all answer |
| `<think>thought...` (never closed)          | malformed               | truncated: no answer  |
| two or more `</think>`, or a stray `<think>` | malformed: no answer    | malformed: no answer  |

A truncated thought is never read as an answer (its refusal words are the model thinking, not
answering), and a malformed one has no answer either: with two `</think>` there is no telling
which part is the answer, and a reward must not let the policy choose.

**Labels.** `parse_label` maps the label vocabularies of SafeChain / WildJailbreak
(`vanilla_harmful`, `adversarial_benign`, ...), WildGuardMix (`harmful` / `unharmful`), XSTest
(`unsafe` / `safe`) and our schema (`harmful` / `benign`) onto "harmful" / "benign"; None means
"not a safety prompt" (a math row: no label, `math`); anything else is a `LabelError` naming the
value, never a guess.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


def completion_text(completion: str | list[dict[str, Any]]) -> str:
    """A completion as plain text: TRL passes conversational completions as a list of chat
    messages ({"role": "assistant", "content": ...}); their contents are joined."""
    if isinstance(completion, str):
        return completion
    return "".join(str(message.get("content") or "") for message in completion)


def prompt_opens_think(rendered_prompt: str) -> bool:
    """Whether generation starts inside an opened thought: the rendered prompt (chat template
    applied, generation prompt added) ends with `<think>` (R1-distill templates)."""
    return rendered_prompt.rstrip().endswith(THINK_OPEN)


ResponseState = Literal["answered", "no_thought", "truncated", "malformed"]


@dataclass(frozen=True)
class Response:
    """A completion split into thought and answer.

    reasoning: the thought without its tags ("" when there is none).
    answer: the final answer, stripped; None when there is none (state truncated or malformed).
    state: "answered" (a closed thought, then the answer), "no_thought" (no tags at all, and the
        prompt did not open a thought: the whole text is the answer), "truncated" (a thought was
        opened and never closed) or "malformed" (several `</think>`, or a `<think>` out of place).
    """

    reasoning: str
    answer: str | None
    state: ResponseState


def split_response(completion: str | list[dict[str, Any]], prompt_opens_think: bool = False) -> Response:
    """Split a completion (the generated text only) into thought and answer; see the module's
    table. `prompt_opens_think`: the rendered prompt ended with `<think>` (`prompt_opens_think()`)."""
    text = completion_text(completion)
    opens, closes = text.count(THINK_OPEN), text.count(THINK_CLOSE)
    starts_open = text.lstrip().startswith(THINK_OPEN)
    if closes > 1 or opens > 1 or (opens == 1 and (prompt_opens_think or not starts_open)):
        return Response(reasoning=text.replace(THINK_OPEN, "").replace(THINK_CLOSE, "").strip(), answer=None,
                        state="malformed")
    body = text.lstrip()[len(THINK_OPEN):] if opens else text
    if closes == 0:
        if opens or prompt_opens_think:
            return Response(reasoning=body.strip(), answer=None, state="truncated")
        return Response(reasoning="", answer=text.strip(), state="no_thought")
    thought, _, answer = body.partition(THINK_CLOSE)
    return Response(reasoning=thought.strip(), answer=answer.strip(), state="answered")


def full_response(completion: str | list[dict[str, Any]], prompt_opens_think: bool = False) -> str:
    """The response as the model wrote it, the prompt's `<think>` put back in front when the
    prompt opened the thought (ThinkSafe's `synthesize_data.py` does the same for R1-distill):
    what a judge of the full text, or a dataset of full responses, should see."""
    text = completion_text(completion)
    return f"{THINK_OPEN}\n{text}" if prompt_opens_think and not text.lstrip().startswith(THINK_OPEN) else text


def responses(completions: list, prompt_opens_think: list | None = None) -> list[Response]:
    """`split_response` over a batch; `prompt_opens_think` is the per-sample column GRPO and eval
    pass to rewards (absent: no prompt opened a thought, e.g. TRL with a template that does not)."""
    flags = prompt_opens_think if prompt_opens_think is not None else [False] * len(completions)
    return [split_response(c, bool(f)) for c, f in zip(completions, flags, strict=True)]


# ---------------------------------------------------------------------------------- labels
Label = Literal["harmful", "benign"]

# ours; XSTest (safe/unsafe); WildGuardMix (harmful/unharmful); SafeChain and WildJailbreak (data_type)
HARMFUL_LABELS = frozenset({"harmful", "unsafe", "vanilla_harmful", "adversarial_harmful"})
BENIGN_LABELS = frozenset({
    "benign", "safe", "unharmful", "not_harmful", "non_harmful", "harmless", "vanilla_benign", "adversarial_benign",
})
NOT_APPLICABLE_LABELS = frozenset({"", "none", "math", "reasoning", "n/a"})


class LabelError(ValueError):
    """A prompt label that is neither harmful, benign nor "not a safety prompt"."""


def parse_label(value: Any) -> Label | None:
    """"harmful", "benign", or None for prompts a safety reward does not apply to (no label,
    "math"). Case, spaces and hyphens are ignored ("Not Harmful" = "not_harmful"). Raises
    LabelError for anything else: a misspelt "harmfull" is an error, not a benign prompt."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise LabelError(f"label {value!r} ({type(value).__name__}) is not text; expected one of "
                         f"{_vocabulary()}")
    key = "_".join(value.strip().lower().replace("-", " ").split())
    if key in HARMFUL_LABELS:
        return "harmful"
    if key in BENIGN_LABELS:
        return "benign"
    if key in NOT_APPLICABLE_LABELS:
        return None
    raise LabelError(f"label {value!r} is not a prompt label; expected one of {_vocabulary()}")


def _vocabulary() -> str:
    return (f"harmful {sorted(HARMFUL_LABELS)}, benign {sorted(BENIGN_LABELS)}, or none/math/empty for "
            "prompts the safety rewards do not apply to")


def parse_labels(values: list[Any], where: str = "sample") -> list[Label | None]:
    """`parse_label` over a column; the error names the row: `f"{where} {i}"`."""
    out = []
    for i, value in enumerate(values):
        try:
            out.append(parse_label(value))
        except LabelError as err:
            raise LabelError(f"{where} {i}: {err}") from None
    return out
