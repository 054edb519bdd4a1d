"""Attention for training: causal, grouped-query heads, and packed-sequence segment masks.

The reference is plain MLX ops. ``segment_mask`` builds the block-diagonal causal mask that
packing needs: a token attends only to earlier tokens of its own example. Rotary embeddings
encode relative positions only, so with this mask a packed example computes the same scores as
the example alone (no attention or position leaks between examples).
"""

from __future__ import annotations

import mlx.core as mx

from macft.kernels import fastexp, verify
from macft.kernels.metal import MetalKernel


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


# ----- memory-bounded attention: tiles over queries and keys, online softmax -------------------
# Tiles on the reference path. One tile covers sequences up to this long, so short sequences
# cost one block; at 4096 tokens the largest transient is (B, H, 512, 512) per tile pair.
Q_TILE = 512
K_TILE = 512


def _tile_mask(i0: int, i1: int, j0: int, j1: int, offset: int, causal: bool, segments):
    """Boolean (B or 1, 1, 1, qi, kj) mask of one tile pair, or None when all of it attends."""
    mask = None
    if causal and j1 - 1 > i0 + offset:          # part of the tile lies above the diagonal
        mask = (mx.arange(i0, i1)[:, None] + offset) >= mx.arange(j0, j1)[None, :]
        mask = mask[None, None, None]
    if segments is not None:
        same = segments[:, i0:i1, None] == segments[:, None, j0:j1]
        same = same[:, None, None]
        mask = same if mask is None else (mask & same)
    return mask


def _key_tiles(i0: int, i1: int, s: int, offset: int, causal: bool, tile: int):
    """Key tiles that query rows [i0, i1) can see (tiles fully above the diagonal are skipped)."""
    end = min(s, i1 + offset) if causal else s
    return [(j0, min(j0 + tile, s)) for j0 in range(0, end, tile)]


def _scores(qi, kj, mask):
    s = qi @ kj.swapaxes(-1, -2)
    if mask is not None:
        s = mx.where(mask, s, mx.array(-mx.inf, s.dtype))
    return s


