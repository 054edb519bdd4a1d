"""Quantized matmuls for frozen QLoRA bases: ``x @ dequantize(w).T``, alone or with a LoRA path.

On the CPU, MLX's ``quantized_matmul`` was measured here at ~3 GFLOP/s against ~217 GFLOP/s
for dequantize-then-float32-matmul on OpenBLAS, so the CPU path dequantizes the weight (in row
blocks when it is large, to bound the transient float copy) and lets BLAS do the product. On a
GPU MLX's own fused ``quantized_matmul`` is used.

``qlora_linear`` is a LoRA layer over such a base, ``x W^T + scale (x A) B``, with its own VJP
(gradients for x, A and B; none for the frozen base). Its reference dequantizes (or takes the
layer's cached float weight) and uses BLAS; on Metal two kernels do the quantized product and
add the rank-r term in the same pass: ``qlora_forward`` for y and ``qlora_input_grad`` for
``dx = g W + scale (g B^T) A^T``. The (N x r) projections ``x A`` and ``g B^T`` that feed them
are ordinary MLX matmuls.
"""

from __future__ import annotations

import mlx.core as mx

from macft.kernels.metal import MetalKernel

# Above this many weight elements, dequantize in row blocks (64M float32 = 256 MB).
BLOCK_ELEMENTS = 1 << 26


def long_matmul(a, b):
    """``a @ b`` for a product whose inner dimension is the long one (a gradient summed over
    tokens or over the vocabulary). OpenBLAS on this 2-core CPU runs such a product 3-20x
    slower when ``a`` has fewer rows than ``b`` has columns than the transposed product
    (measured: (16 x 2048) @ (2048 x 576) 21.7 ms vs 0.95 ms; (512 x 49152) @ (49152 x 576)
    22 vs 86 GFLOP/s), so it computes ``(b^T a^T)^T`` then."""
    if a.shape[0] < b.shape[1]:
        return (b.T @ a.T).T
    return a @ b


def dequantized(w, scales, biases, group_size: int, bits: int, dtype=mx.float32, mode="affine"):
    return mx.dequantize(w, scales, biases, group_size, bits, mode).astype(dtype)


