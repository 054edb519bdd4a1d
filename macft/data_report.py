"""What training will see, before it runs: per-row token counts, masks, truncation, rejections.

Each row goes through the engine's own ``encode_rows`` (so kept / truncated / dropped is decided
by the same code as in training) and ``encode_row`` at full length (to show what a cut removes).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from macft.data import EncodeStats, detect_format, encode_row, encode_rows, load_rows
from macft.data.encode import unwrap
from macft.dataprep.stats import DataStats, compute
from macft.dataprep.tokens import load_tokenizer  # noqa: F401  (the screen imports it here)
from macft.errors import MacftError
from macft.recipe import DataSpec

STATUS_OK, STATUS_CUT, STATUS_LONG, STATUS_NO_LOSS, STATUS_BAD = (
    "ok", "truncated", "dropped: too long", "dropped: no trained token", "rejected")


@dataclass(frozen=True)
class RowReport:
    line: int
    status: str
    ids: tuple[int, ...] = ()      # full length, before max_length applies
    mask: tuple[int, ...] = ()
    kept: int = 0                  # tokens that reach training (0 when dropped)
    trained: int = 0               # trained tokens among them
    message: str = ""              # why a row is rejected
    rejected_ids: tuple[int, ...] = ()   # preference pairs: ids/mask above are the chosen side
    rejected_mask: tuple[int, ...] = ()

    @property
    def tokens(self) -> int:
        return len(self.ids)


@dataclass
class DataReport:
    path: str
    format: str
    total_rows: int
    rows: list[RowReport] = field(default_factory=list)
    stats: EncodeStats = field(default_factory=EncodeStats)
    prep: DataStats | None = None  # the numbers `macft data stats` prints, from the same code

    @property
    def rejected(self) -> list[RowReport]:
        return [r for r in self.rows if r.status == STATUS_BAD]

    @property
    def problems(self) -> list[RowReport]:
        return [r for r in self.rows if r.status != STATUS_OK]


PREFERENCE = "preference"


def is_preference(rows) -> bool:
    """Preference pairs (chosen / rejected answers), which DPO-family objectives train on."""
    return bool(rows) and {"chosen", "rejected"} <= set(rows[0].data)


def inspect_data(path: str, tokenizer, spec: DataSpec, limit: int = 1000) -> DataReport:
    rows = load_rows(path)
    if is_preference(rows):
        fmt = PREFERENCE
    else:
        fmt = spec.format if spec.format != "auto" else detect_format(rows, path)
    report = DataReport(path, fmt, len(rows))
    inspect = _inspect_pair if fmt == PREFERENCE else _inspect_row
    for row in rows[:limit]:
        report.rows.append(inspect(row, fmt, tokenizer, spec, path, report.stats))
    if fmt != PREFERENCE:        # `macft data stats` reads single answers, not pairs
        report.prep = compute(rows[:limit], tokenizer, spec)
    return report


def _add(total: EncodeStats, s: EncodeStats) -> None:
    for name in ("total", "kept", "truncated", "dropped_overlong", "dropped_no_loss", "tokens",
                 "trained_tokens"):
        setattr(total, name, getattr(total, name) + getattr(s, name))


def _status(s: EncodeStats) -> str:
    if s.dropped_overlong:
        return STATUS_LONG
    if s.dropped_no_loss:
        return STATUS_NO_LOSS
    return STATUS_CUT if s.truncated else STATUS_OK


def _inspect_pair(row, fmt: str, tokenizer, spec: DataSpec, path: str, total: EncodeStats):
    """A pair through the engine's ``encode_pair``/``encode_pairs``: both sides, one status."""
    from macft.data.preference import encode_pair, encode_pairs

    try:
        pair = encode_pair(row, tokenizer, spec)
        one = encode_pairs([row], tokenizer, spec, path)
    except MacftError as exc:
        return RowReport(row.line, STATUS_BAD, message=str(exc))
    _add(total, one.stats)
    return RowReport(row.line, _status(one.stats), tuple(pair.chosen.ids),
                     tuple(pair.chosen.mask), one.stats.tokens, one.stats.trained_tokens,
                     rejected_ids=tuple(pair.rejected.ids),
                     rejected_mask=tuple(pair.rejected.mask))


def _inspect_row(row, fmt: str, tokenizer, spec: DataSpec, path: str, total: EncodeStats):
    try:
        full = encode_row(row, fmt, tokenizer, spec)
        one = encode_rows([row], tokenizer, spec, path, fmt)
    except MacftError as exc:
        return RowReport(row.line, STATUS_BAD, message=str(exc))
    _add(total, one.stats)
    return RowReport(row.line, _status(one.stats), tuple(full.ids), tuple(full.mask),
                     one.stats.tokens, one.stats.trained_tokens)


def token_pieces(tokenizer, ids) -> list[str]:
    """The text of each token, decoded token by token (prefix differences, so byte-level
    pieces of one character are shown with the token that completes it)."""
    tok = unwrap(tokenizer)
    pieces, prev = [], ""
    for j in range(len(ids)):
        text = tok.decode(list(ids[:j + 1]), skip_special_tokens=False)
        if text.endswith("\ufffd") and j + 1 < len(ids):
            pieces.append("")  # part of a multi-byte character
        elif text.startswith(prev):
            pieces.append(text[len(prev):])
            prev = text
        else:  # the decoder rewrote earlier text (space clean-up): fall back to the one token
            pieces.append(tok.decode([ids[j]], skip_special_tokens=False))
            prev = text
    return pieces


def histogram(lengths: list[int], max_length: int, bins: int = 8, width: int = 24) -> list[str]:
    """Text bars of example lengths; bins past ``max_length`` are marked with a cut sign."""
    if not lengths:
        return ["(no examples)"]
    top = max(max(lengths), 1)
    size = max(1, -(-top // bins))
    counts = [0] * bins
    for n in lengths:
        counts[min(n // size, bins - 1)] += 1
    peak = max(counts)
    digits = len(str(size * bins))
    lines = []
    for i, count in enumerate(counts):
        lo, hi = i * size, (i + 1) * size - 1
        bar = "█" * round(width * count / peak) if count else ""
        cut = " ✂" if hi >= max_length else ""
        lines.append(f"{lo:>{digits}}-{hi:<{digits}} │{bar.ljust(width)} {count}{cut}")
    return lines


def summary_lines(report: DataReport, spec: DataSpec) -> list[str]:
    s = report.stats
    shown = len(report.rows)
    scope = f"first {shown} of {report.total_rows}" if shown < report.total_rows else \
        f"{report.total_rows}"
    lines = [f"{scope} rows · format {report.format} · max_length {spec.max_length} "
             f"({spec.overlong})",
             f"kept {s.kept} · tokens {s.tokens} · trained {s.trained_tokens} · "
             f"truncated {s.truncated} · dropped {s.dropped} · rejected {len(report.rejected)}"]
    if report.prep is not None:
        lines += report.prep.lines()[1:]   # the first line repeats the row count
    if report.rejected:
        lines.append(f"training stops at the first rejected row: {report.rejected[0].message}")
    return lines


def data_path(spec: DataSpec, split: str) -> str | None:
    return {"train": spec.train, "valid": spec.valid, "test": spec.test}.get(split) or None
