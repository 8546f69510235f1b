"""Chat templates and `<think>` handling per model family, in one place.

Every path that turns text into model input goes through here: GRPO prompts, SFT examples, the
distribution-shift measurement, DGR / ThinkSafe generation. Two operations:

- `render_prompt`: a user turn (optionally after a system turn) with the generation prompt;
- `render_example`: (prompt text, completion text) for training on prompt + reasoning + answer.

The way back, a generated completion into thought and answer, is the rewards package's text
contract (`rewards.text.split_response`), given `rewards.text.prompt_opens_think(rendered prompt)`.

Why not `apply_chat_template` on a whole conversation for training: the DeepSeek-R1 and Qwen3
templates *drop the thinking* from assistant turns they render (history is stored without
thoughts), so a training example rendered that way would teach the model to answer without
reasoning. We render the prompt with the template and append the response ourselves, exactly as
the model would have generated it after that prompt.

R1-distilled templates (Qwen and Llama alike) end the generation prompt with `<think>\\n` in
recent tokenizer versions: the model's completion then starts inside the thought and contains
only the closing `</think>`. Whether a prompt opens the thought is read off the rendered prompt,
not assumed per family, so older and newer tokenizer revisions both work.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rewards.text import THINK_CLOSE, THINK_OPEN, prompt_opens_think


@dataclass(frozen=True)
class ChatFamily:
    name: str
    template_kwargs: dict[str, Any] = field(default_factory=dict)  # extra apply_chat_template kwargs
    top_k: int = 0  # ThinkSafe's sampling: top_k 20 for Qwen, 0 (off) otherwise


FAMILIES: dict[str, ChatFamily] = {
    # DeepSeek-R1-Distill-Qwen-1.5B/7B/32B: "<｜User｜>...<｜Assistant｜><think>\n"
    "r1_distill": ChatFamily("r1_distill"),
    # Qwen3 thinking mode: "<|im_start|>assistant\n", the model writes "<think>\n...</think>\n\n"
    "qwen3": ChatFamily("qwen3", {"enable_thinking": True}, top_k=20),
    # DeepSeek-R1-Distill-Llama-8B: the DeepSeek template on a Llama tokenizer
    "llama": ChatFamily("llama"),
    # Any other template (the tiny test models): thinking, if any, lives in the completion
    "generic": ChatFamily("generic"),
}


def max_chars_per_token(tokenizer) -> int:
    """The most characters of text one token can stand for: the longest vocabulary entry
    (byte-level BPE and SentencePiece vocabularies spell one byte or character of text per
    character of the entry). A text longer than N times this needs more than N tokens, which is
    known without tokenizing it. A tokenizer without a vocabulary gives no bound."""
    get_vocab = getattr(tokenizer, "get_vocab", None)
    vocab = get_vocab() if get_vocab is not None else None
    return max(map(len, vocab), default=1) if vocab else 2**62


def detect_family(tokenizer) -> str:
    """The family of a tokenizer's chat template (used when a config says `auto`)."""
    template = tokenizer.chat_template or ""
    if "<｜Assistant｜>" in template:
        name = getattr(tokenizer, "name_or_path", "").lower()
        return "llama" if "llama" in name else "r1_distill"
    if "enable_thinking" in template:
        return "qwen3"
    return "generic"


def resolve_family(tokenizer, family: str) -> ChatFamily:
    name = detect_family(tokenizer) if family == "auto" else family
    if name not in FAMILIES:
        raise ValueError(f"unknown chat family {name!r}; known: auto, {', '.join(FAMILIES)}")
    return FAMILIES[name]


def render_prompt(tokenizer, prompt: str, *, family: str = "auto", system_prompt: str | None = None) -> str:
    """The prompt as the model sees it before generating: chat turns + the generation prompt."""
    messages = ([{"role": "system", "content": system_prompt}] if system_prompt else [])
    messages.append({"role": "user", "content": prompt})
    return tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=False,
        **resolve_family(tokenizer, family).template_kwargs,
    )


def rendered_prompt_ids(tokenizer, prompt: str, *, family: str = "auto",
                        system_prompt: str | None = None) -> tuple[str, list[int]]:
    """(`render_prompt`'s text, its token ids). The template writes BOS itself, so no special
    tokens are added."""
    text = render_prompt(tokenizer, prompt, family=family, system_prompt=system_prompt)
    return text, tokenizer(text, add_special_tokens=False)["input_ids"]


def render_example(tokenizer, prompt: str, reasoning: str, answer: str, *, family: str = "auto",
                   system_prompt: str | None = None) -> tuple[str, str, str]:
    """(prompt text, reasoning part, answer part) of a training example; their concatenation is
    exactly what the model reads during SFT. The reasoning part runs up to and including
    `</think>\\n\\n` (without the `<think>` the prompt already opened, for R1 templates); the
    answer part ends with the EOS token, so the model learns to stop."""
    prompt_text = render_prompt(tokenizer, prompt, family=family, system_prompt=system_prompt)
    thought = f"{reasoning.strip()}\n{THINK_CLOSE}\n\n"
    if not prompt_opens_think(prompt_text):
        thought = f"{THINK_OPEN}\n{thought}"
    elif not prompt_text.endswith("\n"):
        thought = "\n" + thought
    return prompt_text, thought, f"{answer.strip()}{tokenizer.eos_token or ''}"


PROMPT, REASONING, ANSWER = 0, 1, 2  # segment ids of a tokenized example


def tokenize_example(tokenizer, prompt: str, reasoning: str, answer: str, *, family: str = "auto",
                     system_prompt: str | None = None) -> tuple[list[int], list[int]]:
    """(token ids, segment id per token: PROMPT / REASONING / ANSWER) of a training example.
    Segments are tokenized separately and concatenated, so no token straddles a boundary and the
    prompt mask is exact (what SFT's loss mask and `shift`'s per-segment NLL rely on)."""
    parts = render_example(tokenizer, prompt, reasoning, answer, family=family, system_prompt=system_prompt)
    ids: list[int] = []
    segments: list[int] = []
    for segment, text in zip((PROMPT, REASONING, ANSWER), parts):
        piece = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids += piece
        segments += [segment] * len(piece)
    return ids, segments
