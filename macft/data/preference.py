"""Preference pairs: a prompt (or conversation) with a chosen and a rejected answer.

Each side is rendered with the chat template exactly as a chat row would be, and the loss mask
keeps only the final answer (its content and end-of-turn token): the prompt, and any earlier
assistant turns of a conversation, are context.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from macft.data.batches import Batch, Batcher
from macft.data.encode import Encoded, EncodeStats, check_row, encode_row, prompt_and_reference
from macft.data.packing import make_sequences
from macft.data.rows import Row
from macft.errors import MacftError
from macft.recipe import DataSpec


@dataclass(frozen=True)
class Pair:
    chosen: Encoded
    rejected: Encoded


@dataclass(frozen=True)
class PairSet:
    pairs: list[Pair]
    stats: EncodeStats


def _answer(row: Row, key: str) -> str:
    if key not in row.data or row.data[key] is None:
        raise MacftError(f"{row.where}: missing key '{key}'")
    value = row.data[key]
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, dict):
        if value.get("role", "assistant") != "assistant" or not isinstance(value.get("content"),
                                                                          str):
            raise MacftError(f"{row.where}: key '{key}' must be a string or an assistant "
                             f"message with string content")
        return value["content"]
    if not isinstance(value, str):
        raise MacftError(f"{row.where}: key '{key}' must be a string or an assistant message")
    return value


def _conversation(row: Row) -> list[dict]:
    if "messages" in row.data and row.data["messages"] is not None:
        check_row(row, "chat")
        return list(row.data["messages"])
    prompt = row.data.get("prompt")
    if prompt is None:
        raise MacftError(f"{row.where}: missing key 'prompt' (or 'messages')")
    if not isinstance(prompt, str):
        raise MacftError(f"{row.where}: key 'prompt' must be a string")
    return [{"role": "user", "content": prompt}]


def _side(row: Row, messages: list[dict], answer: str, tokenizer, spec: DataSpec) -> Encoded:
    chat = Row(row.line, {"messages": messages + [{"role": "assistant", "content": answer}]},
               row.source)
    full = encode_row(chat, "chat", tokenizer, spec)
    prompt_ids, _ = prompt_and_reference(chat, "chat", tokenizer, spec)
    start = len(prompt_ids)
    if full.ids[:start] != list(prompt_ids):
        raise MacftError(f"{row.where}: the chat template renders the prompt differently "
                         f"when an answer follows it")
    mask = [0] * start + list(full.mask[start:])
    return Encoded(list(full.ids), mask)


def encode_pair(row: Row, tokenizer, spec: DataSpec) -> Pair:
    messages = _conversation(row)
    chosen, rejected = _answer(row, "chosen"), _answer(row, "rejected")
    no_prompt_loss = dataclasses.replace(spec, train_on_prompt=False)
    return Pair(_side(row, messages, chosen, tokenizer, no_prompt_loss),
                _side(row, messages, rejected, tokenizer, no_prompt_loss))


def pair_prompt(row: Row, tokenizer, spec: DataSpec) -> tuple[list[int], str]:
    """A pair's prompt ids for generation (as training renders it) and its chosen answer."""
    chosen = _answer(row, "chosen")
    chat = Row(row.line, {"messages": _conversation(row)
                          + [{"role": "assistant", "content": chosen}]}, row.source)
    ids, _ = prompt_and_reference(chat, "chat", tokenizer, spec)
    return list(ids), chosen


def _fit(enc: Encoded, max_length: int) -> Encoded | None:
    if len(enc.ids) <= max_length:
        return enc
    cut = Encoded(enc.ids[:max_length], enc.mask[:max_length])
    return cut if any(cut.mask) else None


def encode_pairs(rows, tokenizer, spec: DataSpec, path) -> PairSet:
    if not rows:
        raise MacftError(f"{path}: no rows")
    stats = EncodeStats(total=len(rows))
    pairs = []
    for row in rows:
        pair = encode_pair(row, tokenizer, spec)
        longest = max(len(pair.chosen.ids), len(pair.rejected.ids))
        if longest > spec.max_length:
            if spec.overlong == "drop":
                stats.dropped_overlong += 1
                continue
            chosen, rejected = _fit(pair.chosen, spec.max_length), _fit(pair.rejected,
                                                                         spec.max_length)
            if chosen is None or rejected is None:
                stats.dropped_no_loss += 1
                continue
            pair = Pair(chosen, rejected)
            stats.truncated += 1
        stats.kept += 1
        for enc in (pair.chosen, pair.rejected):
            stats.tokens += len(enc.ids)
            stats.trained_tokens += sum(enc.mask)
        pairs.append(pair)
    return PairSet(pairs, stats)


@dataclass(frozen=True)
class UnpairedSet:
    """KTO rows as pairs: ``chosen`` is (prompt i, completion i), ``rejected`` the mismatched
    (prompt i, completion of row ``partner[i]``) whose log-ratios estimate the KL term."""

    pairs: list[Pair]
    desirable: np.ndarray      # (n,) bool: the row's label
    stats: EncodeStats


