"""Padded numpy batches from sequences, in an order that is a pure function of (seed, step)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from macft.errors import MacftError


@dataclass
class Batch:
    inputs: np.ndarray    # (B, T) int32 = ids[:-1] of each sequence, right-padded
    targets: np.ndarray   # (B, T) int32 = ids[1:]
    mask: np.ndarray      # (B, T) float32 = mask[1:], 0 on padding
    segments: np.ndarray | None  # (B, T) int32 segment of each input position, -1 on padding
    tokens: int           # non-pad input tokens (for tokens/s)
    lengths: np.ndarray | None = None  # (B,) int32 non-pad input tokens of each row

    def real(self) -> np.ndarray:
        """(B, T) float32: 1 on each row's real input positions, 0 on padding."""
        width = self.inputs.shape[1]
        return (np.arange(width)[None, :] < self.lengths[:, None]).astype(np.float32)


class Batcher:
    """Batches of ``batch_size`` sequences; ``batch(i)`` depends only on (seed, i).

    Epoch ``e = i // batches_per_epoch`` visits the sequences in the order
    ``np.random.default_rng(seed + e).permutation(n)``, so a resumed run sees exactly the data
    it would have seen. The last partial batch of an epoch is dropped, unless the whole set is
    smaller than one batch (then every batch is the whole set). ``segments`` is filled for all
    batches when any sequence of the set is packed, else None, so its presence never changes
    from step to step.
    """

    def __init__(self, sequences, batch_size: int, seed: int, shuffle: bool = True,
                 pad_id: int = 0, pad_to_multiple: int = 8):
        if not sequences:
            raise MacftError("no training examples left to batch (all were dropped?)")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.sequences = list(sequences)
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.pad_id = pad_id
        self.pad_to_multiple = max(1, pad_to_multiple)
        self.packed = any(s.segments and s.segments[-1] > 0 for s in self.sequences)
        self.batches_per_epoch = max(1, len(self.sequences) // batch_size)
        self._order: tuple[int, np.ndarray] | None = None

    def order(self, epoch: int) -> np.ndarray:
        """Sequence indices in the order epoch ``epoch`` visits them."""
        if self._order is None or self._order[0] != epoch:
            n = len(self.sequences)
            perm = (np.random.default_rng(self.seed + epoch).permutation(n) if self.shuffle
                    else np.arange(n))
            self._order = (epoch, perm)
        return self._order[1]

    def batch(self, i: int) -> Batch:
        epoch, j = divmod(i, self.batches_per_epoch)
        idx = self.order(epoch)[j * self.batch_size:(j + 1) * self.batch_size]
        return self.collate([self.sequences[k] for k in idx])

    def widths(self, epoch: int = 0) -> set[int]:
        """The padded lengths of epoch ``epoch``'s batches: the batch shapes a run meets."""
        lengths = np.array([len(s.ids) - 1 for s in self.sequences])
        order, m, out = self.order(epoch), self.pad_to_multiple, set()
        for j in range(self.batches_per_epoch):
            longest = int(lengths[order[j * self.batch_size:(j + 1) * self.batch_size]].max())
            out.add(max(m, -(-longest // m) * m))
        return out

    def longest(self, rows: int) -> Batch:
        """The batch of the ``rows`` longest sequences (the worst case a run can meet)."""
        return self.collate(sorted(self.sequences, key=lambda s: len(s.ids))[-rows:])

    def eval_count(self) -> int:
        """The number of batches ``iter_eval`` yields."""
        return -(-len(self.sequences) // self.batch_size)

    def iter_eval(self):
        """Every sequence once, in the given order, the partial last batch included."""
        for start in range(0, len(self.sequences), self.batch_size):
            yield self.collate(self.sequences[start:start + self.batch_size])

    def collate(self, seqs) -> Batch:
        longest = max(len(s.ids) - 1 for s in seqs)
        m = self.pad_to_multiple
        T = max(m, -(-longest // m) * m)  # round up; never a zero-width batch
        inputs = np.full((len(seqs), T), self.pad_id, dtype=np.int32)
        targets = np.full((len(seqs), T), self.pad_id, dtype=np.int32)
        mask = np.zeros((len(seqs), T), dtype=np.float32)
        segments = np.full((len(seqs), T), -1, dtype=np.int32) if self.packed else None
        tokens = 0
        lengths = np.zeros((len(seqs),), dtype=np.int32)
        for b, s in enumerate(seqs):
            n = len(s.ids) - 1
            inputs[b, :n] = s.ids[:-1]
            targets[b, :n] = s.ids[1:]
            mask[b, :n] = s.mask[1:]
            if segments is not None:
                segments[b, :n] = s.segments[:-1]
            tokens += max(n, 0)
            lengths[b] = max(n, 0)
        return Batch(inputs, targets, mask, segments, tokens, lengths)


def pad_id(tokenizer) -> int:
    """The id that pads a batch: the tokenizer's pad token, else its end of sequence, else 0."""
    tok = getattr(tokenizer, "_tokenizer", tokenizer)
    for attr in ("pad_token_id", "eos_token_id"):
        value = getattr(tok, attr, None)
        if value is not None:
            return int(value)
    return 0
