"""Prompt rows for GRPO: a prompt to sample from, plus the row's other fields for the rewards.

A row is ``{"prompt": "...", ...}`` or ``{"messages": [...], ...}`` whose last turn is not the
assistant's (the model writes that one). Any other key (``answer``, ``reference``, ``labels``)
is kept for the rewards. A bad row is reported as ``file:line: ...`` in one line.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from macft.data.encode import _bos, _check_messages, _has_template, _ids, _render, _with_system
from macft.data.encode import unwrap
from macft.data.rows import Row
from macft.errors import MacftError


@dataclass(frozen=True)
class PromptRow:
    ids: list[int]          # the prompt rendered for generation (chat template, generation turn)
    text: str               # the prompt as a person reads it (Sample events)
    row: Row                # the data row: its fields go to the rewards, its place to errors


def _messages(row: Row) -> list[dict]:
    _check_messages(row)
    messages = row.data["messages"]
    if messages[-1]["role"] == "assistant":
        raise MacftError(f"{row.where}: a prompt row's messages must not end with an "
                         "assistant turn (the model writes it)")
    return messages


def encode_prompt(row: Row, tokenizer, spec) -> PromptRow:
    tok = unwrap(tokenizer)
    data = row.data
    if data.get("prompt") is not None:
        text = data["prompt"]
        if not isinstance(text, str) or not text.strip():
            raise MacftError(f"{row.where}: key 'prompt' must be a non-empty string")
        messages = [{"role": "user", "content": text}]
    elif data.get("messages") is not None:
        messages = _messages(row)
        text = messages[-1].get("content") or ""
    else:
        found = ", ".join(sorted(map(str, data))) or "none"
        raise MacftError(f"{row.where}: a prompt row needs key 'prompt' or 'messages' "
                         f"(found: {found})")
    if _has_template(tok):
        ids = _ids(tok, _render(tok, _with_system(messages, spec), True, row))
    elif "messages" in data and data.get("prompt") is None:
        raise MacftError(f"{row.where}: the tokenizer has no chat template, which 'messages' "
                         "rows need (use 'prompt' rows)")
    else:
        ids = _bos(tok) + _ids(tok, text)
    return PromptRow(ids, text, row)


def encode_prompts(rows: list[Row], tokenizer, spec, path) -> tuple[list[PromptRow], str]:
    """Every row as a prompt; rows longer than ``data.max_length`` are dropped (counted)."""
    prompts, dropped = [], 0
    for row in rows:
        p = encode_prompt(row, tokenizer, spec)
        if len(p.ids) > spec.max_length:
            dropped += 1
            continue
        prompts.append(p)
    if not prompts:
        raise MacftError(f"{path}: no prompt within data.max_length ({spec.max_length} "
                         "tokens)")
    summary = f"{len(prompts)} prompts" + (f", {dropped} longer than max_length dropped"
                                           if dropped else "")
    return prompts, summary


@dataclass(frozen=True)
class PromptBatch:
    step: int               # the optimizer step this batch is for
    rollout: int            # the rollout batch it belongs to (updates_per_rollout steps share one)
    index: np.ndarray       # prompt indices
    worst: bool = False     # plan's worst case: every completion runs to max_new_tokens
    shape: tuple = ()       # worst case: (rows, tokens) of the update's batch


class PromptBatcher:
    """Rollout batches of ``per_step`` prompts; ``batch(i)`` depends only on (seed, i).

    ``updates_per_rollout`` consecutive steps share one rollout batch. Epoch ``e`` visits the
    prompts in the order ``default_rng(seed + e).permutation(n)``; a set smaller than a batch
    is used whole.
    """

    def __init__(self, prompts: list[PromptRow], per_step: int, seed: int,
                 updates_per_rollout: int = 1, group: int = 1, max_new: int = 0):
        self.sequences = prompts            # the loop counts "train examples" from this
        self.per_step = min(per_step, len(prompts))
        self.batch_size = self.per_step
        self.seed = seed
        self.updates = updates_per_rollout
        self.group, self.max_new = group, max_new
        self.rollouts_per_epoch = max(1, len(prompts) // self.per_step)
        self.batches_per_epoch = self.rollouts_per_epoch * self.updates

    def order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng(self.seed + epoch).permutation(len(self.sequences))

    def batch(self, i: int) -> PromptBatch:
        rollout = i // self.updates
        epoch, j = divmod(rollout, self.rollouts_per_epoch)
        idx = self.order(epoch)[j * self.per_step:(j + 1) * self.per_step]
        return PromptBatch(i, rollout, idx)

    def longest(self, rows: int) -> PromptBatch:
        """``plan``'s worst case: the longest prompts, every completion as long as allowed
        (rollout batch -1: never stored)."""
        lengths = np.array([len(p.ids) for p in self.sequences])
        idx = np.argsort(lengths, kind="stable")[-self.per_step:]
        shape = (len(idx) * self.group, int(lengths[idx].max()) + self.max_new - 1)
        return PromptBatch(0, -1, idx, True, shape)
