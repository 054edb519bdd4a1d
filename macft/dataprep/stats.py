"""`macft data stats`: what a data set holds, computed once for the CLI and the TUI."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from macft.data.encode import check_row, detect_format, encode_rows
from macft.data.rows import Row
from macft.dataprep import dedup
from macft.dataprep.text import answer, row_text
from macft.errors import MacftError

LABEL_SET_MAX = 20   # answers from at most this many distinct short strings are labels


@dataclass
class DataStats:
    rows: int = 0
    formats: Counter = field(default_factory=Counter)
    roles: Counter = field(default_factory=Counter)
    invalid: list[str] = field(default_factory=list)       # one message per malformed row
    empty_fields: int = 0
    chars: list[int] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)        # with a tokenizer only
    trained_tokens: int = 0
    over_max_length: int = 0
    max_length: int = 0
    exact_duplicates: int = 0
    near_duplicates: int = 0
    labels: Counter = field(default_factory=Counter)       # empty unless answers form a set

    def lines(self) -> list[str]:
        fmts = ", ".join(f"{k} {v}" for k, v in self.formats.most_common()) or "none"
        out = [f"rows {self.rows} · formats: {fmts}"]
        if self.roles:
            out.append("messages by role: " + ", ".join(f"{k} {v}" for k, v in
                                                         sorted(self.roles.items())))
        out.append(f"characters per row: min {min(self.chars)} · median "
                   f"{sorted(self.chars)[len(self.chars) // 2]} · max {max(self.chars)}")
        if self.tokens:
            out.append(f"tokens per row: min {min(self.tokens)} · median "
                       f"{sorted(self.tokens)[len(self.tokens) // 2]} · max {max(self.tokens)}"
                       f" · trained tokens {self.trained_tokens} · over max_length "
                       f"{self.max_length}: {self.over_max_length}")
        out.append(f"exact duplicates {self.exact_duplicates} · near duplicates "
                   f"{self.near_duplicates} · empty fields {self.empty_fields} · "
                   f"malformed rows {len(self.invalid)}")
        if self.labels:
            out.append("labels: " + ", ".join(f"{k!r} {v}" for k, v in self.labels.most_common()))
        return out


def _row_format(row: Row) -> str | None:
    try:
        fmt = detect_format([row], row.source)
        check_row(row, fmt)
    except MacftError:
        return None
    return fmt


def _empty(value) -> int:
    if isinstance(value, str):
        return int(not value.strip())
    if isinstance(value, dict):
        return sum(_empty(v) for v in value.values())
    if isinstance(value, list):
        return sum(_empty(v) for v in value) if value else 1
    return int(value is None)


def label_counts(answers: list[str | None]) -> Counter:
    """Answers as labels when they come from a small set of short strings repeated often."""
    known = [a.strip() for a in answers if a is not None]
    c = Counter(known)
    if (len(known) >= 4 and 2 <= len(c) <= min(LABEL_SET_MAX, len(known) // 2)
            and all(len(a.split()) <= 4 and "\n" not in a for a in c)):
        return c
    return Counter()


def compute(rows: list[Row], tokenizer=None, spec=None, near: float = 0.7,
            progress=None) -> DataStats:
    s = DataStats(rows=len(rows))
    texts = [row_text(r.data) for r in rows]
    for r, text in zip(rows, texts):
        fmt = _row_format(r)
        if fmt is None:
            s.invalid.append(r.where)
        s.formats[fmt or "unknown"] += 1
        for m in r.data.get("messages") or []:
            if isinstance(m, dict):
                s.roles[str(m.get("role"))] += 1
        s.empty_fields += _empty(r.data)
        s.chars.append(len(text))
    if tokenizer is not None and spec is not None:
        _token_stats(s, rows, tokenizer, spec)
    s.exact_duplicates = len(dedup.exact_matches(texts))
    gone = {m.index for m in dedup.exact_matches(texts)}
    if near:
        s.near_duplicates = len(dedup.near_matches(texts, near, gone, progress))
    s.labels = label_counts([answer(r.data) for r in rows])
    return s


def _token_stats(s: DataStats, rows: list[Row], tokenizer, spec) -> None:
    from dataclasses import replace

    s.max_length = spec.max_length
    # measure at full length: a very large max_length keeps every row whole
    full = replace(spec, max_length=1 << 30, overlong="truncate")
    good = [r for r in rows if _row_format(r) is not None]
    by_fmt: dict[str, list[Row]] = {}
    for r in good:
        by_fmt.setdefault(_row_format(r), []).append(r)
    for fmt, group in by_fmt.items():
        enc = encode_rows(group, tokenizer, full, group[0].source, fmt)
        for e in enc.examples:
            s.tokens.append(len(e.ids))
            s.trained_tokens += int(sum(e.mask))
            s.over_max_length += len(e.ids) > spec.max_length
