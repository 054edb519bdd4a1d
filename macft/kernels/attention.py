"""Attention for training: causal, grouped-query heads, and packed-sequence segment masks.

The reference is plain MLX ops. ``segment_mask`` builds the block-diagonal causal mask that
packing needs: a token attends only to earlier tokens of its own example. Rotary embeddings
encode relative positions only, so with this mask a packed example computes the same scores as
the example alone (no attention or position leaks between examples).
"""

from __future__ import annotations

import mlx.core as mx


def segment_mask(segments: mx.array) -> mx.array:
    """(B, T) segment ids -> (B, 1, T, T) boolean mask: same segment and causal.

    Padding carries its own id (-1); each padding row still sees itself, so no row is empty.
    """
    t = segments.shape[-1]
    causal = mx.arange(t)[:, None] >= mx.arange(t)[None, :]
    same = segments[:, :, None] == segments[:, None, :]
    return (same & causal)[:, None]


def reference(q, k, v, scale: float, mask=None):
    """softmax(q k^T * scale + mask) v with q (B, Hq, T, D), k/v (B, Hkv, S, D).

    ``mask`` is None, "causal", a boolean mask (True = attend) or an additive float mask,
    broadcastable to (B, Hq, T, S). Grouped-query heads are handled by reshaping the queries
    into (B, Hkv, Hq/Hkv, T, D) rather than repeating keys and values.
    """
    b, hq, t, d = q.shape
    hkv, s = k.shape[1], k.shape[2]
    rep = hq // hkv
    qg = (q * scale).reshape(b, hkv, rep, t, d)
    scores = qg @ k[:, :, None].swapaxes(-1, -2)          # (B, Hkv, rep, T, S)
    if isinstance(mask, str) and mask == "causal":
        offset = s - t
        mask = (mx.arange(t)[:, None] + offset) >= mx.arange(s)[None, :]
    if mask is not None:
        if mask.ndim == 4:  # (B or 1, Hq or 1, T, S) -> grouped layout
            mb, mh = mask.shape[0], mask.shape[1]
            mask = mask.reshape(mb, mh // rep if mh > 1 else 1, rep if mh > 1 else 1, t, s)
        if mask.dtype == mx.bool_:
            scores = mx.where(mask, scores, mx.array(-mx.inf, scores.dtype))
        else:
            scores = scores + mask.astype(scores.dtype)
    weights = mx.softmax(scores.astype(mx.float32), axis=-1).astype(v.dtype)
    out = weights @ v[:, :, None]                          # (B, Hkv, rep, T, D)
    return out.reshape(b, hq, t, d)
