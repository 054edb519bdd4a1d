"""GGUF block encoders: gguf-py's for the 32-element types, macft's own for Q4_K and Q6_K.

gguf-py quantizes F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0 and Q5_1 in numpy (the same rounding as
llama.cpp's reference code) but only dequantizes K-quants, so ``quantize_q4_k`` and
``quantize_q6_k`` are written here from the block layouts. ``affine_exact`` maps an MLX affine
quantized weight onto a GGUF block type without a second rounding when the values allow it.
"""

from __future__ import annotations

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, quants

T = GGMLQuantizationType
QK_K = 256                         # elements in a K-quant super-block
_CHUNK = 8192                      # super-blocks quantized at once (bounds the search's memory)


def block_size(qtype: T) -> int:
    return GGML_QUANT_SIZES[qtype][0]


def fits(cols: int, qtype: T) -> bool:
    """Rows of ``cols`` elements split into whole blocks of ``qtype``."""
    return cols % block_size(qtype) == 0


def nbytes(shape: tuple[int, ...], qtype: T) -> int:
    block, size = GGML_QUANT_SIZES[qtype]
    return int(np.prod(shape, dtype=np.int64)) // block * size


def quantize(x: np.ndarray, qtype: T) -> np.ndarray:
    """Encode float32 ``x`` (rows along the last axis) as ``qtype``; returns the stored array."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if qtype == T.Q4_K:
        return quantize_q4_k(x)
    if qtype == T.Q6_K:
        return quantize_q6_k(x)
    return quants.quantize(x, qtype)


# ---------------------------------------------------------------------------------------------
# Sub-block fits shared by the K-quants


def _round(x: np.ndarray) -> np.ndarray:
    return np.floor(x + 0.5)       # half away from zero for the non-negative codes used here


def _fit_min_scale(x: np.ndarray, nmax: int, steps: int = 21):
    """Per row of ``x`` (..., n): scale >= 0 and min <= 0 with x ~ scale * q + min, q in 0..nmax.

    A small grid over the divisor of the range (nmax - 1 .. nmax + 1) gives the codes; each
    candidate is then refitted by least squares (min clamped to <= 0) and the lowest squared
    error wins. Returns (scale, -min), both non-negative.
    """
    lo = np.minimum(x.min(-1, keepdims=True), 0.0)
    span = x.max(-1, keepdims=True) - lo
    n = x.shape[-1]
    best_err = np.full(lo.shape, np.inf, np.float32)
    best_s, best_m = np.zeros_like(lo), np.zeros_like(lo)
    sx = x.sum(-1, keepdims=True)
    for delta in np.linspace(-1.0, 1.0, steps):
        step = span / (nmax + delta)
        inv = np.divide(1.0, step, out=np.zeros_like(step), where=step > 0)
        q = np.clip(_round((x - lo) * inv), 0, nmax)
        sq, sqq, sxq = q.sum(-1, keepdims=True), (q * q).sum(-1, keepdims=True), \
            (x * q).sum(-1, keepdims=True)
        det = n * sqq - sq * sq
        s = np.divide(n * sxq - sx * sq, det, out=np.zeros_like(det), where=det > 0)
        m = (sx - s * sq) / n
        # A positive offset cannot be stored (the min is subtracted): refit the scale alone.
        pos = m > 0
        s = np.where(pos, np.divide(sxq, sqq, out=np.zeros_like(sqq), where=sqq > 0), s)
        m = np.where(pos, 0.0, m)
        s = np.maximum(s, 0.0)
        err = ((x - (s * q + m)) ** 2).sum(-1, keepdims=True)
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best_s, best_m = np.where(better, s, best_s), np.where(better, m, best_m)
    return best_s[..., 0], -best_m[..., 0]


def _fit_symmetric(x: np.ndarray, nneg: int, steps: int = 13):
    """Per row of ``x`` (..., n): signed scale with x ~ scale * q, q in -nneg .. nneg - 1.

    The value of largest magnitude is mapped near -nneg (the longer side of the code range;
    the scale's sign absorbs the direction); the divisor is searched around nneg and each
    candidate refitted by least squares.
    """
    idx = np.abs(x).argmax(-1)[..., None]
    peak = np.take_along_axis(x, idx, -1)
    best_err = np.full(peak.shape, np.inf, np.float32)
    best_s = np.zeros_like(peak)
    for delta in np.linspace(-1.5, 1.5, steps):
        s0 = peak / -(nneg + delta)
        inv = np.divide(1.0, s0, out=np.zeros_like(s0), where=s0 != 0)
        q = np.clip(np.rint(x * inv), -nneg, nneg - 1)
        sqq = (q * q).sum(-1, keepdims=True)
        s = np.divide((x * q).sum(-1, keepdims=True), sqq, out=np.zeros_like(sqq), where=sqq > 0)
        err = ((x - s * q) ** 2).sum(-1, keepdims=True)
        better = err < best_err
        best_err, best_s = np.where(better, err, best_err), np.where(better, s, best_s)
    return best_s[..., 0]


def _f16(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16)


def _chunked(x: np.ndarray, block_bytes: int, encode) -> np.ndarray:
    if x.shape[-1] % QK_K:
        raise ValueError(f"rows of {x.shape[-1]} are not a multiple of {QK_K}")
    blocks = x.reshape(-1, QK_K)
    out = np.empty((blocks.shape[0], block_bytes), np.uint8)
    for start in range(0, blocks.shape[0], _CHUNK):
        out[start:start + _CHUNK] = encode(blocks[start:start + _CHUNK])
    return out.reshape(*x.shape[:-1], -1)


# ---------------------------------------------------------------------------------------------
# Q4_K: 256 values = 8 sub-blocks of 32; value = d * sc[j] * q - dmin * m[j], q in 0..15,
# sc and m 6-bit. Block: d f16, dmin f16, 12 bytes of packed sc/m, 128 bytes of nibbles.


def quantize_q4_k(x: np.ndarray) -> np.ndarray:
    return _chunked(x, 144, _encode_q4_k)


def _encode_q4_k(blocks: np.ndarray) -> np.ndarray:
    n = blocks.shape[0]
    sub = blocks.reshape(n, 8, 32)
    scale, mins = _fit_min_scale(sub, 15)
    d = _f16(scale.max(-1) / 63).astype(np.float32)
    dmin = _f16(mins.max(-1) / 63).astype(np.float32)
    sc = np.clip(_round(np.divide(scale, d[:, None], out=np.zeros_like(scale),
                                  where=d[:, None] > 0)), 0, 63)
    m = np.clip(_round(np.divide(mins, dmin[:, None], out=np.zeros_like(mins),
                                 where=dmin[:, None] > 0)), 0, 63)
    step = (d[:, None] * sc)[..., None]
    offset = (dmin[:, None] * m)[..., None]
    q = np.clip(_round(np.divide(sub + offset, step, out=np.zeros_like(sub), where=step > 0)),
                0, 15).astype(np.uint8)
    sc, m = sc.astype(np.uint8), m.astype(np.uint8)
    packed = np.concatenate([
        (sc[:, :4] & 63) | ((sc[:, 4:] >> 4) << 6),
        (m[:, :4] & 63) | ((m[:, 4:] >> 4) << 6),
        (sc[:, 4:] & 15) | ((m[:, 4:] & 15) << 4),
    ], axis=1)
    pairs = q.reshape(n, 4, 2, 32)                 # byte i of chunk c: sub-block 2c low, 2c+1 high
    qs = (pairs[:, :, 0] | (pairs[:, :, 1] << 4)).reshape(n, 128)
    return np.concatenate([_f16(d)[:, None].view(np.uint8), _f16(dmin)[:, None].view(np.uint8),
                           packed, qs], axis=1)


# ---------------------------------------------------------------------------------------------
# Q6_K: 256 values = 16 sub-blocks of 16; value = d * sc[j] * (q - 32), q 6-bit, sc int8.
# Block: 128 bytes of low nibbles, 64 bytes of high 2-bit pairs, 16 int8 scales, d f16.


def quantize_q6_k(x: np.ndarray) -> np.ndarray:
    return _chunked(x, 210, _encode_q6_k)


def _encode_q6_k(blocks: np.ndarray) -> np.ndarray:
    n = blocks.shape[0]
    sub = blocks.reshape(n, 16, 16)
    scale = _fit_symmetric(sub, 32)
    d = _f16(np.abs(scale).max(-1) / 127).astype(np.float32)
    sc = np.clip(np.rint(np.divide(scale, d[:, None], out=np.zeros_like(scale),
                                   where=d[:, None] > 0)), -128, 127)
    step = (d[:, None] * sc)[..., None]
    q = np.clip(np.rint(np.divide(sub, step, out=np.zeros_like(sub), where=step != 0)), -32, 31)
    q = (q + 32).astype(np.uint8).reshape(n, 256)
    # Element 128h + 64s + b: low nibble in byte 64h + b at shift 4s.
    low = (q & 15).reshape(n, 2, 2, 64)
    ql = (low[:, :, 0] | (low[:, :, 1] << 4)).reshape(n, 128)
    # Element 128h + 32s + b: high two bits in byte 32h + b at shift 2s.
    high = (q >> 4).reshape(n, 2, 4, 32)
    qh = (high[:, :, 0] | (high[:, :, 1] << 2) | (high[:, :, 2] << 4) | (high[:, :, 3] << 6))
    return np.concatenate([ql, qh.reshape(n, 64), sc.astype(np.int8).view(np.uint8),
                           _f16(d)[:, None].view(np.uint8)], axis=1)


# ---------------------------------------------------------------------------------------------
# MLX affine -> GGUF blocks without rounding again


def _fp16_exact(a: np.ndarray) -> bool:
    return bool(np.array_equal(a.astype(np.float16).astype(np.float32), a.astype(np.float32)))


def _codes(weight: np.ndarray, bits: int) -> np.ndarray:
    """Unpack MLX's uint32 words (element k at bits ``bits * k``) to one uint8 code each."""
    raw = np.ascontiguousarray(weight).view(np.uint8)          # little-endian bytes
    if bits == 8:
        return raw
    return np.stack([raw & 15, raw >> 4], axis=-1).reshape(*raw.shape[:-1], -1)


def affine_exact(weight, scales, biases, bits: int, group_size: int, qtype: T):
    """GGUF blocks holding exactly the MLX affine values, or None when ``qtype`` cannot.

    Q4_1 takes any 4-bit weight with fp16 scales/biases and a group of 32k (d = scale,
    m = bias, repeated per 32 elements); Q4_0 needs bias = -8 * scale; Q8_0 needs 8-bit with
    bias = -128 * scale (true for weights imported from those types).
    """
    if group_size % 32 or (qtype, bits) not in ((T.Q4_1, 4), (T.Q4_0, 4), (T.Q8_0, 8)):
        return None
    scales, biases = np.asarray(scales, np.float32), np.asarray(biases, np.float32)
    if not (_fp16_exact(scales) and _fp16_exact(biases)):
        return None
    if qtype == T.Q4_0 and not np.array_equal(biases, scales * np.float32(-8)):
        return None
    if qtype == T.Q8_0 and not np.array_equal(_f16(biases), _f16(scales) * np.float16(-128)):
        return None
    codes = _codes(np.asarray(weight), bits)
    lead, cols = codes.shape[:-1], codes.shape[-1]
    rows = int(np.prod(lead))                      # stacked experts: (experts, out) rows
    blocks = codes.reshape(rows * cols // 32, 32)
    repeat = group_size // 32
    d = _f16(np.repeat(scales.reshape(rows, -1), repeat, axis=1).reshape(-1, 1)).view(np.uint8)
    if qtype == T.Q8_0:
        out = np.concatenate([d, blocks ^ np.uint8(0x80)], axis=1)
    else:
        # GGUF byte j holds element j (low nibble) and element j + 16 (high nibble).
        qs = blocks[:, :16] | (blocks[:, 16:] << 4)
        parts = [d]
        if qtype == T.Q4_1:
            parts.append(_f16(np.repeat(biases.reshape(rows, -1), repeat, axis=1)
                              .reshape(-1, 1)).view(np.uint8))
        out = np.concatenate(parts + [qs], axis=1)
    return out.reshape(*lead, -1)