def _label(row: Row) -> bool:
    if "label" not in row.data or row.data["label"] is None:
        raise MacftError(f"{row.where}: missing key 'label' (true for a desirable completion, "
                         f"false for an undesirable one)")
    value = row.data["label"]
    if not isinstance(value, bool):
        raise MacftError(f"{row.where}: key 'label' must be true or false, got {value!r}")
    return value


def mismatch_order(n: int, seed: int) -> np.ndarray:
    """partner[i] != i (for n > 1): each row's prompt is paired with another row's completion.

    A seeded cycle over a shuffled order: neighbouring rows in a file often share a prompt (one
    good and one bad completion), which a plain shift by one would pair back together.
    """
    order = np.random.default_rng(seed).permutation(n)
    partner = np.empty(n, dtype=np.int64)
    partner[order] = np.roll(order, -1)
    return partner


def encode_unpaired(rows, tokenizer, spec: DataSpec, path, seed: int) -> UnpairedSet:
    """Rows ``{prompt | messages, completion, label}`` for KTO, with their mismatched pairs."""
    if not rows:
        raise MacftError(f"{path}: no rows")
    no_prompt_loss = dataclasses.replace(spec, train_on_prompt=False)
    parsed = [(row, _conversation(row), _answer(row, "completion"), _label(row)) for row in rows]
    partner = mismatch_order(len(parsed), seed)
    stats = EncodeStats(total=len(rows))
    pairs, labels = [], []
    for i, (row, messages, completion, label) in enumerate(parsed):
        own = _side(row, messages, completion, tokenizer, no_prompt_loss)
        if len(own.ids) > spec.max_length:
            if spec.overlong == "drop":
                stats.dropped_overlong += 1
                continue
            own = _fit(own, spec.max_length)
            if own is None:
                stats.dropped_no_loss += 1
                continue
            stats.truncated += 1
        other = _side(row, messages, parsed[partner[i]][2], tokenizer, no_prompt_loss)
        other = _fit(other, spec.max_length) or own   # only an estimate: cut, never dropped
        stats.kept += 1
        stats.tokens += len(own.ids)
        stats.trained_tokens += sum(own.mask)
        pairs.append(Pair(own, other))
        labels.append(label)
    return UnpairedSet(pairs, np.array(labels, dtype=bool), stats)


@dataclass
class PairBatch:
    batch: Batch               # 2B rows: the B chosen sequences, then the B rejected ones
    index: np.ndarray          # (B,) pair indices into the set (for cached reference log-probs)


class PairBatcher:
    """Batches of ``batch_size`` pairs in an order that is a pure function of (seed, step)."""

    def __init__(self, pairs: list[Pair], batch_size: int, seed: int, shuffle: bool = True,
                 pad_id: int = 0, max_length: int = 1 << 30):
        if not pairs:
            raise MacftError("no preference pairs left to batch (all were dropped?)")
        self.n = len(pairs)
        chosen = make_sequences([p.chosen for p in pairs], max_length, False)
        rejected = make_sequences([p.rejected for p in pairs], max_length, False)
        self._seqs = Batcher(chosen + rejected, batch_size, seed, shuffle=False, pad_id=pad_id)
        self.batch_size = min(batch_size, self.n)
        self.seed = seed
        self.shuffle = shuffle
        self.batches_per_epoch = max(1, self.n // self.batch_size)
        self.sequences = chosen   # one entry per pair, for counting

    def order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.n)
        return np.random.default_rng(self.seed + epoch).permutation(self.n)

    def _collate(self, idx: np.ndarray) -> PairBatch:
        seqs = [self._seqs.sequences[i] for i in idx]
        seqs += [self._seqs.sequences[self.n + i] for i in idx]
        return PairBatch(self._seqs.collate(seqs), np.asarray(idx, dtype=np.int64))

    def batch(self, i: int) -> PairBatch:
        epoch, j = divmod(i, self.batches_per_epoch)
        idx = self.order(epoch)[j * self.batch_size:(j + 1) * self.batch_size]
        return self._collate(idx)

    def longest(self, rows: int) -> PairBatch:
        """The ``rows`` pairs whose longer answer is longest (the worst case a run can meet)."""
        seqs = self._seqs.sequences
        lengths = [max(len(seqs[i].ids), len(seqs[self.n + i].ids)) for i in range(self.n)]
        return self._collate(np.argsort(lengths, kind="stable")[-rows:])

    def eval_count(self) -> int:
        """The number of batches ``iter_eval`` yields."""
        return -(-self.n // self.batch_size)

    def iter_eval(self):
        for start in range(0, self.n, self.batch_size):
            yield self._collate(np.arange(start, min(start + self.batch_size, self.n)))
