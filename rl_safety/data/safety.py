"""External safety-reasoning datasets under one declared schema.

Every loader yields `SafetyExample(prompt, reasoning, answer, label, source, row)`:

- prompt: the user request, non-empty;
- reasoning: the thought (no `<think>` tags; may be empty only where a dataset has none);
- answer: the final answer after the thought, non-empty;
- label: "harmful" or "benign" (the prompt's, not the response's);
- source: the dataset name; row: 0-based row index in the source (provenance, error reports).

A row that breaks the schema is reported with its row (and, for JSONL, its line) and then either
skipped or refused (`on_bad_row`), never coerced: a numeric prompt is not stringified, a response
with no `</think>` is not guessed into reasoning and answer, an unknown label is not defaulted.

Layouts (`DATASETS`), as the public datasets and the papers' code have them (each has a fixture
file in its real columns under tests/fixtures/layouts/, whose README says what was verified and
from where):
- safechain (`UWNSL/SafeChain`) and small_safechain (`TianshengHuang/Small_SafeChain`, Safety-Tax's
  1,000 "vanilla_harmful" SafeChain rows, columns kept): `instruction`, `response` (an R1 thought
  *without* the opening `<think>`, closed by `</think>`, then the answer), `label` such as
  "vanilla_harmful" / "adversarial_benign", read by the text contract's `parse_label` as every
  label is ("unharmful" is benign, "harmfull" a bad row; ThinkSafe's `synthesize_data.py` splits
  on `"harmful" in label`, which reads "unharmful" as harmful).
- star1 (`UCSC-VLAA/STAR-1`, also `../shared/data/star1/STAR-1.json`): `question`, `response`
  (`<think>...</think>` then the answer); all prompts are harmful-category requests.
- directrefusal (`TianshengHuang/DirectRefusal`, built by Safety-Tax's `construct_safety_dataset.py`
  from 1,000 BeaverTails rows): the example is the `refusal` column, "Question: <prompt>\nAnswer:
  <refusal>", and the thought is the fixed "I should not answer this question!" (ThinkSafe's
  loader and Safety-Tax's build script split it the same way).
- directrefusal_text and small_safechain_text: the same datasets read from their `text` column, the
  s1-style rendering Safety-Tax trains on (`<|im_start|>think\n<thought><|im_start|>answer\nAnswer:
  <answer>`); the answer keeps the "Answer: " prefix Safety-Tax gave it.
- r1_act (`Yeonjun/R1-Act-train`, R1-Act's training code): `instruction`, `response` (appended to
  the R1-distill generation prompt, which already opened the thought). A label column is not
  known: every row is harmful unless a `label` column says otherwise.
- thinksafe (the ThinkSafe authors' released sets, e.g. `Seanie-lee/ThinkSafe-R1-Distill-7B`, as
  `synthesize_data.py` writes them): `instruction`, `response` (`<think>\n...</think>` then the
  answer), `prompt_label` (SafeChain's label of the prompt), `response_label` ("safe").
- schema: our own DGR / ThinkSafe output, and any file already in the schema.

A file whose columns match none of its layout fails at once, naming the columns it has.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from rewards.text import Label, LabelError, parse_label, split_response
from rl_safety.data.files import DatasetError, Record, is_local_file, read_records
from rl_safety.data.prompts import load_rows

log = logging.getLogger(__name__)

_LOGGED_BAD_ROWS = 20  # each logged with its row; past that only counted (LoadReport.bad has all)


@dataclass(frozen=True)
class SafetyExample:
    prompt: str
    reasoning: str
    answer: str
    label: Label
    source: str
    row: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class _BadRow(ValueError):
    pass


# The fixed thought of DirectRefusal (Safety-Tax's construct_safety_dataset.py; ThinkSafe's loader).
DIRECT_REFUSAL_THOUGHT = "I should not answer this question!"


def parse_question_answer(text: str) -> tuple[str, str, str]:
    """(prompt, reasoning, answer) of DirectRefusal's `refusal` column, "Question: <prompt>\nAnswer:
    <refusal>": split at the first "\nAnswer:" as Safety-Tax's build script does; the reasoning
    is the dataset's fixed thought."""
    head, sep, answer = text.partition("\nAnswer:")
    if not head.startswith("Question:") or not sep:
        raise _BadRow("is not 'Question: <prompt>\\nAnswer: <refusal>'")
    prompt, answer = head[len("Question:"):].strip(), answer.strip()
    if not prompt or not answer:
        raise _BadRow("has an empty question or answer")
    return prompt, DIRECT_REFUSAL_THOUGHT, answer