def tiled(q, k, v, scale: float, causal: bool = True, segments=None,
          q_tile: int = Q_TILE, k_tile: int = K_TILE):
    """Flash-style attention in plain MLX ops, forward and backward, memory O(T x tile).

    q (B, Hq, T, D), k/v (B, Hkv, S, D) with Hq a multiple of Hkv; causal (queries aligned to
    the last T keys) and/or packed ``segments`` (B, T) ids (S == T; -1 = padding, which
    attends to itself). The forward keeps only the output and the per-row log-sum-exp; the
    backward recomputes each tile's probabilities from them.
    """
    b, hq, t, d = q.shape
    hkv, s = k.shape[1], k.shape[2]
    rep = hq // hkv
    offset = s - t
    seg = segments

    def grouped(x):
        return x.reshape(b, hkv, rep, t, d)

    def blocks():
        for i0 in range(0, t, q_tile):
            i1 = min(t, i0 + q_tile)
            yield i0, i1, _key_tiles(i0, i1, s, offset, causal, k_tile)

    @mx.custom_function
    def attend(q, k, v):
        qg = grouped(q * scale)
        kg, vg = k[:, :, None], v[:, :, None]
        outs, lses = [], []
        for i0, i1, tiles in blocks():
            qi = qg[..., i0:i1, :]
            m = acc = l = None
            for j0, j1 in tiles:
                sc = _scores(qi, kg[..., j0:j1, :], _tile_mask(i0, i1, j0, j1, offset, causal,
                                                               seg))
                m_tile = sc.max(-1, keepdims=True)
                m_new = m_tile if m is None else mx.maximum(m, m_tile)
                # A row may see no key of this tile yet (other segment): keep exp finite.
                m_new = mx.where(mx.isinf(m_new), mx.array(0.0, m_new.dtype), m_new)
                p = fastexp.exp_shifted(sc, m_new)
                pv = p @ vg[..., j0:j1, :]
                if m is None:
                    acc, l = pv, p.sum(-1, keepdims=True)
                else:
                    corr = fastexp.exp_shifted(m, m_new)
                    acc = acc * corr + pv
                    l = l * corr + p.sum(-1, keepdims=True)
                m = m_new
            outs.append(acc / l)
            lses.append(m + mx.log(l))
        out = mx.concatenate(outs, axis=-2) if len(outs) > 1 else outs[0]
        lse = mx.concatenate(lses, axis=-2) if len(lses) > 1 else lses[0]
        return out.reshape(b, hq, t, d), lse

    @attend.vjp
    def attend_vjp(primals, cotangents, outputs):
        q, k, v = primals
        dout = grouped(cotangents[0])
        out, lse = outputs
        qg = grouped(q * scale)
        kg, vg = k[:, :, None], v[:, :, None]
        delta = (dout * grouped(out)).sum(-1, keepdims=True)
        dq_blocks = []
        dk = [None] * ((s + k_tile - 1) // k_tile)
        dv = [None] * len(dk)
        last = []          # the previous tile pair's results (see the mx.depends below)
        for i0, i1, tiles in blocks():
            qi, doi = qg[..., i0:i1, :], dout[..., i0:i1, :]
            li, di = lse[..., i0:i1, :], delta[..., i0:i1, :]
            dqi = None
            for j0, j1 in tiles:
                # Each tile pair's probabilities feed three sums (dq, dk, dv); without an order
                # MLX may compute all pairs before any sum and hold every tile at once (T x T).
                # Depending on the previous pair's results runs the pairs one after another.
                if last:
                    qi = mx.depends(qi, last)
                kj, vj = kg[..., j0:j1, :], vg[..., j0:j1, :]
                p = fastexp.exp_shifted(
                    _scores(qi, kj, _tile_mask(i0, i1, j0, j1, offset, causal, seg)), li)
                dp = doi @ vj.swapaxes(-1, -2)
                ds = p * (dp - di)
                n = j0 // k_tile
                dv_part = (p.swapaxes(-1, -2) @ doi).sum(2)
                dk_part = (ds.swapaxes(-1, -2) @ qi).sum(2)
                dv[n] = dv_part if dv[n] is None else dv[n] + dv_part
                dk[n] = dk_part if dk[n] is None else dk[n] + dk_part
                dqi = ds @ kj if dqi is None else dqi + ds @ kj
                last = [dv[n], dk[n], dqi]
            dq_blocks.append(dqi)
        dq = mx.concatenate(dq_blocks, axis=-2) if len(dq_blocks) > 1 else dq_blocks[0]
        # Key tiles no query can see (only with an offset) get zero gradients.
        tile_len = [min(s, j0 + k_tile) - j0 for j0 in range(0, s, k_tile)]
        zeros = [mx.zeros((b, hkv, n, d), k.dtype) for n in tile_len]
        dk = mx.concatenate([x if x is not None else z for x, z in zip(dk, zeros)], axis=2)
        dv = mx.concatenate([x if x is not None else z for x, z in zip(dv, zeros)], axis=2)
        return (dq.reshape(b, hq, t, d) * scale), dk, dv

    return attend(q, k, v)[0]


# Query rows per block of ``blocked`` (measured fastest of 64/96/128/256/512 at T = 512 here).
BLOCK = 128


def blocked(q, k, v, scale: float, causal: bool = True, segments=None, block: int = BLOCK):
    """Attention for short sequences: ``tiled``'s contract, computed a block of query rows at a
    time against only the keys it can see (a causal block skips the keys after its last row),
    and keeping each block's probabilities for the backward instead of recomputing them.

    On the CPU, where ``exp`` costs as much as a matmul, this does about 5/8 of the score work
    of MLX's op at T = 512 (blocks of 128), and one exp per score instead of two (MLX's
    gradient recomputes the softmax), with ``fastexp``'s softmax where it is enabled (the
    compiled step on the CPU). Each key/value head's group of query heads is one product
    (rep x rows, D), not rep broadcast ones, and dK/dV come out summed over the group. Memory
    is that of MLX's op or less: the kept probabilities are the visible part of the (T x S)
    matrix.
    """
    b, hq, t, d = q.shape
    hkv, s = k.shape[1], k.shape[2]
    rep = hq // hkv
    offset = s - t
    rows = [(i0, min(t, i0 + block)) for i0 in range(0, t, block)]
    ends = [min(s, i1 + offset) if causal else s for _, i1 in rows]

    def grouped(x):
        return x.reshape(b, hkv, rep, t, d)

    def rows_of(x, i0, i1):
        # (B, Hkv, rep, T, D) -> the block's rows of every head of a group as one matrix
        # (B, Hkv, rep * rows, D): one product per key/value head instead of rep broadcast ones.
        return x[..., i0:i1, :].reshape(b, hkv, rep * (i1 - i0), d)

    def mask_of(i0, i1, end):
        mask = None
        if causal:
            mask = ((mx.arange(i0, i1)[:, None] + offset) >= mx.arange(end)[None, :])[None, None,
                                                                                   None]
        if segments is not None:
            same = (segments[:, i0:i1, None] == segments[:, None, :end])[:, None, None]
            mask = same if mask is None else (mask & same)
        return mask

    @mx.custom_function
    def attend(q, k, v):
        qg = grouped(q * scale)
        outs, probs = [], []
        for (i0, i1), end in zip(rows, ends):
            sc = rows_of(qg, i0, i1) @ k[:, :, :end].swapaxes(-1, -2)   # (B, Hkv, rep*r, end)
            mask = mask_of(i0, i1, end)
            if mask is not None:
                sc = sc.reshape(b, hkv, rep, i1 - i0, end)
                sc = mx.where(mask, sc, mx.array(-mx.inf, sc.dtype))
                sc = sc.reshape(b, hkv, rep * (i1 - i0), end)
            p = fastexp.softmax(sc.astype(mx.float32), axis=-1).astype(q.dtype)
            outs.append((p @ v[:, :, :end]).reshape(b, hkv, rep, i1 - i0, d))
            probs.append(p)
        out = mx.concatenate(outs, axis=-2) if len(outs) > 1 else outs[0]
        return (out.reshape(b, hq, t, d), *probs)

    @attend.vjp
    def attend_vjp(primals, cotangents, outputs):
        q, k, v = primals
        dout = grouped(cotangents[0])
        qg = grouped(q * scale)
        delta = (dout * grouped(outputs[0])).sum(-1, keepdims=True)
        dq, dk, dv = [], None, None
        for (i0, i1), end, p in zip(rows, ends, outputs[1:]):
            do = rows_of(dout, i0, i1)
            dp = do @ v[:, :, :end].swapaxes(-1, -2)
            ds = p * (dp - delta[..., i0:i1, :].reshape(b, hkv, rep * (i1 - i0), 1))
            dq.append((ds @ k[:, :, :end]).reshape(b, hkv, rep, i1 - i0, d))
            pad = [(0, 0), (0, 0), (0, s - end), (0, 0)]
            # The products over rep * rows sum the group's heads: dk and dv per key head.
            dk_i = mx.pad(ds.swapaxes(-1, -2) @ rows_of(qg, i0, i1), pad)
            dv_i = mx.pad(p.swapaxes(-1, -2) @ do, pad)
            dk = dk_i if dk is None else dk + dk_i
            dv = dv_i if dv is None else dv + dv_i
        dq = mx.concatenate(dq, axis=-2) if len(dq) > 1 else dq[0]
        return dq.reshape(b, hq, t, d) * scale, dk, dv

    return attend(q, k, v)[0]


def attention(q, k, v, scale: float, causal: bool = True, segments=None):
    """The dispatcher: the recipe's ``kernels`` mode picks MLX's own op or one of ours.

    "stock": MLX's ``scaled_dot_product_attention``. "reference": ``tiled`` (memory O(T x
    tile) on every backend). "auto": a device kernel (Metal) where it applies and passed its
    parity check here (``verify``; "device": unchecked); otherwise ``tiled`` once the (T x S)
    probabilities would be large, and ``blocked`` below that (measured faster than MLX's op on
    this CPU: it skips the keys a causal block cannot see and computes each exp once).
    """
    from macft import kernels

    mode = kernels.mode()
    t, s = q.shape[2], k.shape[2]
    if mode in ("auto", "device"):
        device_kernel = verify.pick("attention", q, k)
        if device_kernel is not None:
            return device_kernel(q, k, v, scale, causal, segments)
        if t * s > AUTO_TILED_ABOVE:
            mode = "reference"
        else:
            return blocked(q, k, v, scale, causal, segments)
    if mode == "reference":
        return tiled(q, k, v, scale, causal, segments)
    mask = segment_mask(segments) if segments is not None else ("causal" if causal else None)
    return mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=mask)


