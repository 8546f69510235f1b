"""Local data files (JSONL, JSON, CSV, TSV, Parquet), read directly: every problem names the file and
the line or row, and nothing is cached elsewhere.

Why not `datasets.load_dataset` for local files: it writes an Arrow copy of the file under the
user's cache (harmful prompts included) and reports a broken line as "Expected object or value at
position 27", without file or line. Hub datasets still go through `datasets` (`prompts.load_rows`).

Text is UTF-8; a leading byte-order mark is allowed (editors on Windows write one). CSV cells are
typed as pandas / `datasets` would type them: a column whose cells are all integers holds ints,
all numbers floats, otherwise text; an empty cell is None (in TSV, WildJailbreak's files, it stays
"").
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rl_safety.errors import UserError

SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet")


class DatasetError(UserError, ValueError):
    """A dataset that cannot be used as configured; the message names the source and the field."""


@dataclass
class Record:
    """One row of a data file, with where it came from."""

    index: int  # 0-based position among the file's rows (blank JSONL lines are not rows)
    where: str  # "line 12" (JSONL), "row 11" (JSON list, Parquet), "line 13" (CSV, header = line 1)
    value: Any  # the parsed row: normally a dict; None when `error` is set
    error: str | None = None  # why the row could not be read (a JSONL line that is not JSON)


def is_local_file(source: str) -> bool:
    """Whether `source` names a local data file (by its suffix, or because it exists)."""
    return Path(source).suffix.lower() in SUFFIXES or Path(source).is_file()


def read_records(path: str | Path) -> list[Record]:
    """Every row of a local data file. A JSONL line that is not JSON becomes a record with an
    `error` (the caller decides to skip or stop); anything that makes the whole file unusable
    (missing, empty, not UTF-8, not JSON / CSV / Parquet, an unknown type) raises DatasetError."""
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.exists():
        raise DatasetError(f"data file {path} does not exist")
    if not path.is_file():
        raise DatasetError(f"data file {path} is not a file")
    if suffix not in SUFFIXES:
        raise DatasetError(f"data file {path}: unsupported type {suffix or '(no suffix)'!r}; "
                           f"use one of {', '.join(SUFFIXES)}")
    if suffix == ".parquet":
        records = _parquet(path)
    else:
        data = path.read_bytes()
        text = _utf8(path, data)
        records = {".jsonl": _jsonl, ".json": _json, ".csv": _csv, ".tsv": _tsv}[suffix](path, text)
    if not records:
        raise DatasetError(f"data file {path} is empty: no rows")
    return records


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a local data file, each a mapping; the first bad row raises DatasetError."""
    rows = []
    for record in read_records(path):
        if record.error is not None:
            raise DatasetError(f"{path} {record.where}: {record.error}")
        if not isinstance(record.value, dict):
            raise DatasetError(f"{path} {record.where}: a row must be an object of fields, "
                               f"not {type(record.value).__name__}")
        rows.append(record.value)
    return rows


def _utf8(path: Path, data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        raise DatasetError(f"{path} line {line}: not UTF-8 text (byte {data[err.start]:#04x} at column {column}); "
                           "save the file as UTF-8") from None


def _jsonl(path: Path, text: str) -> list[Record]:
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(Record(len(records), f"line {number}", json.loads(line)))
        except json.JSONDecodeError as err:
            records.append(Record(len(records), f"line {number}", None, f"not valid JSON ({err.msg} at column {err.colno})"))
    return records


def _json(path: Path, text: str) -> list[Record]:
    if not text.strip():
        return []
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise DatasetError(f"{path} line {err.lineno} column {err.colno}: not valid JSON ({err.msg})") from None
    if not isinstance(data, list):
        raise DatasetError(f"{path}: expected a JSON list of rows, got a {type(data).__name__} "
                           "(one object per line is a .jsonl file)")
    return [Record(i, f"row {i}", row) for i, row in enumerate(data)]


def _tsv(path: Path, text: str) -> list[Record]:
    return _csv(path, text, delimiter="\t", empty="")


def _csv(path: Path, text: str, delimiter: str = ",", empty: str | None = None) -> list[Record]:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        rows = list(reader)
    except csv.Error as err:
        raise DatasetError(f"{path} line {reader.line_num}: not valid CSV ({err})") from None
    if not rows:
        return []
    header, body = rows[0], rows[1:]
    if len(set(header)) != len(header) or any(not h for h in header):
        raise DatasetError(f"{path} line 1: the header needs distinct, non-empty column names, got {header}")
    for number, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise DatasetError(f"{path} line {number}: {len(row)} cells, the header has {len(header)} columns")
    columns = [_typed_column([row[c] for row in body], empty) for c in range(len(header))]
    return [Record(i, f"line {i + 2}", {name: columns[c][i] for c, name in enumerate(header)})
            for i in range(len(body))]


def _typed_column(cells: list[str], empty: str | None) -> list[Any]:
    present = [c for c in cells if c != ""]
    for kind in (int, float):
        try:
            converted = [kind(c) for c in present]
        except ValueError:
            continue
        values = iter(converted)
        return [next(values) if c != "" else None for c in cells]
    return [c if c != "" else empty for c in cells]


def _parquet(path: Path) -> list[Record]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except (pa.ArrowException, OSError) as err:
        raise DatasetError(f"{path}: not a readable Parquet file ({' '.join(str(err).split())})") from None
    return [Record(i, f"row {i}", row) for i, row in enumerate(rows)]
