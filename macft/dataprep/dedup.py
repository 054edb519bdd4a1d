"""Duplicate finding: exact (normal form), near (MinHash/LSH over character shingles), semantic.

Near duplicates are proposed by datasketch's LSH index and confirmed with the exact Jaccard
similarity of the shingle sets, so a hash collision never removes a row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from macft.dataprep.text import normalise

Progress = Callable[[str, int, int], None]
SHINGLE = 5
NUM_PERM = 128


@dataclass(frozen=True)
class Match:
    index: int       # the row that duplicates another
    of: int          # the earlier row it duplicates
    kind: str        # "exact", "near" or "semantic"
    score: float     # 1.0 for exact; Jaccard or cosine otherwise


def shingles(text: str, k: int = SHINGLE) -> set[str]:
    t = normalise(text)
    if len(t) <= k:
        return {t}
    return {t[i:i + k] for i in range(len(t) - k + 1)}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def minhash(sh: set[str]):
    from datasketch import MinHash

    m = MinHash(num_perm=NUM_PERM, seed=1)
    m.update_batch([s.encode("utf-8") for s in sh])
    return m


def exact_matches(texts: list[str]) -> list[Match]:
    first: dict[str, int] = {}
    out = []
    for i, t in enumerate(texts):
        key = normalise(t)
        if key in first:
            out.append(Match(i, first[key], "exact", 1.0))
        else:
            first[key] = i
    return out


class NearIndex:
    """An LSH index of shingle sets; ``query`` returns the most similar confirmed entry."""

    def __init__(self, threshold: float):
        from datasketch import MinHashLSH

        self.threshold = threshold
        # Candidates are confirmed exactly, so a false positive costs one set comparison while
        # a false negative keeps a duplicate: tune the bands for recall, below the threshold.
        self.lsh = MinHashLSH(threshold=max(0.3, threshold - 0.2), num_perm=NUM_PERM,
                              weights=(0.2, 0.8))
        self.sets: dict[int, set[str]] = {}

    def add(self, key: int, sh: set[str], mh) -> None:
        self.lsh.insert(key, mh)
        self.sets[key] = sh

    def query(self, sh: set[str], mh) -> tuple[int, float] | None:
        best = None
        for key in self.lsh.query(mh):
            score = jaccard(sh, self.sets[key])
            if score >= self.threshold and (best is None or score > best[1] or
                                            (score == best[1] and key < best[0])):
                best = (key, score)
        return best


def near_matches(texts: list[str], threshold: float, skip: set[int] = frozenset(),
                 progress: Progress | None = None) -> list[Match]:
    """Each row (in order) that is a near duplicate of an earlier kept row."""
    index = NearIndex(threshold)
    out = []
    for i, t in enumerate(texts):
        if progress:
            progress("near duplicates", i + 1, len(texts))
        if i in skip:
            continue
        sh = shingles(t)
        mh = minhash(sh)
        hit = index.query(sh, mh)
        if hit is None:
            index.add(i, sh, mh)
        else:
            out.append(Match(i, hit[0], "near", hit[1]))
    return out


def clusters(texts: list[str], threshold: float, progress: Progress | None = None) -> list[int]:
    """A cluster id per row: rows linked by any chain of near duplicates share one."""
    parent = list(range(len(texts)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    index = NearIndex(threshold)
    for i, t in enumerate(texts):
        if progress:
            progress("near duplicates", i + 1, len(texts))
        sh = shingles(t)
        mh = minhash(sh)
        for key in index.lsh.query(mh):
            if jaccard(sh, index.sets[key]) >= threshold:
                parent[root(i)] = root(key)
        index.add(i, sh, mh)
    return [root(i) for i in range(len(texts))]


def semantic_matches(vectors, threshold: float, skip: set[int] = frozenset()) -> list[Match]:
    """Rows whose unit embedding has cosine >= threshold with an earlier kept row."""
    import numpy as np

    kept: list[int] = []
    out = []
    for i in range(len(vectors)):
        if i in skip:
            continue
        if kept:
            sims = vectors[kept] @ vectors[i]
            j = int(np.argmax(sims))
            if sims[j] >= threshold:
                out.append(Match(i, kept[j], "semantic", float(sims[j])))
                continue
        kept.append(i)
    return out
