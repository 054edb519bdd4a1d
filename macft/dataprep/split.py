"""`macft data split` and `macft data leak`: no near duplicate on both sides of a split."""

from __future__ import annotations

import random
from collections import defaultdict

from macft.data.rows import Row
from macft.dataprep import dedup
from macft.errors import MacftError
from macft.dataprep.text import row_text


def split(rows: list[Row], valid: float, test: float, seed: int, threshold: float,
          progress=None) -> dict[str, list[Row]]:
    """Whole clusters of near duplicates go to one split; sizes are met as closely as whole
    clusters allow. Rows keep their file order inside each split."""
    if valid < 0 or test < 0 or valid + test >= 1:
        raise MacftError("--valid and --test must be >= 0 and sum to less than 1")
    ids = dedup.clusters([row_text(r.data) for r in rows], threshold, progress)
    groups: dict[int, list[int]] = defaultdict(list)
    for i, c in enumerate(ids):
        groups[c].append(i)
    order = sorted(groups)
    random.Random(seed).shuffle(order)
    want = {"test": round(test * len(rows)), "valid": round(valid * len(rows))}
    where: dict[int, str] = {}
    filled = {"test": 0, "valid": 0}
    for c in order:
        name = next((s for s in ("test", "valid") if filled[s] + len(groups[c]) <= want[s]),
                    "train")
        if name != "train":
            filled[name] += len(groups[c])
        for i in groups[c]:
            where[i] = name
    out: dict[str, list[Row]] = {"train": [], "valid": [], "test": []}
    for i, r in enumerate(rows):
        out[where[i]].append(r)
    return out


def leaks(train: list[Row], test: list[Row], threshold: float,
          progress=None) -> list[tuple[Row, Row, float]]:
    """Each test row with its most similar train row, when that is a near (or exact) copy."""
    index = dedup.NearIndex(threshold)
    for i, r in enumerate(train):
        if progress:
            progress("indexing train", i + 1, len(train))
        sh = dedup.shingles(row_text(r.data))
        index.add(i, sh, dedup.minhash(sh))
    out = []
    for j, r in enumerate(test):
        if progress:
            progress("checking test", j + 1, len(test))
        sh = dedup.shingles(row_text(r.data))
        hit = index.query(sh, dedup.minhash(sh))
        if hit is not None:
            out.append((r, train[hit[0]], hit[1]))
    return out