# "auto" switches to the tiled path above 1024 x 1024 scores per head.
AUTO_TILED_ABOVE = 1024 * 1024


# ----- Metal kernels: the same algorithm, one simdgroup per query (or key) row -----------------
# Layout (row-contiguous, as mx.fast.metal_kernel passes them): q (B, Hq, T, D), k/v (B, Hkv, S,
# D), seg (B, T) int32 (a (1, 1) dummy without segments), scale (1,) float32. Each lane owns the
# head dims d = lane + 32 * i (i < DL = ceil(D / 32)); keys are visited 32 at a time, one per
# lane, and their probabilities are passed around the simdgroup with simd_shuffle.
HEAD_DIMS = (64, 80, 96, 128)

# Whether query row i may attend to key j: causal (queries aligned to the last T keys) and,
# for packed rows, the same segment id. (A function, not a lambda: MSL has no lambdas.)
_HEADER = """
template <bool CAUSAL, bool HAS_SEG>
inline bool macft_allowed(int i, int j, int offset, const device int32_t* seg, int row0) {
    if (CAUSAL && j > i + offset) {
        return false;
    }
    if (HAS_SEG && seg[row0 + i] != seg[row0 + j]) {
        return false;
    }
    return true;
}
"""

_COMMON = """
    uint lane = thread_index_in_simdgroup;
    int row = int(threadgroup_position_in_grid.x);
    int h = int(threadgroup_position_in_grid.y);
    int b = int(threadgroup_position_in_grid.z);
    int Hq = q_shape[1];
    int NQ = q_shape[2];
    int Hkv = k_shape[1];
    int NK = k_shape[2];
    int rep = Hq / Hkv;
    int offset = NK - NQ;
    float sc = scale[0];
    constexpr int DL = (D + 31) / 32;
"""

