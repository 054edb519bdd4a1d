"""`macft data clean`: length filter, PII scrubbing, exact / near / semantic dedup.

The first row of each duplicate group is kept (file order), so a later copy never displaces
the original. Every removed or changed row is recorded with its line number.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from macft.data.rows import Row
from macft.dataprep import dedup, pii
from macft.dataprep.text import map_strings, row_text


@dataclass(frozen=True)
class CleanOptions:
    near: float = 0.7          # Jaccard of 5-character shingles; 0 switches near dedup off
    semantic: float = 0.0      # cosine of sentence embeddings; 0 switches it off
    scrub: bool = True
    min_chars: int = 1
    max_chars: int = 0         # 0: no limit
    max_tokens: int = 0        # needs a tokenizer; 0: no limit


@dataclass
class CleanResult:
    kept: list[Row] = field(default_factory=list)
    changes: list[dict] = field(default_factory=list)   # one per removed or changed row

    def counts(self) -> Counter:
        c = Counter()
        for ch in self.changes:
            c[ch["action"] + ":" + ch.get("reason", "pii")] += 1
            for kind, n in ch.get("pii", {}).items():
                c["pii:" + kind] += n
        return c


def _too_long(text: str, opts: CleanOptions, tokenizer) -> str | None:
    if len(text.strip()) < opts.min_chars:
        return f"shorter than {opts.min_chars} characters"
    if opts.max_chars and len(text) > opts.max_chars:
        return f"{len(text)} characters > max_chars {opts.max_chars}"
    if opts.max_tokens and tokenizer is not None:
        n = len(tokenizer.encode(text))
        if n > opts.max_tokens:
            return f"{n} tokens > max_tokens {opts.max_tokens}"
    return None


def _scrub_row(row: Row) -> tuple[Row, Counter]:
    found: Counter = Counter()

    def fn(s: str) -> str:
        out, items = pii.scrub(s)
        found.update(f.kind for f in items)
        return out

    return Row(row.line, map_strings(row.data, fn), row.source), found


def clean(rows: list[Row], opts: CleanOptions, tokenizer=None, embed=None,
          progress=None) -> CleanResult:
    """``embed(texts) -> unit vectors`` is needed only when ``opts.semantic`` is set."""
    result = CleanResult()
    survivors: list[Row] = []
    for i, row in enumerate(rows):
        if progress:
            progress("length and PII", i + 1, len(rows))
        why = _too_long(row_text(row.data), opts, tokenizer)
        if why:
            result.changes.append({"line": row.line, "action": "removed", "reason": "length",
                                   "detail": why})
            continue
        if opts.scrub:
            row, found = _scrub_row(row)
            if found:
                result.changes.append({"line": row.line, "action": "changed",
                                       "pii": dict(sorted(found.items()))})
        survivors.append(row)
    texts = [row_text(r.data) for r in survivors]
    matches = dedup.exact_matches(texts)
    gone = {m.index for m in matches}
    if opts.near:
        near = dedup.near_matches(texts, opts.near, gone, progress)
        matches += near
        gone |= {m.index for m in near}
    if opts.semantic:
        vectors = embed(texts, progress)
        sem = dedup.semantic_matches(vectors, opts.semantic, gone)
        matches += sem
        gone |= {m.index for m in sem}
    for m in matches:
        result.changes.append({"line": survivors[m.index].line, "action": "removed",
                               "reason": m.kind, "of_line": survivors[m.of].line,
                               "score": round(m.score, 4)})
    result.kept = [r for i, r in enumerate(survivors) if i not in gone]
    result.changes.sort(key=lambda c: (c["line"], c["action"] != "changed"))
    return result
