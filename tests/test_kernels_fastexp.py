"""kernels.fastexp: the compiled float32 exp, softmax and sigmoid against float64 numpy."""

from __future__ import annotations

import macft  # noqa: F401
import mlx.core as mx
import numpy as np
import pytest

from macft import kernels
from macft.kernels import fastexp


@pytest.fixture(autouse=True)
def on():
    assert fastexp.available(), "the compiled path did not build here (g++ missing?)"
    with fastexp.enabled():
        yield


def test_exp_matches_float64_to_two_ulp():
    x = np.concatenate([np.linspace(-87.0, 88.0, 200_001), [0.0, -1e-7, 1e-7, -0.5, 0.5]])
    got = np.array(fastexp.exp(mx.array(x.astype(np.float32))), dtype=np.float64)
    want = np.exp(x.astype(np.float32).astype(np.float64))
    rel = np.abs(got - want) / want
    assert rel.max() < 2.5e-7, rel.max()
    assert got[-5] == 1.0                                   # exp(0) is exactly 1


def test_exp_underflows_to_zero_and_saturates():
    x = mx.array([-np.inf, -1e30, -100.0, -88.0, 88.5, 1e30, np.inf], dtype=mx.float32)
    got = fastexp.exp(x).tolist()
    assert got[:4] == [0.0, 0.0, 0.0, 0.0]
    # Above 88 the result is the largest value of the clamp (float32's exp overflows at 88.7).
    assert got[4:] == [pytest.approx(1.6516e38, rel=1e-4)] * 3


def test_exp_shifted_broadcasts_the_shift():
    x = mx.random.normal((6, 70), key=mx.random.key(0)) * 10
    m = x.max(axis=-1, keepdims=True)
    got = np.array(fastexp.exp_shifted(x, m))
    # The subtraction is float32's (as in x - m then mx.exp): exp of that difference exactly.
    want = np.exp((np.array(x) - np.array(m)).astype(np.float64))
    assert np.allclose(got, want, rtol=2.5e-7, atol=0)


def test_softmax_and_logsumexp_match_mlx():
    x = mx.random.normal((3, 5, 256), key=mx.random.key(1)) * 8
    masked = mx.where(mx.arange(256) < 100, x, -mx.inf)        # a causal-style -inf tail
    for v in (x, masked):
        assert mx.allclose(fastexp.softmax(v, axis=-1), mx.softmax(v, axis=-1),
                           rtol=1e-6, atol=1e-7).item()
    assert mx.allclose(fastexp.softmax(x, axis=1), mx.softmax(x, axis=1), rtol=1e-6,
                       atol=1e-7).item()
    assert mx.allclose(fastexp.logsumexp(x, axis=-1), mx.logsumexp(x, axis=-1),
                       rtol=1e-6).item()


def test_sigmoid_keeps_small_values_accurate():
    x = np.array([-87.0, -60.0, -20.0, -3.0, -1e-3, 0.0, 1e-3, 3.0, 20.0, 90.0], np.float32)
    got = np.array(fastexp.sigmoid(mx.array(x)), dtype=np.float64)
    want = 1.0 / (1.0 + np.exp(-x.astype(np.float64)))
    assert np.all(np.abs(got - want) <= 3e-7 * want), got / want - 1


@pytest.mark.parametrize("width", [49152, 300, 512])
def test_row_reductions_equal_the_plain_ones(width):
    x = mx.random.normal((2, 3, width), key=mx.random.key(2)) * 5
    assert mx.array_equal(fastexp.row_max(x), x.max(axis=-1, keepdims=True)).item()
    assert mx.allclose(fastexp.row_sum(x), x.sum(axis=-1, keepdims=True), rtol=1e-5,
                       atol=1e-3).item()


def test_off_outside_enabled_in_stock_mode_and_for_other_dtypes():
    x = mx.array([-3.3, -0.7, 0.0, 2.5], dtype=mx.float32)
    assert fastexp.applies(x)
    with kernels.using("stock"):
        assert not fastexp.applies(x)
    assert not fastexp.applies(x.astype(mx.bfloat16))
    token = fastexp._ON.set(False)
    try:
        assert not fastexp.applies(x)
        # Off, the ops are MLX's own, bit for bit.
        assert mx.array_equal(fastexp.exp(x), mx.exp(x)).item()
        assert mx.array_equal(fastexp.sigmoid(x), mx.sigmoid(x)).item()
    finally:
        fastexp._ON.reset(token)


def test_environment_switch_turns_it_off(monkeypatch):
    monkeypatch.setenv("MACFT_FAST_EXP", "0")
    monkeypatch.setattr(fastexp, "_STATE", {})
    assert not fastexp.available()
    assert not fastexp.applies(mx.zeros((4,)))
