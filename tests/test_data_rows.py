"""Reading rows: JSONL, save_to_disk folders, parquet and arrow files, and one-line errors."""

from __future__ import annotations

import json

import pytest

from macft.data import Row, load_rows
from macft.errors import MacftError

ROWS = [
    {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
    {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]},
    {"messages": [{"role": "user", "content": "name?"}, {"role": "assistant", "content": "Ada"}]},
]


def write_jsonl(path, rows, blank_after: int | None = None) -> str:
    lines = [json.dumps(r) for r in rows]
    if blank_after is not None:
        lines.insert(blank_after, "   ")
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def one_line_error(path) -> str:
    with pytest.raises(MacftError) as info:
        load_rows(path)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_jsonl_rows_keep_their_line_numbers_and_skip_blank_lines(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", ROWS, blank_after=1)
    rows = load_rows(path)
    assert [r.line for r in rows] == [1, 3, 4]
    assert [r.data for r in rows] == ROWS
    assert rows[1].where == f"{path}:3"


def test_json_array_file(tmp_path):
    path = tmp_path / "train.json"
    path.write_text(json.dumps(ROWS, indent=2))
    assert load_rows(path) == [Row(i + 1, r, str(path)) for i, r in enumerate(ROWS)]


def test_invalid_json_names_file_and_line(tmp_path):
    path = tmp_path / "train.jsonl"
    lines = [json.dumps(r) for r in ROWS * 2] + ['{"text": "a" "b"}']
    path.write_text("\n".join(lines) + "\n")
    assert one_line_error(path) == f"{path}:7: invalid JSON (Expecting ',' delimiter)"


def test_non_object_row(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"text": "a"}\n\n["not", "an", "object"]\n')
    assert one_line_error(path) == f"{path}:3: a row must be a JSON object, got list"


def test_empty_file_and_only_blank_lines(tmp_path):
    for text in ("", "\n  \n\n"):
        path = tmp_path / "train.jsonl"
        path.write_text(text)
        assert one_line_error(path) == f"{path}: no rows"


def test_missing_file(tmp_path):
    assert one_line_error("data/x.jsonl") == "data/x.jsonl: file not found"


def test_bad_utf8_names_the_line(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_bytes(b'{"text": "a"}\n{"text": "\xff"}\n')
    assert one_line_error(path) == f"{path}:2: not valid UTF-8 text"


def test_folder_that_is_not_a_saved_dataset(tmp_path):
    assert one_line_error(tmp_path) == f"{tmp_path}: not a folder written by datasets' save_to_disk"


def test_saved_dataset_parquet_and_arrow_match_jsonl(tmp_path):
    import datasets

    expected = [r.data for r in load_rows(write_jsonl(tmp_path / "train.jsonl", ROWS))]
    ds = datasets.Dataset.from_list(ROWS)
    ds.save_to_disk(str(tmp_path / "saved"))
    ds.to_parquet(str(tmp_path / "train.parquet"))
    arrow = sorted((tmp_path / "saved").glob("*.arrow"))
    assert len(arrow) == 1
    for source in (tmp_path / "saved", tmp_path / "train.parquet", arrow[0]):
        rows = load_rows(source)
        assert [r.data for r in rows] == expected
        assert [r.line for r in rows] == [1, 2, 3]
        assert rows[0].source == str(source)


def test_dataset_dict_uses_train_unless_the_path_names_a_split(tmp_path):
    import datasets

    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS[:2]),
                               "validation": datasets.Dataset.from_list(ROWS[2:])})
    folder = tmp_path / "dd"
    dd.save_to_disk(str(folder))
    assert [r.data for r in load_rows(folder)] == ROWS[:2]
    assert [r.data for r in load_rows(f"{folder}:validation")] == ROWS[2:]
    assert one_line_error(f"{folder}:test") == (
        f"{folder}:test: no split 'test'; choose one with {folder}:<split> "
        "(splits: train, validation)")
