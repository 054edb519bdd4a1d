"""SwiGLU with the sigmoid kept: values and gradients against float64 numpy; the patch."""

from __future__ import annotations

import sys

import mlx.core as mx
import numpy as np

from macft import kernels
from macft.kernels import swiglu


def test_values_and_gradients_match_naive():
    rng = np.random.default_rng(0)
    gate = rng.normal(0, 3, (5, 33)).astype(np.float32)
    gate[0, :4] = [-90.0, 90.0, 0.0, -1e-3]             # saturated sigmoid stays finite
    x = rng.normal(0, 1, (5, 33)).astype(np.float32)
    cot = rng.normal(0, 1, (5, 33)).astype(np.float32)
    g64, x64, c64 = (a.astype(np.float64) for a in (gate, x, cot))
    s = 1 / (1 + np.exp(-g64))
    want = [g64 * s * x64, c64 * x64 * (s + g64 * s * (1 - s)), c64 * g64 * s]
    out = swiglu.swiglu(mx.array(gate), mx.array(x))
    dg, dx = mx.grad(lambda g, x: (swiglu.swiglu(g, x) * mx.array(cot)).sum(),
                     argnums=(0, 1))(mx.array(gate), mx.array(x))
    for got, ref in zip((out, dg, dx), want):
        assert np.all(np.isfinite(np.array(got)))
        assert np.max(np.abs(np.array(got, np.float64) - ref)) < 1e-4


def test_patch_swaps_the_model_modules_swiglu(tiny_model_dir):
    from macft.models.load import load_base

    model = load_base(str(tiny_model_dir)).model
    assert getattr(sys.modules[type(model).__module__].swiglu, "_macft_original_sdpa", None)
    calls = []
    real = swiglu.swiglu
    swiglu.swiglu = lambda g, x: calls.append(1) or real(g, x)
    try:
        tokens = mx.array([[5, 9, 11, 3]])
        with kernels.using("stock"):
            stock = np.array(model(tokens))
        assert calls == []
        with kernels.using("auto"):
            ours = np.array(model(tokens))
        assert len(calls) == len(model.layers)
    finally:
        swiglu.swiglu = real
    assert np.max(np.abs(stock - ours)) < 1e-5
