"""Quantized matmul for frozen QLoRA bases: ``x @ dequantize(w).T``.

On the CPU, MLX's ``quantized_matmul`` was measured here at ~3 GFLOP/s against ~217 GFLOP/s
for dequantize-then-float32-matmul on OpenBLAS, so the CPU path dequantizes the weight (in row
blocks when it is large, to bound the transient float copy) and lets BLAS do the product. On a
GPU MLX's own fused ``quantized_matmul`` is used.
"""

from __future__ import annotations

import mlx.core as mx

# Above this many weight elements, dequantize in row blocks (64M float32 = 256 MB).
BLOCK_ELEMENTS = 1 << 26


def dequantized(w, scales, biases, group_size: int, bits: int, dtype=mx.float32, mode="affine"):
    return mx.dequantize(w, scales, biases, group_size, bits, mode).astype(dtype)


def reference(x, w, scales, biases, group_size: int, bits: int, mode="affine"):
    """Dequantize then matmul: the portable path, fastest on CPU with a real BLAS."""
    rows = w.shape[0]
    cols = w.shape[1] * 32 // bits
    if rows * cols <= BLOCK_ELEMENTS:
        return x @ dequantized(w, scales, biases, group_size, bits, x.dtype, mode).T
    step = max(1, BLOCK_ELEMENTS // cols)
    parts = [x @ dequantized(w[i:i + step], scales[i:i + step], biases[i:i + step],
                             group_size, bits, x.dtype, mode).T
             for i in range(0, rows, step)]
    return mx.concatenate(parts, axis=-1)


def quantized_matmul(x, w, scales, biases, group_size: int, bits: int, mode="affine"):
    """Dispatch: the reference on CPU, MLX's fused kernel elsewhere."""
    if mx.default_device() == mx.cpu:
        return reference(x, w, scales, biases, group_size, bits, mode)
    return mx.quantized_matmul(x, w, scales, biases, transpose=True, group_size=group_size,
                               bits=bits, mode=mode)
