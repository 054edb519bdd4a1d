"""Read data rows from JSONL/JSON files, parquet/arrow files and save_to_disk folders.

Every row remembers where it came from (file and 1-based line, or row number for columnar
sources) so that a bad row is reported as ``data/train.jsonl:7: ...`` in one line.

A folder written by ``DatasetDict.save_to_disk`` holds several splits: the "train" split is
read unless the path names another one after a colon, e.g. ``data/squad:validation``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from macft.errors import MacftError, where


@dataclass(frozen=True)
class Row:
    line: int  # 1-based line of a JSONL file, or 1-based row number of a table
    data: dict
    source: str = "<data>"  # the path as the user wrote it, for error messages

    @property
    def where(self) -> str:
        return where(self.source, self.line)


def check_source(path: str | Path) -> Path:
    """The file or folder a data path names; MacftError when it is missing (checked before a
    run starts, so a typo does not wait for the model to load)."""
    p, _ = _split_path(str(path))
    if not p.exists():
        raise MacftError(f"{path}: file not found")
    return p


def load_rows(path: str | Path) -> list[Row]:
    """All rows of a data set; raises MacftError for a missing, empty or malformed source."""
    src = str(path)
    check_source(src)
    p, split = _split_path(src)
    if p.is_dir():
        records = _read_saved_dataset(p, split, src)
    elif p.suffix == ".parquet":
        records = _read_parquet(p, src)
    elif p.suffix == ".arrow":
        records = _read_arrow(p, src)
    else:
        return _nonempty(_read_jsonl(p, src), src)
    rows = []
    for i, data in enumerate(records):
        rows.append(Row(i + 1, _check_object(data, src, i + 1), src))
    return _nonempty(rows, src)


def _split_path(src: str) -> tuple[Path, str | None]:
    """``folder:split`` -> (folder, split), when ``folder`` is a directory and src is not a path."""
    p = Path(src)
    if not p.exists() and ":" in src:
        base, _, split = src.rpartition(":")
        if base and split and Path(base).is_dir():
            return Path(base), split
    return p, None


def _nonempty(rows: list[Row], src: str) -> list[Row]:
    if not rows:
        raise MacftError(f"{src}: no rows")
    return rows


def _check_object(data, src: str, line: int) -> dict:
    if not isinstance(data, dict):
        raise MacftError(f"{where(src, line)}: a row must be a JSON object, "
                         f"got {type(data).__name__}")
    return data


def _read_jsonl(p: Path, src: str) -> list[Row]:
    raw = p.read_bytes()
    if p.suffix == ".json" and raw.lstrip()[:1] == b"[":
        return _read_json_array(raw, src)
    rows = []
    for n, line in enumerate(raw.splitlines(), start=1):
        try:
            text = line.decode("utf-8-sig" if n == 1 else "utf-8")
        except UnicodeDecodeError:
            raise MacftError(f"{where(src, n)}: not valid UTF-8 text") from None
        if not text.strip():
            continue  # blank lines are allowed anywhere
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise MacftError(f"{where(src, n)}: invalid JSON ({exc.msg})") from None
        rows.append(Row(n, _check_object(data, src, n), src))
    return rows


def _read_json_array(raw: bytes, src: str) -> list[Row]:
    """A ``.json`` file holding one array of objects; "line" is then the element number."""
    try:
        items = json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise MacftError(f"{src}: not valid UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise MacftError(f"{where(src, exc.lineno)}: invalid JSON ({exc.msg})") from None
    return [Row(i + 1, _check_object(d, src, i + 1), src) for i, d in enumerate(items)]


def _read_parquet(p: Path, src: str) -> list[dict]:
    import pyarrow.parquet as pq  # installed with datasets; read directly to skip its cache

    try:
        return pq.read_table(p).to_pylist()
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise MacftError(f"{src}: cannot read parquet file ({_one_line(exc)})") from None


def _read_arrow(p: Path, src: str) -> list[dict]:
    import pyarrow as pa

    # datasets writes the IPC stream format; other tools often write the IPC file format.
    for open_ in (pa.ipc.open_stream, pa.ipc.open_file):
        try:
            with pa.memory_map(str(p)) as source:
                return open_(source).read_all().to_pylist()
        except pa.ArrowInvalid as exc:
            error = exc
    raise MacftError(f"{src}: cannot read arrow file ({_one_line(error)})")


def _read_saved_dataset(p: Path, split: str | None, src: str) -> list[dict]:
    if not ((p / "dataset_dict.json").exists() or (p / "state.json").exists()):
        raise MacftError(f"{src}: not a folder written by datasets' save_to_disk")
    import datasets

    try:
        ds = datasets.load_from_disk(str(p))
    except Exception as exc:
        raise MacftError(f"{src}: cannot load saved dataset ({_one_line(exc)})") from None
    if isinstance(ds, datasets.DatasetDict):
        splits = list(ds.keys())
        name = split or ("train" if "train" in ds else splits[0] if len(splits) == 1 else None)
        if name not in ds:
            what = f"no split '{split}'" if split else "no 'train' split"
            raise MacftError(f"{src}: {what}; choose one with {p}:<split> "
                             f"(splits: {', '.join(splits)})")
        ds = ds[name]
    elif split is not None:
        raise MacftError(f"{src}: {p} holds a single split, remove ':{split}'")
    return ds.to_list()


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
