"""Prompt datasets for RL: loading, chat formatting, and a resumable, epoch-aware sampler."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rewards.text import LabelError, parse_label, prompt_opens_think
from rl_safety.data import chat
from rl_safety.data.files import DatasetError, is_local_file, read_rows

__all__ = ["DatasetError", "PromptExample", "PromptSampler", "build_prompts", "load_rows"]


def load_rows(source: str, split: str = "train", config: str | None = None) -> list[dict[str, Any]]:
    """Rows of a local JSON/JSONL/Parquet/CSV/TSV file (read directly: `rl_safety.data.files`), or
    of a Hugging Face dataset (a hub name or a local copy of its repository) with its `config`
    name (e.g. WildJailbreak's "eval"), through `datasets.load_dataset`: the same call a user's
    machine makes for a hub dataset (it caches the download under the Hugging Face cache)."""
    if is_local_file(source):
        if config is not None:
            raise DatasetError(f"{source}: a dataset config name ({config!r}) applies to hub datasets, not to a file")
        return read_rows(source)
    from datasets import load_dataset

    try:
        dataset = load_dataset(source, config, split=split)
    except Exception as err:  # the hub, the network, an unknown config or split: all the user's to fix
        raise DatasetError(f"{source} (config {config!r}, split {split!r}): {' '.join(str(err).split())[:300]} "
                           "(not a local data file, and it does not load as a Hugging Face dataset)") from None
    return [dict(row) for row in dataset]


@dataclass
class PromptExample:
    index: int  # row index in the dataset (stable id, used for seeding and logging)
    text: str  # the prompt as written in the dataset
    token_ids: list[int]  # after chat formatting
    # every other column, handed to the reward functions by name; `label` parsed to harmful /
    # benign / None, and `prompt_opens_think` added (the rendered prompt opened the thought)
    columns: dict[str, Any]


def build_prompts(rows: list[dict[str, Any]], tokenizer, *, source: str, prompt_key: str,
                  chat_template: bool, system_prompt: str | None,
                  max_prompt_tokens: int) -> tuple[list[PromptExample], int]:
    """Tokenize prompts (chat-formatted when asked); returns the kept examples and the number
    dropped for exceeding `max_prompt_tokens`. A `label` column is parsed by the text contract
    (`rewards.text.parse_label`: SafeChain's `vanilla_harmful`, WildGuard's `unharmful`, ... ->
    harmful / benign / None); a label it cannot read stops here, naming the row and the value."""
    if rows and prompt_key not in rows[0]:
        raise DatasetError(
            f"{source}: no column {prompt_key!r} (data.prompt_key); columns are {sorted(rows[0])}"
        )
    # A prompt of more characters than max_prompt_tokens tokens can hold is dropped without being
    # tokenized (a 20 MB prompt would cost a minute and gigabytes to find out).
    max_chars = max_prompt_tokens * chat.max_chars_per_token(tokenizer)
    examples, dropped = [], 0
    for index, row in enumerate(rows):
        text = row.get(prompt_key)
        if not isinstance(text, str) or not text.strip():
            what = "is empty" if isinstance(text, str) else "is missing" if text is None else f"holds {type(text).__name__}, not text"
            raise DatasetError(f"{source} row {index}: the prompt column {prompt_key!r} {what}")
        if len(text) > max_chars:
            dropped += 1
            continue
        if chat_template:
            rendered, ids = chat.rendered_prompt_ids(tokenizer, text, system_prompt=system_prompt)
        else:
            rendered, ids = text, tokenizer(text, add_special_tokens=True)["input_ids"]
        if len(ids) > max_prompt_tokens:
            dropped += 1
            continue
        columns = {k: v for k, v in row.items() if k != prompt_key}
        if "label" in columns:
            try:
                columns["label"] = parse_label(columns["label"])
            except LabelError as err:
                raise DatasetError(f"{source}: row {index}: {err}") from None
        columns["prompt_opens_think"] = prompt_opens_think(rendered)
        examples.append(PromptExample(index, text, list(ids), columns))
    if not examples:
        raise DatasetError(f"{source}: no prompt fits in data.max_prompt_tokens={max_prompt_tokens}")
    return examples, dropped


@dataclass
class PromptSampler:
    """Draws prompts epoch by epoch, in a seeded order per epoch.

    Its whole state is (epoch, position), saved in checkpoints: a resumed run continues with the
    exact prompts an uninterrupted run would have drawn, including across an epoch boundary
    (a batch that straddles it takes the rest of one epoch and the start of the next)."""

    size: int
    seed: int
    shuffle: bool = True
    epoch: int = 0
    position: int = 0
    _order: np.ndarray | None = field(default=None, repr=False)

    def _epoch_order(self) -> np.ndarray:
        if self._order is None:
            rng = np.random.default_rng([self.seed, self.epoch])
            self._order = rng.permutation(self.size) if self.shuffle else np.arange(self.size)
        return self._order

    def take(self, count: int) -> list[int]:
        picked: list[int] = []
        while len(picked) < count:
            order = self._epoch_order()
            need = count - len(picked)
            chunk = order[self.position : self.position + need]
            picked.extend(int(i) for i in chunk)
            self.position += len(chunk)
            if self.position >= self.size:
                self.epoch, self.position, self._order = self.epoch + 1, 0, None
        return picked

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def restore(self, state: dict[str, int]) -> None:
        self.epoch, self.position, self._order = state["epoch"], state["position"], None