_ATTN_FORWARD = MetalKernel(
    name="macft_attn_forward",
    inputs=(("q", "const device T*"), ("k", "const device T*"), ("v", "const device T*"),
            ("seg", "const device int32_t*"), ("scale", "const device float*")),
    outputs=(("out", "device T*"), ("lse", "device float*")),
    templates=(("T", "float"), ("D", "64"), ("CAUSAL", "true"), ("HAS_SEG", "false")),
    header=_HEADER,
    source=_COMMON + """
    // Threadgroup (row, h, b): query row `row` of head h; grid x = NQ * 32, one simdgroup.
    int i = row;
    size_t qoff = (size_t(b * Hq + h) * NQ + i) * D;
    size_t koff = size_t(b * Hkv + h / rep) * NK * D;
    threadgroup float qs[D];
    for (int d = int(lane); d < D; d += 32) {
        qs[d] = float(q[qoff + d]) * sc;
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    float acc[DL];
    for (int c = 0; c < DL; c++) {
        acc[c] = 0.0f;
    }
    float m = -INFINITY;
    float l = 0.0f;
    int end = CAUSAL ? metal::min(NK, i + offset + 1) : NK;
    for (int j0 = 0; j0 < end; j0 += 32) {
        int j = j0 + int(lane);
        float s = -INFINITY;
        if (j < end && macft_allowed<CAUSAL, HAS_SEG>(i, j, offset, seg, b * NQ)) {
            const device T* kr = k + koff + size_t(j) * D;
            s = 0.0f;
            for (int d = 0; d < D; d++) {
                s += qs[d] * float(kr[d]);
            }
        }
        float m_new = metal::max(m, simd_max(s));
        if (m_new == -INFINITY) {
            continue;                       // nothing visible yet (another segment)
        }
        float p = (s == -INFINITY) ? 0.0f : metal::exp(s - m_new);
        float corr = (m == -INFINITY) ? 0.0f : metal::exp(m - m_new);
        l = l * corr + simd_sum(p);
        for (int c = 0; c < DL; c++) {
            acc[c] *= corr;
        }
        int n = metal::min(32, end - j0);
        for (int jj = 0; jj < n; jj++) {
            float pj = simd_shuffle(p, ushort(jj));
            if (pj == 0.0f) {
                continue;
            }
            const device T* vr = v + koff + size_t(j0 + jj) * D;
            for (int c = 0; c < DL; c++) {
                int d = int(lane) + 32 * c;
                if (d < D) {
                    acc[c] += pj * float(vr[d]);
                }
            }
        }
        m = m_new;
    }
    for (int c = 0; c < DL; c++) {
        int d = int(lane) + 32 * c;
        if (d < D) {
            out[qoff + d] = T(acc[c] / l);
        }
    }
    if (lane == 0) {
        lse[(b * Hq + h) * NQ + i] = m + metal::log(l);
    }
""")

