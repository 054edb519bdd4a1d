"""Linear cross-entropy: the output layer's matmul and the loss, chunk by chunk, never all logits.

For rows of hidden states ``h`` (N, D), an output matrix ``weight`` (V, D) and targets (N,),
``linear_cross_entropy`` returns the per-row losses ``logsumexp(h W^T) - (h W^T)[target]``.
Above ``SINGLE_ELEMENTS`` logits, rows are cut into chunks of at most ``CHUNK_ELEMENTS``: the
forward keeps only each row's log-sum-exp; the backward recomputes a chunk's logits, turns them
into ``(softmax - onehot) * g`` and multiplies back, giving dh (and dW only when the caller
says the weight is trained: with LoRA the head is frozen and dW would be a wasted (V x D)
product). A smaller problem is one chunk that keeps its exponentials from the forward instead:
no recomputed matmul and one ``exp`` over the logits instead of the stock path's two (on MLX's
CPU backend ``exp`` costs about as much as the matmul), worked in row slices with
``fastexp``'s exp and row reductions where that is enabled (the compiled step on the CPU).

The softmax parts run as plain MLX ops (the reference, any backend) or as two Metal kernels
(``ce_forward``: a row's online log-sum-exp and its loss in one pass; ``ce_backward``: the
logit gradient written straight in the compute dtype). ``losses`` is the dispatcher the SFT
loss calls with the model's head module (an untied ``lm_head``, a tied embedding's
``as_linear``, or their quantized forms, which are dequantized once).
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from macft.kernels import fastexp, verify
from macft.kernels.metal import MetalKernel
from macft.kernels.qmatmul import long_matmul

# Up to this many logits (512 MB in float32) a problem is one chunk whose exponentials are kept
# for the backward: the SFT case (4 x 512 tokens, a third or all of them trained, at 49k) and
# ~700 rows at 151k. Its peak is about twice the logits, against three times on the stock path.
SINGLE_ELEMENTS = 1 << 27
# Larger problems go in chunks of at most this many logits (64 MB). MLX's CPU scheduler queues
# up to ~8 chunks ahead of the one computing (measured: peak ~ 8 chunks whatever their size), so
# the chunk, not the problem, sets the peak: ~0.6 GB for 8192 rows at 49k.
CHUNK_ELEMENTS = 1 << 24


def spans(n: int, vocab: int, chunk_elements: int = CHUNK_ELEMENTS,
          single_elements: int = SINGLE_ELEMENTS) -> list[tuple[int, int]]:
    """Row ranges of near-equal size, each at most ``chunk_elements`` logits (one range for a
    problem of at most ``single_elements``)."""
    if n * vocab <= single_elements or n <= 1:
        return [(0, n)]
    per = max(1, chunk_elements // max(1, vocab))
    count = -(-n // per)
    size = -(-n // count)
    return [(i, min(n, i + size)) for i in range(0, n, size)]


# ----- the softmax parts: plain MLX ops --------------------------------------------------------

def _ref_forward(logits, targets):
    """(loss, lse) per row of float32 logits."""
    lse = fastexp.logsumexp(logits, axis=-1)
    picked = mx.take_along_axis(logits, targets[:, None], axis=-1).squeeze(-1)
    return lse - picked, lse


def _ref_backward(logits, lse, targets, g, dtype):
    """softmax(logits) * g in ``dtype``; the one-hot part is left to ``_products``."""
    return (fastexp.exp_shifted(logits, lse[:, None]) * g[:, None]).astype(dtype)


def _products(d, hc, w, targets, g, weight_grad: bool, onehot_done: bool):
    """(dh, dW or None) of a chunk from d = (softmax - onehot) * g.

    Without ``onehot_done`` d holds softmax * g only and the one-hot term is applied to the
    products instead: -g * W[target] for dh, -g * h scattered into dW's target rows. That is
    (rows x D) work in place of a scatter over (rows x V) logits.
    """
    dh = long_matmul(d, w)          # (rows x V) @ (V x D): few rows in a chunk
    gh = g[:, None].astype(hc.dtype)
    if not onehot_done:
        dh = dh - gh * w[targets]
    if not weight_grad:
        return dh, None
    dw = d.T @ hc
    if not onehot_done:
        dw = dw.at[targets].subtract(gh * hc)
    return dh, dw


# ----- the softmax parts: Metal kernels --------------------------------------------------------

TG = 256  # threads per row in ce_forward (8 simdgroups)

_FORWARD = MetalKernel(
    name="macft_ce_forward",
    inputs=(("logits", "const device T*"), ("targets", "const device int32_t*")),
    outputs=(("loss", "device float*"), ("lse", "device float*")),
    templates=(("T", "float"),),
    source="""
    // One threadgroup per row: each thread folds a strided slice of the row into a running
    // (max, sum of exp(x - max)); simdgroups, then the threadgroup, merge those pairs.
    uint tid = thread_position_in_threadgroup.x;
    uint row = threadgroup_position_in_grid.y;
    uint lane = thread_index_in_simdgroup;
    uint group = simdgroup_index_in_threadgroup;
    uint groups = (threads_per_threadgroup.x + 31) / 32;
    int V = logits_shape[1];
    const device T* xs = logits + size_t(row) * V;
    float m = -INFINITY;
    float s = 0.0f;
    for (int v = int(tid); v < V; v += int(threads_per_threadgroup.x)) {
        float x = float(xs[v]);
        if (x > m) {
            s = s * metal::exp(m - x) + 1.0f;
            m = x;
        } else {
            s += metal::exp(x - m);
        }
    }
    float gm = simd_max(m);
    s = (m == -INFINITY) ? 0.0f : s * metal::exp(m - gm);
    s = simd_sum(s);
    threadgroup float part_m[32];
    threadgroup float part_s[32];
    if (lane == 0) {
        part_m[group] = gm;
        part_s[group] = s;
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    if (group == 0) {
        float pm = lane < groups ? part_m[lane] : -INFINITY;
        float ps = lane < groups ? part_s[lane] : 0.0f;
        float M = simd_max(pm);
        ps = (pm == -INFINITY) ? 0.0f : ps * metal::exp(pm - M);
        float S = simd_sum(ps);
        if (lane == 0) {
            float l = M + metal::log(S);
            lse[row] = l;
            loss[row] = l - float(xs[targets[row]]);
        }
    }
""")

_BACKWARD = MetalKernel(
    name="macft_ce_backward",
    inputs=(("logits", "const device T*"), ("lse", "const device float*"),
            ("targets", "const device int32_t*"), ("g", "const device float*")),
    outputs=(("d", "device T*"),),
    templates=(("T", "float"),),
    source="""
    // One thread per logit: (softmax - onehot) * g, written in the compute dtype so the two
    // matmuls that follow read half the bytes in bfloat16.
    uint v = thread_position_in_grid.x;
    uint row = thread_position_in_grid.y;
    int V = logits_shape[1];
    if (int(v) >= V) {
        return;
    }
    size_t i = size_t(row) * V + v;
    float p = metal::exp(float(logits[i]) - lse[row]);
    if (int(v) == targets[row]) {
        p -= 1.0f;
    }
    d[i] = T(p * g[row]);
""")

METAL_KERNELS = [_FORWARD, _BACKWARD]


def _metal_forward(logits, targets):
    rows = logits.shape[0]
    loss, lse = _FORWARD.build()(
        inputs=[logits, targets], template=[("T", logits.dtype)],
        grid=(TG, rows, 1), threadgroup=(TG, 1, 1),
        output_shapes=[(rows,), (rows,)], output_dtypes=[mx.float32, mx.float32])
    return loss, lse


def _metal_backward(logits, lse, targets, g, dtype):
    rows, vocab = logits.shape
    (d,) = _BACKWARD.build()(
        inputs=[logits.astype(dtype), lse, targets, g.astype(mx.float32)],
        template=[("T", dtype)], grid=(vocab, rows, 1), threadgroup=(TG, 1, 1),
        output_shapes=[(rows, vocab)], output_dtypes=[dtype])
    return d


# ----- the op ----------------------------------------------------------------------------------

def linear_cross_entropy(h, weight, targets, weight_grad: bool = False, kernel: bool = False,
                         chunk_elements: int = CHUNK_ELEMENTS,
                         single_elements: int = SINGLE_ELEMENTS):
    """Per-row cross-entropy of ``h @ weight.T`` against ``targets`` (int), in row chunks.

    ``weight_grad``: compute dW in the backward (full fine-tuning); otherwise its cotangent is
    a broadcast zero. ``kernel``: the Metal kernels for the softmax parts (GPU only).
    """
    n, vocab = h.shape[0], weight.shape[0]
    parts = spans(n, vocab, chunk_elements, single_elements)
    targets = targets.astype(mx.int32)
    if len(parts) == 1 and not kernel:
        return _single(h, weight, targets, weight_grad)
    forward, backward = (_metal_forward, _metal_backward) if kernel else (_ref_forward,
                                                                          _ref_backward)

    def logits_of(hc, w):
        # The Metal kernels read the compute dtype and accumulate in float32 themselves.
        out = hc @ w.T
        return out if kernel else out.astype(mx.float32)

    @mx.custom_function
    def ce(h, w):
        losses, lses = [], []
        for i0, i1 in parts:
            hc = h[i0:i1]
            if losses:  # chunk after chunk: else MLX runs every chunk's matmul before any exp
                hc = mx.depends(hc, [losses[-1], lses[-1]])
            loss, lse = forward(logits_of(hc, w), targets[i0:i1])
            losses.append(loss)
            lses.append(lse)
        return mx.concatenate(losses), mx.concatenate(lses)

    @ce.vjp
    def ce_vjp(primals, cotangents, outputs):
        h, w = primals
        g = cotangents[0].astype(mx.float32)
        lse = outputs[1]
        dh, dw, last = [], None, []
        for i0, i1 in parts:
            hc = h[i0:i1]
            if last:    # chunk after chunk, as in the forward
                hc = mx.depends(hc, last)
            tc, gc = targets[i0:i1], g[i0:i1]
            d = backward(logits_of(hc, w), lse[i0:i1], tc, gc, h.dtype)
            dh_c, dw_c = _products(d, hc, w, tc, gc, weight_grad, onehot_done=kernel)
            dh.append(dh_c)
            if weight_grad:
                dw = dw_c if dw is None else dw + dw_c
                last = [dh_c, dw]
            else:
                last = [dh_c]
        return mx.concatenate(dh), _weight_cotangent(dw, w)

    return ce(h, weight)[0]


def _weight_cotangent(dw, w):
    if dw is None:      # a frozen head: no (V x D) gradient is computed or stored
        return mx.broadcast_to(mx.zeros((), dtype=w.dtype), w.shape)
    return dw.astype(w.dtype)


# ``_single`` multiplies rows in groups of about MATMUL_ELEMENTS logits (128 MB in float32; a
# few hundred rows keep OpenBLAS near its full-matrix rate) and turns each group into
# exponentials in slices of about SLICE_ELEMENTS (8 MB): buffers of that size are reused from
# the heap, where 400 MB ones are fresh pages at every step, and a slice is still in cache
# when it is summed.
MATMUL_ELEMENTS = 1 << 25
SLICE_ELEMENTS = 1 << 21


def _groups(n: int, vocab: int, elements: int, start: int = 0) -> list[tuple[int, int]]:
    per = max(1, elements // max(1, vocab))
    return [(i, min(start + n, i + per)) for i in range(start, start + n, per)]


def _single(h, weight, targets, weight_grad: bool):
    """One chunk: the forward hands its exponentials and their row sums to the backward."""
    n, vocab = h.shape[0], weight.shape[0]
    if fastexp.active():
        groups = [((g0, g1), _groups(g1 - g0, vocab, SLICE_ELEMENTS, g0))
                  for g0, g1 in _groups(n, vocab, MATMUL_ELEMENTS)]
    else:   # MLX's ops: one matmul and one pass (slices measured slower there)
        groups = [((0, n), [(0, n)])]

    @mx.custom_function
    def ce(h, w):
        losses, kept = [], []
        for (g0, g1), slices in groups:
            logits = (h[g0:g1] @ w.T).astype(mx.float32)
            for i0, i1 in slices:
                part = logits[i0 - g0:i1 - g0]
                m = fastexp.row_max(part)
                e = fastexp.exp_shifted(part, m)
                s = fastexp.row_sum(e)
                picked = mx.take_along_axis(part, targets[i0:i1, None], axis=-1)
                losses.append((m + mx.log(s) - picked).squeeze(-1))
                kept += [e, s]
        return (mx.concatenate(losses) if len(losses) > 1 else losses[0], *kept)

    @ce.vjp
    def ce_vjp(primals, cotangents, outputs):
        h, w = primals
        g = cotangents[0].astype(mx.float32)
        dh, dw, k = [], None, 1
        for (g0, g1), slices in groups:
            ds = []
            for i0, i1 in slices:
                e, s = outputs[k], outputs[k + 1]
                k += 2
                ds.append((e * (g[i0:i1, None] / s)).astype(h.dtype))
            d = mx.concatenate(ds) if len(ds) > 1 else ds[0]
            dh_c, dw_c = _products(d, h[g0:g1], w, targets[g0:g1], g[g0:g1], weight_grad,
                                   onehot_done=False)
            dh.append(dh_c)
            if dw_c is not None:
                dw = dw_c if dw is None else dw + dw_c
        dh = mx.concatenate(dh) if len(dh) > 1 else dh[0]
        return dh, _weight_cotangent(dw, w)

    return ce(h, weight)[0]


def plain(h, head, targets):
    """The stock path: all logits, then log-sum-exp minus the target's logit."""
    logits = head(h).astype(mx.float32)
    return mx.logsumexp(logits, axis=-1) - mx.take_along_axis(
        logits, targets[:, None], axis=-1).squeeze(-1)


# (module, dtype) -> the float copy of a quantized weight that the model layer keeps, or None.
# The models layer registers it (``models.quantized``): kernels never import models.
_float_copy = None


def use_float_copies(source) -> None:
    """Register where ``head_weight`` finds float copies of quantized heads."""
    global _float_copy
    _float_copy = source


def head_weight(head, dtype) -> tuple[mx.array, bool] | None:
    """(weight (V, D) in ``dtype``, trained?) of a head module or a bound ``as_linear``; None
    when the head has a bias or another form (the dispatcher then uses ``plain``)."""
    from mlx.utils import tree_flatten

    from macft.kernels.qmatmul import dequantized

    module = getattr(head, "__self__", head)
    if not isinstance(module, nn.Module) or "bias" in module or "weight" not in module:
        return None
    if isinstance(module, (nn.QuantizedLinear, nn.QuantizedEmbedding)):
        if getattr(module, "mode", "affine") != "affine":
            return None
        # the copy generation already keeps, if any
        w = _float_copy(module, dtype) if _float_copy is not None else None
        if w is None:
            w = dequantized(module["weight"], module["scales"], module.get("biases"),
                            module.group_size, module.bits, dtype)
        return w, False
    if isinstance(module, (nn.Linear, nn.Embedding)):
        trained = any(k == "weight" for k, _ in tree_flatten(module.trainable_parameters()))
        return module.weight, trained
    return None


def losses(h, head, targets, mask=None):
    """Dispatcher for the SFT loss: per-row cross-entropy of ``head(h)`` (rows of ``h``) against
    ``targets``; rows where ``mask`` is 0 give 0 and no gradient.

    "stock": ``plain``. "reference": ``linear_cross_entropy`` in plain ops. "auto": the same
    with the Metal kernels where they run and passed their parity check here (``verify``;
    "device": unchecked).
    """
    from macft import kernels

    if mask is not None:
        targets = mx.where(mask > 0, targets, 0)      # ignored rows may carry -100 and the like
    mode = kernels.mode()
    found = head_weight(head, h.dtype) if mode != "stock" else None
    if found is None:
        out = plain(h, head, targets)
    else:
        weight, trained = found
        op = verify.pick("cross_entropy", h, weight, targets) or linear_cross_entropy
        out = op(h, weight, targets, weight_grad=trained)
    if mask is not None:
        out = out * mask.astype(out.dtype)
    return out
