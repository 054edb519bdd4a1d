"""Custom ops, one per module: a reference in plain MLX ops beside each device kernel.

``mode`` is the recipe's ``kernels`` switch, read by every op's dispatcher:
- "auto": a device kernel (Metal) where one applies and passed its parity check on this
  device (``verify``: run once, cached), else the op's reference;
- "device": the device kernel wherever one applies, unchecked (for those who want it);
- "reference": always the reference in plain MLX ops (memory-bounded, any backend);
- "stock": MLX's own ops (``scaled_dot_product_attention``, full logits then cross-entropy),
  for comparison.
"""

from __future__ import annotations

import contextlib
import contextvars

MODES = ("auto", "device", "reference", "stock")

_MODE: contextvars.ContextVar[str] = contextvars.ContextVar("macft_kernels", default="auto")


def mode() -> str:
    return _MODE.get()


@contextlib.contextmanager
def using(value: str):
    """Within this block, dispatchers use ``value``."""
    if value not in MODES:
        raise ValueError(f"kernels: {value!r} is not one of {', '.join(MODES)}")
    token = _MODE.set(value)
    try:
        yield
    finally:
        _MODE.reset(token)