_ATTN_DQ = MetalKernel(
    name="macft_attn_backward_dq",
    inputs=(("q", "const device T*"), ("k", "const device T*"), ("v", "const device T*"),
            ("seg", "const device int32_t*"), ("scale", "const device float*"),
            ("dout", "const device T*"), ("lse", "const device float*"),
            ("delta", "const device float*")),
    outputs=(("dq", "device T*"),),
    templates=(("T", "float"), ("D", "64"), ("CAUSAL", "true"), ("HAS_SEG", "false")),
    header=_HEADER,
    source=_COMMON + """
    // Threadgroup (row, h, b): dQ of query row `row`, recomputing p = exp(q.k * scale - lse)
    // and ds = p * (dO.v - delta) key by key; dq = scale * sum_j ds_j k_j.
    int i = row;
    size_t qoff = (size_t(b * Hq + h) * NQ + i) * D;
    size_t koff = size_t(b * Hkv + h / rep) * NK * D;
    threadgroup float qs[D];
    threadgroup float dos[D];
    for (int d = int(lane); d < D; d += 32) {
        qs[d] = float(q[qoff + d]) * sc;
        dos[d] = float(dout[qoff + d]);
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    float li = lse[(b * Hq + h) * NQ + i];
    float di = delta[(b * Hq + h) * NQ + i];
    float acc[DL];
    for (int c = 0; c < DL; c++) {
        acc[c] = 0.0f;
    }
    int end = CAUSAL ? metal::min(NK, i + offset + 1) : NK;
    for (int j0 = 0; j0 < end; j0 += 32) {
        int j = j0 + int(lane);
        float ds = 0.0f;
        if (j < end && macft_allowed<CAUSAL, HAS_SEG>(i, j, offset, seg, b * NQ)) {
            const device T* kr = k + koff + size_t(j) * D;
            const device T* vr = v + koff + size_t(j) * D;
            float s = 0.0f;
            float dp = 0.0f;
            for (int d = 0; d < D; d++) {
                s += qs[d] * float(kr[d]);
                dp += dos[d] * float(vr[d]);
            }
            ds = metal::exp(s - li) * (dp - di);
        }
        int n = metal::min(32, end - j0);
        for (int jj = 0; jj < n; jj++) {
            float dsj = simd_shuffle(ds, ushort(jj));
            const device T* kr = k + koff + size_t(j0 + jj) * D;
            for (int c = 0; c < DL; c++) {
                int d = int(lane) + 32 * c;
                if (d < D) {
                    acc[c] += dsj * float(kr[d]);
                }
            }
        }
    }
    for (int c = 0; c < DL; c++) {
        int d = int(lane) + 32 * c;
        if (d < D) {
            dq[qoff + d] = T(acc[c] * sc);
        }
    }
""")

