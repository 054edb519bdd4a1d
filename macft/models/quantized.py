"""Quantized layers that route their matmul through ``kernels.qmatmul`` (fast on CPU too).

They subclass MLX's quantized layers, so mlx-lm's LoRA/DoRA wrappers, fusing and saving treat
them exactly like the originals; ``use_fast_quantized`` swaps the class of existing modules in
place (no copy of the weights).
"""

from __future__ import annotations

import contextlib
import contextvars

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.tuner.lora import LoRALinear

from macft import env, kernels
from macft.kernels import cross_entropy, verify
from macft.kernels.qmatmul import dequantized, qlora_linear, quantized_matmul

# On the CPU, dequantizing a frozen weight on every call costs more than the matmul itself for
# small batches (generation ran at ~1 token/s that way). Frozen bases are therefore dequantized
# once and kept in float32 while the cached total stays under this budget; larger models fall
# back to dequantizing per call. Cached copies live under "_" keys, which MLX leaves out of
# parameters(), so they are never trained or saved.
CACHE_BUDGET_BYTES = int(env.get("MACFT_DEQUANT_CACHE_MB")) << 20
_cached_bytes = 0


# Inside a compiled step the arrays are tracers: a copy cannot be made (no eval) and identity
# with the source weight cannot be checked. ``frozen_caches`` says the bases do not change
# there: the copies made by ``warm`` beforehand are used as they are.
_FROZEN: contextvars.ContextVar[bool] = contextvars.ContextVar("macft_frozen_dq", default=False)


@contextlib.contextmanager
def frozen_caches():
    token = _FROZEN.set(True)
    try:
        yield
    finally:
        _FROZEN.reset(token)


def warm(model: nn.Module, dtype) -> int:
    """Make the float copies of every affine quantized layer now (within the budget), before a
    compiled step that cannot make them; return how many exist."""
    count = 0
    for _, module in model.named_modules():
        if (isinstance(module, (nn.QuantizedLinear, nn.QuantizedEmbedding))
                and getattr(module, "mode", "affine") == "affine"):
            count += _cached_float(module, dtype) is not None
    return count


def _cached_float(module, dtype):
    global _cached_bytes
    w = module["weight"]
    hit = module.get("_dq")
    if hit is not None and hit.dtype == dtype and (_FROZEN.get() or module.get("_dq_src") is w):
        return hit
    if _FROZEN.get():
        return None
    rows, cols = w.shape[0], w.shape[1] * 32 // module.bits
    size = rows * cols * dtype.size
    if hit is None and _cached_bytes + size > CACHE_BUDGET_BYTES:
        return None
    full = dequantized(w, module["scales"], module.get("biases"), module.group_size,
                       module.bits, dtype, getattr(module, "mode", "affine"))
    mx.eval(full)
    if hit is None:
        _cached_bytes += size
    module["_dq"], module["_dq_src"] = full, w
    return full


def cached_bytes() -> int:
    """Bytes of float copies counted against ``CACHE_BUDGET_BYTES`` (this process)."""
    return _cached_bytes


def drop_caches(model: nn.Module) -> int:
    """Drop the float copies held by ``model``'s layers and take them off the count (a run does
    this when it ends, so the next run has the whole budget); return the bytes dropped."""
    global _cached_bytes
    dropped = 0
    for _, module in model.named_modules():
        hit = module.get("_dq")
        if hit is not None:
            dropped += hit.nbytes
            del module["_dq"], module["_dq_src"]
    _cached_bytes = max(_cached_bytes - dropped, 0)
    return dropped


cross_entropy.use_float_copies(_cached_float)   # the loss's head reuses these copies


def _matmul(module, x):
    if mx.default_device() == mx.cpu:
        full = _cached_float(module, x.dtype)
        if full is not None:
            return x @ full.T
    return quantized_matmul(x, module["weight"], module["scales"], module.get("biases"),
                            module.group_size, module.bits, getattr(module, "mode", "affine"))


class FastQuantizedLinear(nn.QuantizedLinear):
    def __call__(self, x):
        y = _matmul(self, x)
        if "bias" in self:
            y = y + self["bias"]
        return y


class FastQuantizedEmbedding(nn.QuantizedEmbedding):
    def as_linear(self, x):
        return _matmul(self, x)


class QLoRALinear(LoRALinear):
    """mlx-lm's LoRA layer over a quantized base, computed by ``kernels.qmatmul.qlora_linear``.

    Only the class changes (``use_qlora_kernels`` swaps it in place): the parameters keep
    mlx-lm's names, so saving, loading and ``fuse`` work as for the original.
    """

    def __call__(self, x):
        base = self.linear
        mode = kernels.mode()
        if mode == "stock" or getattr(base, "mode", "affine") != "affine":
            return super().__call__(x)
        dropped = self.dropout(x)           # the same object when dropout is off or p == 0
        on_cpu = mx.default_device() == mx.cpu
        op = verify.pick("qlora", x) or qlora_linear     # a device kernel that passed its check
        y = op(x, base["weight"], base["scales"], base.get("biases"), self.lora_a,
               self.lora_b, self.scale, base.group_size, base.bits,
               dropped=None if dropped is x else dropped,
               dense=_cached_float(base, x.dtype) if on_cpu else None)
        if "bias" in base:
            y = y + base["bias"]
        return y


def use_qlora_kernels(model: nn.Module) -> int:
    """Swap every mlx-lm LoRA layer over a quantized base to ``QLoRALinear``; return how many."""
    swapped = 0
    for _, module in model.named_modules():
        if type(module) is LoRALinear and isinstance(module.linear, nn.QuantizedLinear):
            module.__class__ = QLoRALinear
            swapped += 1
    return swapped


def use_fast_quantized(model: nn.Module) -> int:
    """Swap every plain quantized linear/embedding to the fast subclass; return how many."""
    swapped = 0
    for _, module in model.named_modules():
        if type(module) is nn.QuantizedLinear:
            module.__class__ = FastQuantizedLinear
            swapped += 1
        elif type(module) is nn.QuantizedEmbedding:
            module.__class__ = FastQuantizedEmbedding
            swapped += 1
    return swapped


def is_quantized(model: nn.Module) -> bool:
    return any(isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding))
               for _, m in model.named_modules())


def quantize(model: nn.Module, bits: int, group_size: int) -> None:
    """QLoRA: quantize the linear layers (and embeddings) that are not quantized yet."""
    def pick(path, module):
        if isinstance(module, (nn.QuantizedLinear, nn.QuantizedEmbedding)):
            return False
        if not hasattr(module, "to_quantized"):
            return False
        return module.weight.shape[-1] % group_size == 0
    nn.quantize(model, group_size=group_size, bits=bits, class_predicate=pick)
    mx.eval(model.parameters())
