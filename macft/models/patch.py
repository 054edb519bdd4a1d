"""Patches applied to mlx-lm models at load time (the zoo's model files are not forked).

Each mlx-lm model module calls ``scaled_dot_product_attention`` from ``mlx_lm.models.base``.
``install`` replaces that name in the model's own module with ``_attention``, which sends
causal training attention (with the packed-sequence segments set by ``segments(...)``) to
``kernels.attention.attention``, the dispatcher of the recipe's ``kernels`` switch.
Generation with a KV cache and any other mask keep mlx-lm's original function. Where the
module uses mlx-lm's ``swiglu``, it becomes ``kernels.swiglu``'s (the sigmoid kept for the
backward) unless the recipe says ``kernels: stock``.
"""

from __future__ import annotations

import contextlib
import contextvars
import sys

import mlx.nn as nn

from macft.kernels import attention as attn

_SEGMENTS: contextvars.ContextVar = contextvars.ContextVar("macft_segments", default=None)
_ORIGINAL = "_macft_original_sdpa"


@contextlib.contextmanager
def segments(seg: mx.array | None):
    """Within this block, training attention uses the block-diagonal mask of ``seg`` (B, T)."""
    token = _SEGMENTS.set(seg)
    try:
        yield
    finally:
        _SEGMENTS.reset(token)


def _make_attention(original):
    def _attention(queries, keys, values, cache, scale, mask, sinks=None, **kw):
        if cache is not None or sinks is not None or kw:
            return original(queries, keys, values, cache=cache, scale=scale, mask=mask,
                            sinks=sinks, **kw)
        seg = _SEGMENTS.get()
        if seg is not None and seg.shape[-1] != queries.shape[2]:
            seg = None
        causal = isinstance(mask, str) and mask == "causal"
        if causal or (mask is None and seg is not None):
            # Training: the recipe's kernels switch picks MLX's op or the tiled one.
            return attn.attention(queries, keys, values, scale, causal=True, segments=seg)
        if seg is not None:
            # A sliding-window mask (Gemma's local layers past the window) keeps its window.
            same = attn.segment_mask(seg)
            mask = same if mask is None or isinstance(mask, str) else mask & same
        return original(queries, keys, values, cache=None, scale=scale, mask=mask)
    return _attention


def install(model: nn.Module) -> bool:
    """Patch the attention of ``model``'s architecture module; idempotent. False if unknown."""
    module = sys.modules.get(type(model).__module__)
    if module is None or not hasattr(module, "scaled_dot_product_attention"):
        return False
    current = module.scaled_dot_product_attention
    if getattr(current, _ORIGINAL, None) is None:
        patched = _make_attention(current)
        setattr(patched, _ORIGINAL, current)
        module.scaled_dot_product_attention = patched
    gate = getattr(module, "swiglu", None)      # llama, qwen2/3, qwen3_moe, ...
    if gate is not None and getattr(gate, _ORIGINAL, None) is None:
        from macft.kernels import swiglu

        patched = swiglu.make(gate)
        setattr(patched, _ORIGINAL, gate)
        module.swiglu = patched
    return True