_S1_EXAMPLE = re.compile(
    r"<\|im_start\|>user\n(?P<prompt>.*?)<\|im_end\|>\n<\|im_start\|>assistant\n"
    r"<\|im_start\|>think\n(?P<reasoning>.*?)<\|im_start\|>answer\n(?P<answer>.*?)(?:<\|im_end\|>\s*)?$",
    re.DOTALL)


def parse_s1_text(text: str) -> tuple[str, str, str]:
    """(prompt, reasoning, answer) of an s1-style rendered example (Safety-Tax's `text` column:
    a ChatML conversation whose assistant turn is `<|im_start|>think\n...<|im_start|>answer\n...`)."""
    match = _S1_EXAMPLE.search(text)
    if match is None:
        raise _BadRow("is not an s1-style rendering (<|im_start|>user ... <|im_start|>think ... <|im_start|>answer ...)")
    prompt, reasoning, answer = (match.group(k).strip() for k in ("prompt", "reasoning", "answer"))
    if not prompt or not answer:
        raise _BadRow("has an empty user turn or answer")
    return prompt, reasoning, answer


@dataclass(frozen=True)
class DatasetSpec:
    """How a dataset's columns map onto the schema. Each field lists candidate column names,
    tried in order; `response` holds reasoning and answer in one `...</think>answer` text, used
    when no separate reasoning/answer columns exist. `record` is a column holding the whole
    example in one string and its parser (DirectRefusal); `columns:` overrides take the column
    route instead."""

    hub_name: str
    prompt: tuple[str, ...] = ()
    response: tuple[str, ...] = ()
    reasoning: tuple[str, ...] = ()
    answer: tuple[str, ...] = ()
    label: tuple[str, ...] = ()
    fixed_label: Label | None = None  # every prompt of the dataset has this label
    needs_reasoning: bool = True  # a response without a closed thought breaks the schema
    record: tuple[str, Callable[[str], tuple[str, str, str]]] | None = None

    def expected(self, prompts_only: bool) -> str:
        """The layout in words, for an error that names what was expected."""
        if self.record is not None:
            label = f" and a label column {list(self.label)}" if self.fixed_label is None else ""
            return f"a {self.record[0]!r} column{label}"
        parts = [f"a prompt column {list(self.prompt)}"]
        if not prompts_only:
            parts.append(f"a response column {list(self.response)}" if self.response
                         else f"reasoning {list(self.reasoning)} and answer {list(self.answer)} columns")
        if self.fixed_label is None:
            parts.append(f"a label column {list(self.label)}")
        return ", ".join(parts)


_SAFECHAIN = dict(prompt=("instruction",), response=("response",), label=("label",))
DATASETS: dict[str, DatasetSpec] = {
    "safechain": DatasetSpec("UWNSL/SafeChain", **_SAFECHAIN),
    "small_safechain": DatasetSpec("TianshengHuang/Small_SafeChain", **_SAFECHAIN),
    "small_safechain_text": DatasetSpec("TianshengHuang/Small_SafeChain", label=("label",), record=("text", parse_s1_text)),
    "star1": DatasetSpec("UCSC-VLAA/STAR-1", prompt=("question",), response=("response",), fixed_label="harmful"),
    "directrefusal": DatasetSpec("TianshengHuang/DirectRefusal", fixed_label="harmful",
                                 record=("refusal", parse_question_answer)),
    "directrefusal_text": DatasetSpec("TianshengHuang/DirectRefusal", fixed_label="harmful",
                                      record=("text", parse_s1_text)),
    "r1_act": DatasetSpec("Yeonjun/R1-Act-train", prompt=("instruction",), response=("response",), label=("label",),
                          fixed_label="harmful"),
    "thinksafe": DatasetSpec("", prompt=("instruction",), response=("response",), label=("prompt_label",)),
    # Our own outputs (DGR, ThinkSafe) and any file already in the schema.
    "schema": DatasetSpec("", prompt=("prompt",), reasoning=("reasoning",), answer=("answer",), label=("label",)),
}


