"""Arrange encoded examples into training sequences, optionally packing several into one."""

from __future__ import annotations

import bisect
from dataclasses import dataclass


@dataclass(frozen=True)
class Sequence:
    ids: list[int]
    mask: list[int]
    segments: list[int]  # index (0, 1, 2 ..) of the example each token belongs to

    @property
    def packed(self) -> bool:
        return bool(self.segments) and self.segments[-1] > 0


def make_sequences(examples, max_length: int, packing: bool) -> list[Sequence]:
    """One sequence per example, or best-fit-decreasing packs of at most max_length tokens.

    Deterministic for a given input. Inside a pack, examples keep their original order and the
    first token of each segment has mask 0, so no loss crosses a boundary.
    """
    for n, ex in enumerate(examples):
        if len(ex.ids) > max_length:
            raise ValueError(f"example {n} has {len(ex.ids)} tokens > max_length {max_length}")
    if not packing:
        return [_join([ex]) for ex in examples]
    return [_join([examples[i] for i in sorted(b)]) for b in _bins(examples, max_length)]


def _bins(examples, max_length: int) -> list[list[int]]:
    """Best-fit decreasing: each example goes to the fullest bin that still has room."""
    order = sorted(range(len(examples)), key=lambda i: (-len(examples[i].ids), i))
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, bin index), sorted
    for i in order:
        size = len(examples[i].ids)
        k = bisect.bisect_left(free, (size, -1))
        if k < len(free):
            room, b = free.pop(k)
        else:
            room, b = max_length, len(bins)
            bins.append([])
        bins[b].append(i)
        bisect.insort(free, (room - size, b))
    return bins


def _join(examples) -> Sequence:
    ids, mask, segments = [], [], []
    for s, ex in enumerate(examples):
        ids += ex.ids
        mask += [0] + list(ex.mask[1:]) if ex.ids else []
        segments += [s] * len(ex.ids)
    return Sequence(ids, mask, segments)
