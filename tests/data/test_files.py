"""Local data files read directly: every problem names the file and the line; a BOM is allowed."""

from __future__ import annotations

import pytest

from rl_safety.data.files import DatasetError, read_records, read_rows


def test_jsonl_with_bom_keeps_its_first_row_and_reports_a_broken_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes('\ufeff{"prompt": "first"}\n\n{"prompt": "x"\n'.encode())
    records = read_records(path)
    assert records[0].value == {"prompt": "first"} and records[0].where == "line 1"
    assert records[1].where == "line 3" and records[1].error.startswith("not valid JSON")
    with pytest.raises(DatasetError, match=r"d.jsonl line 3: not valid JSON"):
        read_rows(path)


def test_bytes_that_are_not_utf8_are_located(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"a": "ok"}\n{"a": "caf\xe9"}\n')
    with pytest.raises(DatasetError, match=r"d.jsonl line 2: not UTF-8 text \(byte 0xe9 at column 11\)"):
        read_records(path)


def test_csv_cells_are_typed_like_pandas(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("id,score,prompt,note\n1,0.5,hi,\n2,3,there,x\n")
    assert read_rows(path) == [{"id": 1, "score": 0.5, "prompt": "hi", "note": None},
                               {"id": 2, "score": 3.0, "prompt": "there", "note": "x"}]


@pytest.mark.parametrize("name,content,message", [
    ("d.txt", "a\n", "unsupported type '.txt'"), ("d.jsonl", "", "is empty: no rows"),
    ("d.json", '{"a": 1}', "expected a JSON list of rows, got a dict"),
    ("d.csv", "a,b\n1\n", "line 2: 1 cells, the header has 2 columns"),
    ("d.parquet", "nope", "not a readable Parquet file")])
def test_unusable_files_say_why(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(DatasetError, match=message):
        read_records(tmp_path / name)
