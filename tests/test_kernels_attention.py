"""Attention kernels: the tiled reference against a naive float64 numpy version.

Values and gradients (dq, dk, dv) agree to 1e-4 in float32 over causal and packed (segment)
masks, grouped-query heads, odd lengths that leave partial tiles, queries aligned to the end of
a longer key sequence, and the head dims 64, 80, 96, 128. The dispatcher follows the recipe's
``kernels`` switch; the patched mlx-lm attention routes training calls through it; 30 training
steps of a tiny model give the same losses with every mode. The Metal kernels' parity check is
``verify``'s (tests/test_kernels_verify.py), the same code that runs before a Mac trains.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from macft import kernels
from macft.kernels import attention as attn
from macft.kernels import verify
from macft.kernels.verify import packed_segments as packed

TOL = 1e-4


def naive(q, k, v, scale, causal, segments, cot):
    """Output and (dq, dk, dv) of sum(cot * out), float64, keys/values repeated per group."""
    q, k, v, cot = (np.asarray(x, np.float64) for x in (q, k, v, cot))
    b, hq, t, d = q.shape
    s = k.shape[2]
    rep = hq // k.shape[1]
    kr, vr = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)
    scores = q @ kr.transpose(0, 1, 3, 2) * scale
    allowed = np.ones((b, 1, t, s), bool)
    if causal:
        allowed &= (np.arange(t)[:, None] + (s - t)) >= np.arange(s)[None, :]
    if segments is not None:
        seg = np.asarray(segments)
        allowed &= (seg[:, :, None] == seg[:, None, :])[:, None]
    scores = np.where(allowed, scores, -np.inf)
    p = np.exp(scores - scores.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    out = p @ vr
    dp = cot @ vr.transpose(0, 1, 3, 2)
    ds = p * (dp - (dp * p).sum(-1, keepdims=True))
    dq = ds @ kr * scale
    dkr = ds.transpose(0, 1, 3, 2) @ q * scale
    dvr = p.transpose(0, 1, 3, 2) @ cot
    fold = lambda x: x.reshape(b, hq // rep, rep, s, d).sum(2)  # noqa: E731
    return out, dq, fold(dkr), fold(dvr)


def problem(b=2, hq=4, hkv=2, t=37, s=None, d=64, seed=0):
    rng = np.random.default_rng(seed)
    s = s or t
    q = rng.normal(0, 1, (b, hq, t, d)).astype(np.float32)
    k = rng.normal(0, 1, (b, hkv, s, d)).astype(np.float32)
    v = rng.normal(0, 1, (b, hkv, s, d)).astype(np.float32)
    cot = rng.normal(0, 1, (b, hq, t, d)).astype(np.float32)
    return q, k, v, cot


def run(fn, q, k, v, cot):
    c = mx.array(cot)
    vg = mx.value_and_grad(lambda q, k, v: (fn(q, k, v) * c).sum(), argnums=(0, 1, 2))
    out = fn(mx.array(q), mx.array(k), mx.array(v))
    _, grads = vg(mx.array(q), mx.array(k), mx.array(v))
    return [np.array(out), *(np.array(g) for g in grads)]


def worst(got, want):
    return max(float(np.max(np.abs(np.asarray(a, np.float64) - b))) for a, b in zip(got, want))


CASES = {
    "causal-gqa-odd": dict(shape={}, causal=True, seg=None),
    "causal-mha": dict(shape={"hq": 3, "hkv": 3, "t": 20}, causal=True, seg=None),
    "noncausal": dict(shape={"t": 29}, causal=False, seg=None),
    "offset": dict(shape={"t": 11, "s": 40}, causal=True, seg=None),   # queries at the end
    "packed": dict(shape={"t": 37}, causal=True, seg=[[10, 17, 5], [30]]),
    "packed-mqa": dict(shape={"hq": 4, "hkv": 1, "t": 33}, causal=True, seg=[[1, 31], [8, 8, 8]]),
}


@pytest.mark.parametrize("tiles", [(512, 512), (16, 8), (7, 13)], ids=["one", "square", "odd"])
@pytest.mark.parametrize("name", list(CASES))
def test_tiled_matches_naive(name, tiles):
    case = CASES[name]
    q, k, v, cot = problem(**case["shape"])
    seg = packed(q.shape[0], q.shape[2], case["seg"]) if case["seg"] else None
    scale = q.shape[-1] ** -0.5
    want = naive(q, k, v, scale, case["causal"], seg, cot)
    segments = mx.array(seg) if seg is not None else None
    got = run(lambda q, k, v: attn.tiled(q, k, v, scale, case["causal"], segments,
                                         q_tile=tiles[0], k_tile=tiles[1]), q, k, v, cot)
    assert worst(got, want) < TOL
    if name == "offset":            # keys no query of a tile can reach still get gradients
        assert np.abs(got[2][:, :, :29]).sum() > 0


@pytest.mark.parametrize("d", [64, 80, 96, 128])
def test_head_dims(d):
    q, k, v, cot = problem(b=1, hq=4, hkv=2, t=21, d=d, seed=d)
    scale = d ** -0.5
    want = naive(q, k, v, scale, True, None, cot)
    got = run(lambda q, k, v: attn.tiled(q, k, v, scale, True, q_tile=8, k_tile=8), q, k, v, cot)
    assert worst(got, want) < TOL


def test_tiled_backward_does_not_hold_the_score_matrix():
    """At T = 2048 (one head group) the tiled gradient's peak stays far below MLX's."""
    t, d = 2048, 64
    q, k, v, cot = (mx.array(x) for x in problem(b=1, hq=2, hkv=1, t=t, d=d))
    mx.eval(q, k, v, cot)

    def peak(fn):
        step = mx.grad(lambda q, k, v: (fn(q, k, v) * cot).sum(), argnums=(0, 1, 2))
        mx.synchronize()
        mx.clear_cache()
        base = mx.get_active_memory()
        mx.reset_peak_memory()
        mx.eval(step(q, k, v))
        return mx.get_peak_memory() - base

    stock = peak(lambda q, k, v: mx.fast.scaled_dot_product_attention(
        q, k, v, scale=d ** -0.5, mask="causal"))
    tiled = peak(lambda q, k, v: attn.tiled(q, k, v, d ** -0.5, True))
    scores = 2 * t * t * 4                      # one (T x T) float32 matrix per query head
    assert stock > scores                       # MLX keeps the probabilities for the backward
    assert tiled < 0.35 * stock, (tiled, stock)


def test_dispatcher_follows_the_switch(monkeypatch):
    q, k, v, cot = problem(b=1, hq=4, hkv=2, t=24)
    seg = packed(1, 24, [[9, 15]])
    scale = 0.125
    calls = []
    real = attn.tiled
    monkeypatch.setattr(attn, "tiled", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    want = naive(q, k, v, scale, True, seg, cot)
    for mode, tiled_calls in (("stock", 0), ("reference", 1), ("auto", 0)):  # auto: blocked
        calls.clear()
        with kernels.using(mode):
            out = attn.attention(mx.array(q), mx.array(k), mx.array(v), scale, True,
                                 mx.array(seg))
        assert worst([np.array(out)], want[:1]) < TOL, mode
        assert len(calls) == tiled_calls, mode
    # "auto" on CPU switches to the tiled path above AUTO_TILED_ABOVE scores per head.
    monkeypatch.setattr(attn, "AUTO_TILED_ABOVE", 24 * 24 - 1)
    calls.clear()
    with kernels.using("auto"):
        attn.attention(mx.array(q), mx.array(k), mx.array(v), scale, True, None)
        device_kernel = verify.pick("attention", mx.array(q), mx.array(k))
    assert len(calls) == (0 if device_kernel is not None else 1)


def test_patched_model_attention_routes_through_the_dispatcher(tiny_model_dir, monkeypatch):
    """The patched mlx-lm model: packed rows give the same logits as each example alone, on the
    tiled path and on MLX's."""
    from macft.models import patch
    from macft.models.load import load_base

    model = load_base(str(tiny_model_dir)).model
    calls = []
    real = attn.attention
    monkeypatch.setattr(attn, "attention", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    rng = np.random.default_rng(0)
    a, b = rng.integers(1, 100, 7), rng.integers(1, 100, 9)
    row = mx.array(np.concatenate([a, b])[None])
    seg = mx.array(np.array([[0] * 7 + [1] * 9], np.int32))
    alone = np.array(model(mx.array(b[None])))[0]
    for mode in ("stock", "reference", "auto"):
        with kernels.using(mode), patch.segments(seg):
            out = np.array(model(row))[0]
        assert float(np.max(np.abs(out[7:] - alone))) < 1e-4, mode
    assert calls                           # training attention went through the dispatcher


# ----- 30 training steps: every kernels mode gives the same losses -------------------------

def test_thirty_steps_same_losses_with_every_mode(tmp_path, tiny_model_dir):
    """Packed LoRA training of a tiny model, 30 steps: ``kernels: auto`` and ``reference`` (the
    tiled attention and the chunked cross-entropy everywhere) against ``stock`` (MLX's attention
    and full logits). Losses agree within 1e-3 at every step."""
    from macft import recipe as recipe_mod
    from macft.events import Collect, Step
    from macft.train.loop import train

    rng = np.random.default_rng(0)
    data = tmp_path / "train.jsonl"
    with data.open("w") as fh:
        for _ in range(40):
            words = " ".join(f"w{int(x)}" for x in rng.integers(0, 50, rng.integers(5, 30)))
            fh.write(json.dumps({"text": words}) + "\n")
    losses = {}
    for mode in ("stock", "auto", "reference"):
        recipe = recipe_mod.from_dict({
            "name": "k", "model": str(tiny_model_dir), "method": "lora", "kernels": mode,
            "lora": {"rank": 4, "alpha": 8},
            "data": {"train": str(data), "max_length": 64, "packing": True},
            "train": {"steps": 30, "batch_size": 2, "learning_rate": 2e-3, "seed": 0,
                      "eval_every": 0, "save_every": 0},
            "output": str(tmp_path / mode)})
        sink = Collect()
        train(recipe, [sink])
        losses[mode] = [e.loss for e in sink.events if isinstance(e, Step)]
    assert len(losses["stock"]) == 30
    assert losses["stock"][-1] < losses["stock"][0] - 0.5          # it learned something
    for mode in ("auto", "reference"):
        diff = max(abs(a - b) for a, b in zip(losses[mode], losses["stock"]))
        assert diff < 1e-3, (mode, diff, [round(a - b, 5) for a, b in zip(losses[mode], losses["stock"])])


@pytest.mark.parametrize("block", [128, 8, 13])
@pytest.mark.parametrize("name", list(CASES))
def test_blocked_matches_naive(name, block):
    case = CASES[name]
    q, k, v, cot = problem(**case["shape"])
    seg = packed(q.shape[0], q.shape[2], case["seg"]) if case["seg"] else None
    scale = q.shape[-1] ** -0.5
    want = naive(q, k, v, scale, case["causal"], seg, cot)
    segments = mx.array(seg) if seg is not None else None
    got = run(lambda q, k, v: attn.blocked(q, k, v, scale, case["causal"], segments, block=block),
              q, k, v, cot)
    assert worst(got, want) < TOL
