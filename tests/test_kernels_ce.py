"""Linear cross-entropy: the chunked reference against a naive float64 numpy version.

Values and gradients (dh, and dW when the head is trained) agree to 1e-4 in float32, over one
chunk and many, with loss masks, tied and untied heads, and MLX's affine 4/8-bit heads in
groups of 32 and 64 (dequantized here by unpacking the words by hand). The chunked path's peak
memory is measured against full logits. The Metal kernels' parity check is ``verify``'s
(tests/test_kernels_verify.py).
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from macft import kernels
from macft.kernels import cross_entropy as ce

TOL = 1e-4


# ----- naive references, float64 numpy ------------------------------------------------------

def naive(h, w, targets, cot):
    """Per-row losses, and dh, dW of sum(cot * losses)."""
    h, w = np.asarray(h, np.float64), np.asarray(w, np.float64)
    logits = h @ w.T
    m = logits.max(-1, keepdims=True)
    p = np.exp(logits - m)
    lse = (m + np.log(p.sum(-1, keepdims=True)))[:, 0]
    rows = np.arange(len(targets))
    loss = lse - logits[rows, targets]
    d = p / p.sum(-1, keepdims=True)
    d[rows, targets] -= 1.0
    d *= np.asarray(cot, np.float64)[:, None]
    return loss, d @ w, d.T @ h


def naive_dequantize(wq, scales, biases, group_size, bits):
    """MLX affine layout: 32/bits values per uint32, lowest bits first; scale * q + bias."""
    wq = np.asarray(wq).astype(np.uint64)
    per = 32 // bits
    shifts = (np.arange(per, dtype=np.uint64) * bits)
    q = (wq[:, :, None] >> shifts) & np.uint64((1 << bits) - 1)
    q = q.reshape(wq.shape[0], -1).astype(np.float64)
    s = np.repeat(np.asarray(scales, np.float64), group_size, axis=1)
    b = np.repeat(np.asarray(biases, np.float64), group_size, axis=1)
    return s * q + b


def problem(n=37, d=64, v=300, seed=0):
    rng = np.random.default_rng(seed)
    h = rng.normal(0, 1.0, (n, d)).astype(np.float32)
    w = rng.normal(0, 0.2, (v, d)).astype(np.float32)
    t = rng.integers(0, v, n).astype(np.int32)
    t[1:4] = t[0]                   # repeated targets: dW's scatter must add them all
    cot = rng.uniform(0.5, 1.5, n).astype(np.float32)
    return h, w, t, cot


def grads(fn, h, w, cot):
    """(losses, dh, dW) of sum(cot * fn(h, w)) through MLX autodiff."""
    c = mx.array(cot)
    vg = mx.value_and_grad(lambda h, w: (fn(h, w) * c).sum(), argnums=(0, 1))
    out = fn(mx.array(h), mx.array(w))
    _, (dh, dw) = vg(mx.array(h), mx.array(w))
    return np.array(out), np.array(dh), np.array(dw)


def close(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


# ----- the op -------------------------------------------------------------------------------

ONE = {}                                                    # 37 x 300 logits: one chunk
MANY = {"chunk_elements": 1000, "single_elements": 0}       # 3 rows a chunk: 13 chunks


@pytest.mark.parametrize("hidden", [64, 16], ids=["rows<D", "rows>=D"])  # both dh orientations
@pytest.mark.parametrize("chunks", [ONE, MANY], ids=["one-chunk", "13-chunks"])
def test_values_and_gradients_match_naive(chunks, hidden):
    h, w, t, cot = problem(d=hidden)
    assert len(ce.spans(len(h), len(w), **chunks)) == (13 if chunks else 1)
    want_loss, want_dh, want_dw = naive(h, w, t, cot)
    tt = mx.array(t)
    loss, dh, dw = grads(lambda h, w: ce.linear_cross_entropy(
        h, w, tt, weight_grad=True, **chunks), h, w, cot)
    assert close(loss, want_loss) < TOL
    assert close(dh, want_dh) < TOL
    assert close(dw, want_dw) < TOL
    # A frozen head: same dh, and the weight's cotangent is exactly zero (nothing computed).
    _, dh, dw = grads(lambda h, w: ce.linear_cross_entropy(
        h, w, tt, weight_grad=False, **chunks), h, w, cot)
    assert close(dh, want_dh) < TOL
    assert not np.any(dw)


@pytest.mark.parametrize("chunks", [ONE, MANY], ids=["one-chunk", "13-chunks"])
def test_compiled_with_the_fast_exp_matches_naive(monkeypatch, chunks):
    """As the trainer's compiled step runs it: ``fastexp`` enabled, the whole value-and-grad
    compiled; the single chunk in row groups (4 rows a matmul, 2 rows a slice: 10 groups)."""
    from macft.kernels import fastexp

    monkeypatch.setattr(ce, "MATMUL_ELEMENTS", 4 * 512)
    monkeypatch.setattr(ce, "SLICE_ELEMENTS", 2 * 512)
    h, w, t, cot = problem(v=512)               # a width the row max folds (512 = 4 x 128)
    want_loss, want_dh, want_dw = naive(h, w, t, cot)
    tt, c = mx.array(t), mx.array(cot)
    for trained in (True, False):
        def total(h, w):
            return (ce.linear_cross_entropy(h, w, tt, weight_grad=trained, **chunks) * c).sum()
        step = mx.compile(mx.value_and_grad(total, argnums=(0, 1)))
        with fastexp.enabled():
            assert fastexp.active()
            value, (dh, dw) = step(mx.array(h), mx.array(w))
        assert abs(value.item() - float((want_loss * cot).sum())) < 1e-3
        assert close(dh, want_dh) < TOL
        assert close(dw, want_dw if trained else 0 * want_dw) < TOL


def test_spans_cover_rows_within_the_chunk_budget():
    # The SFT case (4 x 512 tokens, a third or all trained, 49k vocab) is one chunk.
    assert ce.spans(683, 49152) == [(0, 683)]
    assert ce.spans(2048, 49152) == [(0, 2048)]
    parts = ce.spans(8192, 151936)
    assert len(parts) == 75 and parts[0] == (0, 110) and parts[-1] == (8140, 8192)
    assert all(b - a <= ce.CHUNK_ELEMENTS // 151936 for a, b in parts)
    assert all(parts[i][1] == parts[i + 1][0] for i in range(len(parts) - 1))
    assert len(ce.spans(8192, 49152)) == 25


def test_extreme_logits_stay_finite():
    h, w, t, cot = problem(n=8, v=50)
    h = h * 300.0                               # logits in the thousands: exp would overflow
    want_loss, want_dh, _ = naive(h, w, t, cot)
    tt = mx.array(t)
    for chunks in (ONE, MANY):
        loss, dh, _ = grads(lambda h, w: ce.linear_cross_entropy(h, w, tt, **chunks), h, w, cot)
        assert np.all(np.isfinite(loss)) and np.all(np.isfinite(dh))
        assert close(loss, want_loss) / np.abs(want_loss).max() < 1e-5
        assert close(dh, want_dh) < 1e-2 * np.abs(want_dh).max()


# ----- the dispatcher with heads -------------------------------------------------------------

def head_loss(head, h, t, mask=None):
    return ce.losses(h, head, t, mask)


@pytest.mark.parametrize("mode", ["reference", "stock"])
def test_loss_mask_zeroes_rows_and_their_gradient(mode):
    h, w, t, cot = problem()
    mask = (np.arange(len(t)) % 3 != 0).astype(np.float32)
    t_bad = np.where(mask > 0, t, -100).astype(np.int32)     # ignored rows carry -100
    want_loss, want_dh, _ = naive(h, w, t, cot * mask)
    head = nn.Linear(w.shape[1], w.shape[0], bias=False)
    head.weight = mx.array(w)
    head.freeze()
    with kernels.using(mode):
        loss, dh, _ = grads(lambda h, _w: head_loss(head, h, mx.array(t_bad), mx.array(mask)),
                            h, w, cot)
    assert close(loss, want_loss * mask) < TOL
    assert np.all(loss[mask == 0] == 0)
    assert close(dh, want_dh) < TOL
    assert np.all(dh[mask == 0] == 0)


@pytest.mark.parametrize("mode", ["reference", "stock", "auto"])
@pytest.mark.parametrize("tied", [True, False], ids=["tied", "lm_head"])
def test_trained_head_gets_its_gradient(mode, tied):
    """Full fine-tuning: the head weight is trainable and receives dW (tied: the embedding)."""
    h, w, t, cot = problem()
    want_loss, want_dh, want_dw = naive(h, w, t, cot)
    if tied:
        module = nn.Embedding(w.shape[0], w.shape[1])
        head = module.as_linear
    else:
        module = head = nn.Linear(w.shape[1], w.shape[0], bias=False)
    module.weight = mx.array(w)
    c, tt = mx.array(cot), mx.array(t)

    def loss_fn(model, h):
        return (ce.losses(h, head, tt) * c).sum()

    with kernels.using(mode):
        value, (g_model, dh) = mx.value_and_grad(
            lambda params, h: (module.update(params), loss_fn(module, h))[1], argnums=(0, 1))(
            module.trainable_parameters(), mx.array(h))
    assert abs(value.item() - float((want_loss * cot).sum())) < 1e-3
    assert close(dh, want_dh) < TOL
    assert close(g_model["weight"], want_dw) < TOL


def test_frozen_head_is_detected_as_untrained():
    h, w, t, _ = problem()
    emb = nn.Embedding(w.shape[0], w.shape[1])
    assert ce.head_weight(emb.as_linear, mx.float32)[1] is True
    emb.freeze()
    assert ce.head_weight(emb.as_linear, mx.float32)[1] is False
    assert ce.head_weight(nn.Linear(4, 8, bias=True), mx.float32) is None   # bias: plain path


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("group_size", [32, 64])
@pytest.mark.parametrize("kind", ["embedding", "linear"])
def test_quantized_heads_match_naive(bits, group_size, kind):
    h, w, t, cot = problem(d=128)
    if kind == "embedding":
        base = nn.Embedding(w.shape[0], w.shape[1])
        base.weight = mx.array(w)
        module = nn.QuantizedEmbedding.from_embedding(base, group_size, bits)
        head = module.as_linear
    else:
        base = nn.Linear(w.shape[1], w.shape[0], bias=False)
        base.weight = mx.array(w)
        head = module = nn.QuantizedLinear.from_linear(base, group_size, bits)
    module.freeze()
    wd = naive_dequantize(module.weight, module.scales, module.biases, group_size, bits)
    # The test's own unpacking agrees with MLX's dequantize (so it checks the format too).
    assert close(wd, mx.dequantize(module.weight, module.scales, module.biases, group_size,
                                   bits)) < 1e-6
    want_loss, want_dh, _ = naive(h, wd, t, cot)
    tt = mx.array(t)
    for mode in ("reference", "stock"):
        with kernels.using(mode):
            loss, dh, _ = grads(lambda h, _w: ce.losses(h, head, tt), h, w, cot)
        assert close(loss, want_loss) < TOL, mode
        assert close(dh, want_dh) < TOL, mode


def test_token_losses_route_through_the_dispatcher(tiny_model_dir):
    """A tiny tied-embedding llama: the SFT loss and its LoRA gradients match across modes."""
    from mlx.utils import tree_flatten

    from macft.models.load import load_base
    from macft.train import loss as loss_mod

    model = load_base(str(tiny_model_dir)).model
    model.freeze()
    model.model.layers[0].mlp.down_proj.unfreeze()
    rng = np.random.default_rng(1)
    inputs = mx.array(rng.integers(0, 320, (2, 24)).astype(np.int32))
    targets = mx.array(rng.integers(0, 320, (2, 24)).astype(np.int32))
    positions = loss_mod.trained_positions((rng.uniform(size=(2, 24)) > 0.5).astype(np.int32))
    results = {}
    for mode in ("stock", "reference", "auto"):
        with kernels.using(mode):
            value, g = nn.value_and_grad(model, loss_mod.sft_loss)(
                model, inputs, targets, positions, positions.size)
        results[mode] = (value.item(), dict(tree_flatten(g)))
    stock_value, stock_g = results["stock"]
    assert stock_value > 5.0             # ~log(320) for a random model
    for mode in ("reference", "auto"):
        value, g = results[mode]
        assert abs(value - stock_value) < 1e-5
        assert g.keys() == stock_g.keys()
        assert max(close(g[k], stock_g[k]) for k in g) < TOL


# ----- memory ---------------------------------------------------------------------------------

def _peak(fn, *args):
    mx.eval(*args)
    mx.synchronize()
    mx.clear_cache()
    mx.reset_peak_memory()
    base = mx.get_active_memory()
    mx.eval(fn(*args))
    return mx.get_peak_memory() - base


def test_chunked_peak_is_a_fraction_of_full_logits():
    n, d, v = 2048, 64, 8192                 # full logits: 64 MB in float32
    h, w, t, _ = problem(n, d, v)
    h, w, tt = mx.array(h), mx.array(w), mx.array(t)

    def step(loss_fn):
        return mx.value_and_grad(lambda h: loss_fn(h).sum())(h)

    full = _peak(lambda h: step(lambda x: ce.plain(x, lambda y: y @ w.T, tt)), h)
    chunked = _peak(lambda h: step(lambda x: ce.linear_cross_entropy(
        x, w, tt, chunk_elements=1 << 18, single_elements=0)), h)   # 32 rows, 1 MB a chunk
    print(f"peak: full logits {full / 2**20:.1f} MB, chunked {chunked / 2**20:.1f} MB")
    logits_bytes = n * v * 4
    assert full > 2 * logits_bytes           # logits, their exp and gradient coexist
    assert chunked < 0.2 * full
    assert chunked < 0.3 * logits_bytes
