"""Non-finite weights (NaN, +-Inf): found by name, so nothing non-finite is saved or exported.

Used by the training loop (before every checkpoint, best adapter and final adapter) and by
export and fuse (before a GGUF or a fused folder is written).
"""

from __future__ import annotations

import math

import mlx.core as mx
from mlx.utils import tree_flatten

from macft.errors import NonFiniteError


def all_finite(tree) -> mx.array:
    """A lazy scalar: whether every floating-point leaf of ``tree`` is finite."""
    checks = [mx.all(mx.isfinite(v)) for _, v in _float_leaves(tree)]
    return mx.all(mx.stack(checks)) if checks else mx.array(True)


def first_nonfinite(tree) -> str | None:
    """The name of the first leaf holding a NaN or an Inf (None: all finite)."""
    leaves = _float_leaves(tree)
    flags = [mx.all(mx.isfinite(v)) for _, v in leaves]
    mx.eval(flags)
    return next((name for (name, _), ok in zip(leaves, flags) if not ok.item()), None)


def check(tree, where: str) -> None:
    """``NonFiniteError`` naming the first non-finite tensor of ``tree`` (``where``: what it is
    part of, e.g. a file or a run folder)."""
    name = first_nonfinite(tree)
    if name is not None:
        raise NonFiniteError(f"{where}: tensor '{name}' holds NaN or Inf values; refusing to "
                             "write non-finite weights")


def is_finite(value: float) -> bool:
    return math.isfinite(value)


def _float_leaves(tree) -> list[tuple[str, mx.array]]:
    items = tree.items() if isinstance(tree, dict) and all(
        isinstance(v, mx.array) for v in tree.values()) else tree_flatten(tree)
    return [(k, v) for k, v in items
            if isinstance(v, mx.array) and mx.issubdtype(v.dtype, mx.inexact)]
