"""``exp``, softmax and sigmoid for float32 on MLX's CPU backend, about ten times faster.

MLX's CPU ``exp`` is a scalar loop here (the Linux wheel is built for generic x86-64): ~13 ns
per element, as much time as the matmuls around it in attention, the 49k-vocabulary
cross-entropy and SiLU. ``mx.compile`` on the CPU generates C++ for fused elementwise graphs and
builds it with the system compiler; g++ auto-vectorizes such a loop when its body has no
branches and no calls. ``exp`` here is written that way, as the usual range reduction
``exp(x) = 2^n exp(r)`` with n = round(x log2 e), r = x - n ln 2: ``2^n`` is built in the
exponent bits of a float32 and ``exp(r)`` is a polynomial (relative error 1.2e-7 against
float64, as MLX's own ``exp``).

The graph is three compiled functions called from plain code, because one fused kernel with a
float select feeding the integer cast, or ``mx.view`` inside, does not vectorize: a clamp of x
to [-88, 88] (at -88 the exponent bits are 0 and so is the result: float32's exp underflows
there anyway), the exponent bits of ``2^n``, and the polynomial times ``2^n`` (measured: ~1.7
ns per element up to a few million elements, memory-bound above). NaN is not propagated by ``exp``; softmax and the cross-entropy take a
row maximum first, which does propagate it.

Used only where it applies: inside ``enabled()`` (see there: compiled code or no gradient),
the CPU device, float32, kernels mode not "stock", and a working compiler (probed once;
otherwise, or with ``MACFT_FAST_EXP=0``, these fall back to MLX's ops).
"""

from __future__ import annotations

import contextlib
import contextvars

import mlx.core as mx
import numpy as np

from macft import env

LOG2E = 1.4426950408889634
# Adding and subtracting 1.5 * 2^23 rounds a float32 of magnitude below 2^22 to an integer.
_ROUND = 12582912.0
# ln 2 in two parts (Cody and Waite): n * _LN2_HI is exact in float32 for |n| <= 128, so
# r = x - n ln 2 keeps its accuracy for large |x|.
_LN2_HI = 0.693359375
_LN2_LO = -2.12194440e-4
# exp(r) = 1 + r + r^2 q(r) on |r| <= ln 2 / 2, q's coefficients highest power first (the
# classic single-precision minimax fit; measured relative error 1.2e-7 against float64).
_Q = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1,
      5.0000001201e-1)
LIMIT = 88.0


def _clamp(x):
    return mx.where(x > -LIMIT, mx.where(x < LIMIT, x, LIMIT), -LIMIT)


def _clamp_shifted(x, m):
    return _clamp(x - m)


def _clamp_negabs(x):
    a = -mx.abs(x)
    return mx.where(a > -LIMIT, a, -LIMIT)


def _n_of(xc):
    return ((xc * LOG2E) + _ROUND) - _ROUND


def _exponent_bits(xc):
    return (_n_of(xc).astype(mx.int32) + 127) << 23


def _times_poly(xc, scale):
    n = _n_of(xc)
    r = (xc - n * _LN2_HI) - n * _LN2_LO
    r2 = r * r
    q0, q1, q2, q3, q4, q5 = _Q
    q = (q5 + q4 * r) + r2 * (q3 + q2 * r) + (r2 * r2) * (q1 + q0 * r)
    return (1.0 + r + r2 * q) * scale


def _sigmoid_tail(x, e):
    # e = exp(-|x|): 1 / (1 + e) for x >= 0, e / (1 + e) below. Arithmetic with the comparison
    # rather than a select of two arrays, which g++ left as a scalar loop (4 ns against 1);
    # the numerator is exactly 1 or e, so small values keep their relative accuracy.
    neg = x < 0
    return (1.0 - neg + neg * e) / (1.0 + e)


_clamp_c = mx.compile(_clamp)
_shifted_c = mx.compile(_clamp_shifted)
_negabs_c = mx.compile(_clamp_negabs)
_bits_c = mx.compile(_exponent_bits)
_poly_c = mx.compile(_times_poly)
_sigmoid_tail_c = mx.compile(_sigmoid_tail)

_STATE: dict[str, bool] = {}


def available() -> bool:
    """True when the compiled path builds and is exact to 1e-6 (checked once; MLX's own ``exp``
    is off by up to 1.6e-6 here)."""
    if "ok" not in _STATE:
        ok = env.get("MACFT_FAST_EXP") != "0"
        if ok:
            try:
                with mx.stream(mx.cpu):
                    x = mx.linspace(-80.0, 80.0, 1001)
                    got = np.array(_exp(x), dtype=np.float64)
                want = np.exp(np.array(x, dtype=np.float64))
                ok = bool(np.all(np.abs(got - want) <= 1e-6 * want))
            except Exception:       # no compiler, a failed build: MLX's ops then
                ok = False
        _STATE["ok"] = ok
    return _STATE["ok"]


