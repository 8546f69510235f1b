"""Completion text as rewards see it: plain text, split once into reasoning and final answer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


def completion_text(completion: str | list[dict[str, Any]]) -> str:
    """A completion as plain text: TRL passes conversational completions as a list of chat
    messages ({"role": "assistant", "content": ...}); their contents are joined."""
    if isinstance(completion, str):
        return completion
    return "".join(str(message.get("content") or "") for message in completion)


@dataclass(frozen=True)
class Response:
    """A completion split at its last `</think>`.

    reasoning: the thought (without the tags); "" when the completion has no thinking part.
    answer: the final answer after `</think>`; None when a thought was opened and never closed
        (a truncated generation: the model never answered, which is neither refusal nor compliance).
    """

    reasoning: str
    answer: str | None


def split_response(text: str) -> Response:
    """Split at the last `</think>`. Without `</think>` the whole text is the answer (a model that
    does not think, or R1-style templates whose prompt opened `<think>` and the model never closed
    it: indistinguishable from text alone), except when the text itself opens `<think>`."""
    head, closed, tail = text.rpartition("</think>")
    if closed:
        return Response(reasoning=head.replace("<think>", "", 1).strip(), answer=tail.strip())
    if "<think>" in text:
        return Response(reasoning=text.split("<think>", 1)[1].strip(), answer=None)
    return Response(reasoning="", answer=text.strip())