@dataclass
class LoadReport:
    source: str
    kept: int = 0
    bad: list[tuple[int, str]] = field(default_factory=list)  # (row, reason)


def _pick(row: dict[str, Any], candidates: tuple[str, ...], override: str | None) -> str | None:
    if override:
        return override
    return next((c for c in candidates if c in row), None)


def load_safety_dataset(name: str, source: str | None = None, *, split: str = "train",
                        on_bad_row: Literal["skip", "error"] = "skip",
                        columns: dict[str, str] | None = None, limit: int | None = None,
                        prompts_only: bool = False) -> tuple[list[SafetyExample], LoadReport]:
    """Load dataset `name` (a key of DATASETS) from `source`: a local .json/.jsonl/.parquet/.csv
    file or a hub name (default: the dataset's hub name). `columns` overrides the mapping, e.g.
    {"prompt": "query", "response": "completion"}. `prompts_only`: only prompt and label are read
    (reasoning and answer are ""), for generators such as ThinkSafe. Bad rows are logged as
    `SOURCE row R (line L): reason` and skipped, or raise DatasetError with `on_bad_row=error`."""
    if name not in DATASETS:
        raise DatasetError(f"unknown safety dataset {name!r}; known: {', '.join(DATASETS)}")
    spec, columns = DATASETS[name], dict(columns or {})
    unknown = set(columns) - {"prompt", "response", "reasoning", "answer", "label"}
    if unknown:
        raise DatasetError(f"columns: unknown schema field(s) {sorted(unknown)}")
    source = source or spec.hub_name
    if not source:
        raise DatasetError(f"dataset {name!r} has no default hub name: give a file or a hub name "
                           "(e.g. Seanie-lee/ThinkSafe-R1-Distill-7B for the ThinkSafe authors' sets)")
    if is_local_file(source):
        records = read_records(source)
    else:
        records = [Record(i, f"row {i}", row) for i, row in enumerate(load_rows(source, split))]

    _check_layout([r.value for r in records], spec, columns, prompts_only, source, name)
    report, examples = LoadReport(source), []
    for record in records[:limit] if limit else records:
        index = record.index
        try:
            if record.error is not None:
                raise _BadRow(record.error)
            examples.append(_parse_row(record.value, index, spec, columns, name, prompts_only))
        except _BadRow as bad:
            where = f"row {index}" + (f" ({record.where})" if record.where.startswith("line") else "")
            message = f"{source} {where}: {bad}"
            if on_bad_row == "error":
                raise DatasetError(message) from None
            if len(report.bad) < _LOGGED_BAD_ROWS:
                log.warning("skipping %s", message)
            report.bad.append((index, str(bad)))
    report.kept = len(examples)
    if report.bad:
        log.warning("%s: kept %d rows, skipped %d that break the schema%s", source, report.kept, len(report.bad),
                    f" (the first {_LOGGED_BAD_ROWS} logged above)" if len(report.bad) > _LOGGED_BAD_ROWS else "")
    if not examples:
        raise DatasetError(f"{source}: no usable rows among {len(records)}" +
                           (f"; row {report.bad[0][0]}: {report.bad[0][1]}" if report.bad else ""))
    return examples, report