_ATTN_DKV = MetalKernel(
    name="macft_attn_backward_dkv",
    inputs=(("q", "const device T*"), ("k", "const device T*"), ("v", "const device T*"),
            ("seg", "const device int32_t*"), ("scale", "const device float*"),
            ("dout", "const device T*"), ("lse", "const device float*"),
            ("delta", "const device float*")),
    outputs=(("dk", "device T*"), ("dv", "device T*")),
    templates=(("T", "float"), ("D", "64"), ("CAUSAL", "true"), ("HAS_SEG", "false")),
    header=_HEADER,
    source=_COMMON + """
    // Threadgroup (row, h, b): dK and dV of key row `row` of kv head h, summed over the rep
    // query heads that share it: dv = sum_i p_ij dO_i, dk = scale * sum_i ds_ij q_i.
    int j = row;
    size_t koff = (size_t(b * Hkv + h) * NK + j) * D;
    threadgroup float ks[D];
    threadgroup float vs[D];
    for (int d = int(lane); d < D; d += 32) {
        ks[d] = float(k[koff + d]) * sc;
        vs[d] = float(v[koff + d]);
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    float dk_acc[DL];
    float dv_acc[DL];
    for (int c = 0; c < DL; c++) {
        dk_acc[c] = 0.0f;
        dv_acc[c] = 0.0f;
    }
    int start = CAUSAL ? metal::max(0, j - offset) : 0;
    for (int r = 0; r < rep; r++) {
        int hq = h * rep + r;
        size_t qbase = size_t(b * Hq + hq) * NQ * D;
        for (int i0 = start; i0 < NQ; i0 += 32) {
            int i = i0 + int(lane);
            float p = 0.0f;
            float ds = 0.0f;
            if (i < NQ && macft_allowed<CAUSAL, HAS_SEG>(i, j, offset, seg, b * NQ)) {
                const device T* qr = q + qbase + size_t(i) * D;
                const device T* dr = dout + qbase + size_t(i) * D;
                float s = 0.0f;
                float dp = 0.0f;
                for (int d = 0; d < D; d++) {
                    s += float(qr[d]) * ks[d];
                    dp += float(dr[d]) * vs[d];
                }
                size_t at = size_t(b * Hq + hq) * NQ + i;
                p = metal::exp(s - lse[at]);
                ds = p * (dp - delta[at]);
            }
            int n = metal::min(32, NQ - i0);
            for (int ii = 0; ii < n; ii++) {
                float pi = simd_shuffle(p, ushort(ii));
                float dsi = simd_shuffle(ds, ushort(ii));
                if (pi == 0.0f && dsi == 0.0f) {
                    continue;
                }
                const device T* qr = q + qbase + size_t(i0 + ii) * D;
                const device T* dr = dout + qbase + size_t(i0 + ii) * D;
                for (int c = 0; c < DL; c++) {
                    int d = int(lane) + 32 * c;
                    if (d < D) {
                        dv_acc[c] += pi * float(dr[d]);
                        dk_acc[c] += dsi * float(qr[d]);
                    }
                }
            }
        }
    }
    for (int c = 0; c < DL; c++) {
        int d = int(lane) + 32 * c;
        if (d < D) {
            dk[koff + d] = T(dk_acc[c] * sc);
            dv[koff + d] = T(dv_acc[c]);
        }
    }
""")

METAL_KERNELS = [_ATTN_FORWARD, _ATTN_DQ, _ATTN_DKV]


def metal_fits(q, k, *rest) -> bool:
    """The Metal kernels handle the head dims they were written for."""
    return q.shape[-1] in HEAD_DIMS and q.shape[1] % k.shape[1] == 0


def metal_attention(q, k, v, scale: float, causal: bool = True, segments=None):
    """``tiled``'s contract (same arguments, same results) computed by the Metal kernels."""
    b, hq, t, d = q.shape
    hkv, s = k.shape[1], k.shape[2]
    seg = (segments.astype(mx.int32) if segments is not None
           else mx.zeros((1, 1), dtype=mx.int32))
    sc = mx.array([scale], dtype=mx.float32)
    templates = [("T", q.dtype), ("D", d), ("CAUSAL", bool(causal)),
                 ("HAS_SEG", segments is not None)]

    @mx.custom_function
    def attend(q, k, v):
        out, lse = _ATTN_FORWARD.build()(
            inputs=[q, k, v, seg, sc], template=templates,
            grid=(t * 32, hq, b), threadgroup=(32, 1, 1),
            output_shapes=[q.shape, (b, hq, t)], output_dtypes=[q.dtype, mx.float32])
        return out, lse

    @attend.vjp
    def attend_vjp(primals, cotangents, outputs):
        q, k, v = primals
        dout = cotangents[0].astype(q.dtype)
        out, lse = outputs
        delta = (dout.astype(mx.float32) * out.astype(mx.float32)).sum(-1)
        (dq,) = _ATTN_DQ.build()(
            inputs=[q, k, v, seg, sc, dout, lse, delta], template=templates,
            grid=(t * 32, hq, b), threadgroup=(32, 1, 1),
            output_shapes=[q.shape], output_dtypes=[q.dtype])
        dk, dv = _ATTN_DKV.build()(
            inputs=[q, k, v, seg, sc, dout, lse, delta], template=templates,
            grid=(s * 32, hkv, b), threadgroup=(32, 1, 1),
            output_shapes=[k.shape, v.shape], output_dtypes=[k.dtype, v.dtype])
        return dq, dk, dv

    return attend(q, k, v)[0]