def _row_blocks(w, bits: int):
    rows, cols = w.shape[0], w.shape[1] * 32 // bits
    step = rows if rows * cols <= BLOCK_ELEMENTS else max(1, BLOCK_ELEMENTS // cols)
    return [(i, min(rows, i + step)) for i in range(0, rows, step)]


def reference(x, w, scales, biases, group_size: int, bits: int, mode="affine"):
    """Dequantize then matmul: the portable path, fastest on CPU with a real BLAS."""
    parts = [x @ dequantized(w[i:j], scales[i:j], biases[i:j] if biases is not None else None,
                             group_size, bits, x.dtype, mode).T
             for i, j in _row_blocks(w, bits)]
    return parts[0] if len(parts) == 1 else mx.concatenate(parts, axis=-1)


def reference_t(g, w, scales, biases, group_size: int, bits: int, mode="affine"):
    """``g @ dequantize(w)`` (the input gradient of ``reference``), in the same row blocks."""
    out = None
    for i, j in _row_blocks(w, bits):
        part = g[..., i:j] @ dequantized(w[i:j], scales[i:j],
                                         biases[i:j] if biases is not None else None,
                                         group_size, bits, g.dtype, mode)
        out = part if out is None else out + part
    return out


def quantized_matmul(x, w, scales, biases, group_size: int, bits: int, mode="affine"):
    """Dispatch: the reference on CPU, MLX's fused kernel elsewhere."""
    if mx.default_device() == mx.cpu:
        return reference(x, w, scales, biases, group_size, bits, mode)
    return mx.quantized_matmul(x, w, scales, biases, transpose=True, group_size=group_size,
                               bits=bits, mode=mode)


# ----- QLoRA linear: Metal kernels ------------------------------------------------------------
# MLX's affine format: each uint32 of ``w`` packs 32/BITS values, lowest bits first; a group of
# GS consecutive inputs shares one scale and one bias, value = scale * q + bias. A word never
# straddles two groups (GS >= 32 >= values per word).

_FORWARD = MetalKernel(
    name="macft_qlora_forward",
    inputs=(("x", "const device T*"), ("w", "const device uint32_t*"),
            ("scales", "const device T*"), ("biases", "const device T*"),
            ("xa", "const device T*"), ("lora_b", "const device T*")),
    outputs=(("y", "device T*"),),
    templates=(("T", "float"), ("BITS", "4"), ("GS", "64")),
    source="""
    // One simdgroup per output (row n, column o): lanes take every 32nd packed word of w's row
    // o, so x's row is read in order across the lanes; the partial sums meet in simd_sum.
    // sum_k x_k (s q_k + b) = s sum_k x_k q_k + b sum_k x_k, so a word costs one scale and bias.
    constexpr int PER_WORD = 32 / BITS;
    constexpr uint MASK = (1u << BITS) - 1u;
    uint lane = thread_position_in_grid.x;
    uint o = thread_position_in_grid.y;
    uint n = thread_position_in_grid.z;
    int K = x_shape[1];
    int O = w_shape[0];
    int words = w_shape[1];
    int groups = scales_shape[1];
    int R = lora_b_shape[0];
    const device T* xr = x + size_t(n) * K;
    const device uint32_t* wr = w + size_t(o) * words;
    float acc = 0.0f;
    for (int j = int(lane); j < words; j += 32) {
        uint32_t word = wr[j];
        int k0 = j * PER_WORD;
        int g = k0 / GS;
        float xq = 0.0f;
        float xs = 0.0f;
        for (int i = 0; i < PER_WORD; ++i) {
            float xv = float(xr[k0 + i]);
            xq += xv * float((word >> (BITS * i)) & MASK);
            xs += xv;
        }
        acc += float(scales[size_t(o) * groups + g]) * xq
             + float(biases[size_t(o) * groups + g]) * xs;
    }
    acc = simd_sum(acc);
    if (lane == 0) {
        // The rank-r term: xa already holds scale * (x A) for this row.
        for (int r = 0; r < R; ++r) {
            acc += float(xa[size_t(n) * R + r]) * float(lora_b[size_t(r) * O + o]);
        }
        y[size_t(n) * O + o] = T(acc);
    }
""")

_INPUT_GRAD = MetalKernel(
    name="macft_qlora_input_grad",
    inputs=(("grad", "const device T*"), ("w", "const device uint32_t*"),
            ("scales", "const device T*"), ("biases", "const device T*"),
            ("gb", "const device T*"), ("lora_a", "const device T*")),
    outputs=(("dx", "device T*"),),
    templates=(("T", "float"), ("BITS", "4"), ("GS", "64")),
    source="""
    // dx = g W + gb A^T. One simdgroup per (row n, packed word j): it owns the PER_WORD inputs
    // of that word, the lanes split the O outputs, and simd_sum merges each input's sum.
    constexpr int PER_WORD = 32 / BITS;
    constexpr uint MASK = (1u << BITS) - 1u;
    uint lane = thread_position_in_grid.x;
    uint j = thread_position_in_grid.y;
    uint n = thread_position_in_grid.z;
    int O = w_shape[0];
    int words = w_shape[1];
    int groups = scales_shape[1];
    int R = lora_a_shape[1];
    int K = words * PER_WORD;
    int g = int(j) * PER_WORD / GS;
    float acc[PER_WORD];
    for (int i = 0; i < PER_WORD; ++i) {
        acc[i] = 0.0f;
    }
    for (int o = int(lane); o < O; o += 32) {
        float gv = float(grad[size_t(n) * O + o]);
        uint32_t word = w[size_t(o) * words + j];
        float s = float(scales[size_t(o) * groups + g]) * gv;
        float b = float(biases[size_t(o) * groups + g]) * gv;
        for (int i = 0; i < PER_WORD; ++i) {
            acc[i] += s * float((word >> (BITS * i)) & MASK) + b;
        }
    }
    for (int i = 0; i < PER_WORD; ++i) {
        acc[i] = simd_sum(acc[i]);
    }
    if (lane == 0) {
        for (int i = 0; i < PER_WORD; ++i) {
            int k = int(j) * PER_WORD + i;
            float lo = 0.0f;
            for (int r = 0; r < R; ++r) {
                lo += float(gb[size_t(n) * R + r]) * float(lora_a[size_t(k) * R + r]);
            }
            dx[size_t(n) * K + k] = T(acc[i] + lo);
        }
    }
""")

METAL_KERNELS = [_FORWARD, _INPUT_GRAD]


def _metal_forward(x2, w, scales, biases, xa, lora_b, group_size: int, bits: int):
    n, out = x2.shape[0], w.shape[0]
    dtype = x2.dtype
    (y,) = _FORWARD.build()(
        inputs=[x2, w, scales.astype(dtype), biases.astype(dtype), xa.astype(dtype),
                lora_b.astype(dtype)],
        template=[("T", dtype), ("BITS", bits), ("GS", group_size)],
        grid=(32, out, n), threadgroup=(32, 1, 1),
        output_shapes=[(n, out)], output_dtypes=[dtype])
    return y


def _metal_input_grad(g2, w, scales, biases, gb, lora_a, group_size: int, bits: int):
    n, words = g2.shape[0], w.shape[1]
    dtype = g2.dtype
    (dx,) = _INPUT_GRAD.build()(
        inputs=[g2, w, scales.astype(dtype), biases.astype(dtype), gb.astype(dtype),
                lora_a.astype(dtype)],
        template=[("T", dtype), ("BITS", bits), ("GS", group_size)],
        grid=(32, words, n), threadgroup=(32, 1, 1),
        output_shapes=[(n, words * 32 // bits)], output_dtypes=[dtype])
    return dx


# ----- QLoRA linear: the op -------------------------------------------------------------------

def qlora_linear(x, w, scales, biases, lora_a, lora_b, scale: float, group_size: int, bits: int,
                 dropped=None, dense=None, kernel: bool = False):
    """``x @ dequantize(w).T + scale * (dropped @ lora_a) @ lora_b`` with a custom VJP.

    ``dropped``: the low-rank path's input when dropout changed it (else ``x``); its gradient
    flows back through the dropout. ``dense``: the base already dequantized (the layer's cached
    copy), used instead of dequantizing on each call. ``kernel``: the Metal kernels (GPU only,
    affine with biases, no dropout).
    """
    shape = x.shape
    separate = dropped is not None
    if kernel and (separate or biases is None or bits not in (2, 4, 8)):
        kernel = False      # the kernels read whole values per word and need the affine biases

    def base(x2):
        if dense is not None:
            return x2 @ dense.T
        return reference(x2, w, scales, biases, group_size, bits)

    def base_t(g2):
        if dense is not None:
            return g2 @ dense
        return reference_t(g2, w, scales, biases, group_size, bits)

    def flat(a):
        return a.reshape(-1, a.shape[-1])

    @mx.custom_function
    def f(x, a, b, *rest):                          # rest: (dropped,) when dropout acts
        x2 = flat(x)
        xa = (flat(rest[0] if rest else x) @ a) * scale     # scale on (N x r), not (N x out)
        if kernel:
            y = _metal_forward(x2, w, scales, biases, xa, b, group_size, bits)
        else:
            y = mx.addmm(base(x2), xa.astype(x2.dtype), b.astype(x2.dtype))
        return y.reshape(*shape[:-1], -1), xa

    @f.vjp
    def f_vjp(primals, cotangents, outputs):
        x, a, b, *rest = primals
        g2 = flat(cotangents[0])
        xa = outputs[1]
        gb = (g2 @ b.T.astype(g2.dtype)) * scale    # scale * g B^T, (N x r)
        da = (flat(rest[0] if rest else x).T @ gb).astype(a.dtype)
        db = long_matmul(xa.T.astype(g2.dtype), g2).astype(b.dtype)
        gb, at = gb.astype(g2.dtype), a.T.astype(g2.dtype)
        if kernel:
            dx = _metal_input_grad(g2, w, scales, biases, gb, a, group_size, bits)
        elif rest:                                  # the low-rank part goes to the dropout
            return base_t(g2).reshape(shape), da, db, (gb @ at).reshape(shape)
        else:
            dx = mx.addmm(base_t(g2), gb, at)
        return dx.reshape(shape), da, db

    return f(x, lora_a, lora_b, *((dropped,) if separate else ()))[0]