_ON: contextvars.ContextVar[bool] = contextvars.ContextVar("macft_fast_exp", default=False)


@contextlib.contextmanager
def enabled(on: bool = True):
    """Within this block the ops below use the compiled path where it applies (``on=False``:
    they do not, whatever an outer block said; a run starts that way).

    Only for code that runs compiled or outside any gradient transform: inside ``mx.grad``
    or ``mx.vjp`` MLX traces through ``mx.compile``d functions instead of fusing them, and
    the dozen unfused ops are slower than ``mx.exp`` and hold more memory. The trainer turns
    it on inside its compiled step (and for evaluation, which takes no gradient).
    """
    token = _ON.set(on)
    try:
        yield
    finally:
        _ON.reset(token)


def active() -> bool:
    """Turned on (``enabled``), on the CPU, kernels not "stock", and the compiled path works."""
    from macft import kernels

    return (_ON.get() and mx.default_device() == mx.cpu and kernels.mode() != "stock"
            and available())


def applies(x: mx.array) -> bool:
    """Use the compiled path for ``x``: ``active()`` and float32."""
    return x.dtype == mx.float32 and active()


def _exp_clamped(xc):
    # At the clamp's floor n = -127: the exponent bits are 0 and so is the result.
    return _poly_c(xc, mx.view(_bits_c(xc), mx.float32))


def _exp(x, shift=None):
    return _exp_clamped(_clamp_c(x) if shift is None else _shifted_c(x, shift))


def exp(x: mx.array) -> mx.array:
    """exp(x) for |x| up to 88 (float32's range); below -88 it is 0. ``mx.exp`` where the
    compiled path does not apply."""
    return _exp(x) if applies(x) else mx.exp(x)


def exp_shifted(x: mx.array, shift: mx.array) -> mx.array:
    """exp(x - shift), the subtraction fused into the first pass."""
    return _exp(x, shift) if applies(x) else mx.exp(x - shift)


def row_max(x: mx.array) -> mx.array:
    """x.max(-1, keepdims=True) for float32 ``x``. MLX's CPU reduction along the contiguous
    axis is a scalar loop (~1.1 ns per element here); folding the row into (pieces, width) and
    reducing across the pieces first vectorizes (~0.25 ns)."""
    v = x.shape[-1]
    if applies(x):
        for width in (1024, 512, 256, 128, 64):
            if v % width == 0 and v > width:
                folded = x.reshape(*x.shape[:-1], v // width, width)
                return folded.max(axis=-2).max(axis=-1, keepdims=True)
    return x.max(axis=-1, keepdims=True)


def row_sum(x: mx.array) -> mx.array:
    """x.sum(-1, keepdims=True) for float32 ``x``, as a product with a ones vector (BLAS:
    ~0.13 ns per element against ~0.6 for MLX's CPU reduction)."""
    if not applies(x):
        return x.sum(axis=-1, keepdims=True)
    return x @ mx.ones((x.shape[-1], 1), dtype=x.dtype)


def logsumexp(x: mx.array, axis: int = -1, keepdims: bool = False) -> mx.array:
    """log(sum(exp(x))) along ``axis`` for rows with a finite maximum (``mx.logsumexp``
    otherwise)."""
    if not applies(x):
        return mx.logsumexp(x, axis=axis, keepdims=keepdims)
    m = x.max(axis=axis, keepdims=True)
    out = m + mx.log(_exp(x, m).sum(axis=axis, keepdims=True))
    return out if keepdims else out.squeeze(axis)


def softmax(x: mx.array, axis: int = -1) -> mx.array:
    """Softmax along ``axis`` (a row that is all -inf gives NaN, as ``mx.softmax``)."""
    if not applies(x):
        return mx.softmax(x, axis=axis)
    if axis in (-1, x.ndim - 1):
        e = _exp(x, row_max(x))
        return e * (1.0 / row_sum(e))
    e = _exp(x, x.max(axis=axis, keepdims=True))
    return e * (1.0 / e.sum(axis=axis, keepdims=True))


def sigmoid(x: mx.array) -> mx.array:
    """1 / (1 + exp(-x)), computed from exp(-|x|) so nothing overflows."""
    if not applies(x):
        return mx.sigmoid(x)
    return _sigmoid_tail_c(x, _exp_clamped(_negabs_c(x)))