def _check_layout(rows: list[Any], spec: DatasetSpec, columns: dict[str, str], prompts_only: bool, source: str,
                  name: str) -> None:
    """Fail at once, naming the columns found, when the first row has none of the columns the
    layout needs (a file in another layout would otherwise fail row by row, or not at all)."""
    first = next((row for row in rows if isinstance(row, dict)), None)
    if first is None:
        return  # no object row at all: each row is reported as it is parsed
    if spec.record is not None and not columns:
        wanted = [spec.record[0]] + ([_pick(first, spec.label, None)] if spec.fixed_label is None else [])
    else:
        wanted = [_pick(first, spec.prompt, columns.get("prompt"))]
        if not prompts_only:
            pair = [_pick(first, spec.reasoning, columns.get("reasoning")), _pick(first, spec.answer, columns.get("answer"))]
            response = _pick(first, spec.response, columns.get("response"))
            wanted += pair if all(pair) and not columns.get("response") else [response]
        if spec.fixed_label is None:
            wanted.append(_pick(first, spec.label, columns.get("label")))
    if any(column is None or column not in first for column in wanted):
        raise DatasetError(f"{source}: not in the {name} layout, which needs {spec.expected(prompts_only)}; its "
                           f"columns are {sorted(first)} (choose data.dataset for this layout, or map it with "
                           "data.columns: {schema field: column})")


def _text(row: dict[str, Any], column: str | None, what: str, allow_empty: bool = False) -> str:
    if column is None or column not in row:
        raise _BadRow(f"no {what} column (columns: {sorted(row)})")
    value = row[column]
    if not isinstance(value, str):
        raise _BadRow(f"{what} column {column!r} holds {type(value).__name__}, not text")
    if not allow_empty and not value.strip():
        raise _BadRow(f"{what} column {column!r} is empty")
    return value


def _parse_row(row: Any, index: int, spec: DatasetSpec, columns: dict[str, str], name: str,
               prompts_only: bool) -> SafetyExample:
    if not isinstance(row, dict):
        raise _BadRow(f"not an object but {type(row).__name__}")
    if spec.record is not None and not columns:
        column, parse = spec.record
        try:
            prompt, reasoning, answer = parse(_text(row, column, column))
        except _BadRow as bad:
            raise _BadRow(f"column {column!r} {bad}") from None
        label = _parse_label(row, spec, columns)
        return SafetyExample(prompt, "" if prompts_only else reasoning, "" if prompts_only else answer, label, name,
                             index)
    prompt = _text(row, _pick(row, spec.prompt, columns.get("prompt")), "prompt").strip()

    label = _parse_label(row, spec, columns)
    if prompts_only:
        return SafetyExample(prompt, "", "", label, name, index)
    reasoning_col = _pick(row, spec.reasoning, columns.get("reasoning"))
    answer_col = _pick(row, spec.answer, columns.get("answer"))
    response_col = _pick(row, spec.response, columns.get("response"))
    if reasoning_col and answer_col and reasoning_col != answer_col and not columns.get("response"):
        reasoning = _text(row, reasoning_col, "reasoning", allow_empty=not spec.needs_reasoning).strip()
        answer = _text(row, answer_col, "answer").strip()
    else:
        parts = split_response(_text(row, response_col, "response"))
        if parts.state != "answered" or not parts.answer:
            raise _BadRow(
                f"response column {response_col!r} is not one thought closed by </think> followed "
                "by a non-empty answer"
            )
        reasoning, answer = parts.reasoning, parts.answer
        if spec.needs_reasoning and not reasoning:
            raise _BadRow("empty reasoning")
    return SafetyExample(prompt, reasoning, answer, label, name, index)


def _parse_label(row: dict[str, Any], spec: DatasetSpec, columns: dict[str, str]) -> Label:
    label_col = _pick(row, spec.label, columns.get("label"))
    if label_col is not None and label_col in row:
        try:
            label = parse_label(row[label_col])
        except LabelError as err:
            raise _BadRow(f"column {label_col!r}: {err}") from None
        if label is None:
            raise _BadRow(f"label {row[label_col]!r} in column {label_col!r} is neither harmful nor benign")
    elif spec.fixed_label is not None:
        label = spec.fixed_label
    else:
        raise _BadRow(f"no label column (columns: {sorted(row)})")
    return label


def write_examples(path: str | Path, rows: list[dict[str, Any]]) -> Path:
    """JSONL output of the refinement commands (schema fields plus provenance)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path
