"""Device kernels prove themselves: a parity check against their reference, on this device, cached.

Every device kernel (the Metal ones now) is registered here with the reference it replaces and
its parity cases: the shapes and variants the dispatchers send it (causal, packed, grouped-query
heads, each head dim, each compute dtype). A case runs the kernel and the reference on the same
inputs, on the device, and compares the values and the gradients (through ``mx.vjp`` with one
random cotangent). ``kernels: auto`` uses a kernel only once it passed every case here; a
compile error, a crash or a mismatch keeps the reference and never fails the run.
``kernels: device`` uses the kernel wherever it applies, unchecked.

Verdicts are cached as JSON in the macft cache folder, one entry per (device, MLX version,
macft version) and kernel, with a fingerprint of the kernel's sources, so the check runs once
per machine and again after an upgrade. ``for_run`` (called by the trainer at set-up) runs or
reads them and returns the run's ``KernelCheck`` events; ``pick`` (called by the dispatchers,
also inside compiled steps) only reads what it found.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import mlx.core as mx
import numpy as np

from macft import runs

CACHE_FILE = "kernel-checks.json"

# Tolerances against the reference: the largest absolute difference, over the larger of 1 and
# the reference's largest magnitude (the kernels accumulate in float32 and round the result).
TOLERANCE = {"float32": 1e-4, "float16": 1e-2, "bfloat16": 5e-2}
DTYPES = (mx.float32, mx.float16, mx.bfloat16)


@dataclass(frozen=True)
class Case:
    """One parity case: ``make()`` returns the op's positional arguments (arrays in the case's
    dtype, built from a fixed seed) and ``grads``: (argument index, name) of the arrays whose
    gradients are compared."""

    name: str
    dtype: str
    make: Callable[[], tuple]
    grads: tuple[tuple[int, str], ...]
    kwargs: dict = field(default_factory=dict)


@dataclass(frozen=True)
class DeviceKernel:
    """A device kernel for one op's dispatcher.

    ``kernel`` and ``reference`` take the same arguments; ``available()``: it can run here at
    all (e.g. Metal present and the default device); ``fits(*args)``: it handles this call's
    shapes (checked by the dispatcher per call); ``fingerprint``: changes when its code does.
    """

    name: str                 # "attention.metal"
    op: str                   # the dispatcher that may call it: "attention", "cross_entropy", ...
    device: str               # what it runs on, in words: "Metal"
    kernel: Callable
    reference: Callable
    cases: Callable[[], list[Case]]
    available: Callable[[], bool]
    fits: Callable[..., bool] = lambda *args: True
    fingerprint: str = ""


@dataclass(frozen=True)
class Verdict:
    kernel: str
    passed: bool
    detail: str               # "54 cases" or the failed case and what failed
    cases: int
    checked: str              # when (UTC, ISO 8601)
    cached: bool = False      # read from the cache, not computed by this process

    def as_json(self) -> dict:
        return {"passed": self.passed, "detail": self.detail, "cases": self.cases,
                "checked": self.checked}


# ----- where verdicts live ---------------------------------------------------------------------

def cache_path() -> Path:
    from macft import blas

    return blas.cache_dir() / CACHE_FILE


def device_name() -> str:
    """The device MLX computes on, in words: "Metal: Apple M2 Pro", "cpu: AMD EPYC (x86_64)"."""
    if mx.default_device() == mx.gpu:
        if mx.metal.is_available():
            info = _metal_info()
            return f"Metal: {info.get('device_name', 'unknown GPU')}"
        return "gpu"
    return f"cpu: {_cpu_model()} ({platform.machine()})"


@functools.cache
def _cpu_model() -> str:
    from macft import blas

    return blas.cpu_model()


@functools.cache
def _metal_info() -> dict:
    get = getattr(mx, "device_info", None) or mx.metal.device_info
    try:
        return dict(get())
    except Exception:       # noqa: BLE001 - a description only
        return {}


def cache_key() -> str:
    """One cache entry per (device, MLX version, macft version)."""
    from macft import __version__

    return f"{device_name()} | mlx {mx.__version__} | macft {__version__}"


def _read_cache() -> dict:
    try:
        data = json.loads(cache_path().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(data: dict) -> None:
    """Atomic (a temporary file renamed over the old one); a read-only cache folder is not an
    error, the check then runs again next time."""
    path = cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        runs.atomic_write(path, json.dumps(data, indent=1, sort_keys=True) + "\n")
    except OSError:
        pass


def cached(kernel: DeviceKernel) -> Verdict | None:
    """The cached verdict of ``kernel`` on this device, MLX and macft, if any."""
    row = _read_cache().get(cache_key(), {}).get(kernel.name)
    if not isinstance(row, dict) or row.get("fingerprint") != kernel.fingerprint:
        return None
    return Verdict(kernel.name, bool(row.get("passed")), str(row.get("detail", "")),
                   int(row.get("cases", 0)), str(row.get("checked", "")), cached=True)


def _store(kernel: DeviceKernel, verdict: Verdict) -> None:
    data = _read_cache()
    entry = data.setdefault(cache_key(), {})
    entry[kernel.name] = dict(verdict.as_json(), fingerprint=kernel.fingerprint)
    _write_cache(data)


# ----- the check -------------------------------------------------------------------------------

def _upcast(x):
    if isinstance(x, mx.array) and mx.issubdtype(x.dtype, mx.floating):
        return x.astype(mx.float32)
    return x


def _vjp(fn, args: tuple, kwargs: dict, grads, cotangent: np.ndarray):
    """fn's output and the gradients of sum(cotangent * output) for the ``grads`` arguments,
    as float64 numpy arrays (the cotangent in the output's dtype)."""
    at = [i for i, _ in grads]

    def call(*primals):
        full = list(args)
        for i, p in zip(at, primals):
            full[i] = p
        return fn(*full, **kwargs)

    primals = [args[i] for i in at]
    dtype = call(*primals).dtype
    (out,), vjps = mx.vjp(call, primals, [mx.array(cotangent).astype(dtype)])
    mx.eval(out, vjps)
    return [np.array(x.astype(mx.float32), np.float64) for x in (out, *vjps)]


def compare(kernel: DeviceKernel, case: Case) -> str | None:
    """None when the kernel matches its reference on this case, else what differed.

    The reference runs in float32 on the same (rounded) inputs and cotangent, so a float16 or
    bfloat16 case measures the kernel's error, not the reference's."""
    args = case.make()
    ref_args = tuple(_upcast(a) for a in args)
    shape = kernel.reference(*ref_args, **case.kwargs).shape
    cot = mx.array(np.random.default_rng(1).normal(0, 1, shape).astype(np.float32))
    cot = np.array(cot.astype(getattr(mx, case.dtype)).astype(mx.float32))
    want = _vjp(kernel.reference, ref_args, case.kwargs, case.grads, cot)
    got = _vjp(kernel.kernel, args, case.kwargs, case.grads, cot)
    tol = TOLERANCE[case.dtype]
    for name, have, ref in zip(["output", *(f"grad of {n}" for _, n in case.grads)], got, want):
        if have.shape != ref.shape:
            return f"{name} has shape {have.shape}, the reference {ref.shape}"
        if not np.all(np.isfinite(have)):
            return f"{name} is not finite"
        err = float(np.max(np.abs(have - ref))) / max(1.0, float(np.max(np.abs(ref))))
        if not err <= tol:
            return f"{name} differs by {err:.2g} (tolerance {tol:g})"
    return None


def check(kernel: DeviceKernel) -> Verdict:
    """Run every parity case of ``kernel`` on this device; the first failure ends the check.
    An exception (a kernel that does not compile, a crash in the op) is a failure too."""
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    cases: list[Case] = []
    where = ""
    try:
        cases = kernel.cases()
        for case in cases:
            where = f"case {case.name}: "
            problem = compare(kernel, case)
            if problem is not None:
                return Verdict(kernel.name, False, where + problem, len(cases), when)
    except Exception as exc:       # noqa: BLE001 - any failure keeps the reference
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        return Verdict(kernel.name, False, f"{where}{type(exc).__name__}: {first}", len(cases),
                       when)
    finally:
        mx.clear_cache()
    return Verdict(kernel.name, True, f"{len(cases)} cases", len(cases), when)


# ----- the registry ----------------------------------------------------------------------------

_EXTRA: list[DeviceKernel] = []          # registered by ``registered`` (tests, new backends)
_VERDICTS: dict[tuple[str, str, str], Verdict] = {}   # what ``prepare`` found, per cache key


def registry() -> list[DeviceKernel]:
    """Every device kernel, those registered by ``registered`` first."""
    return [*_EXTRA, *_metal_kernels()]


@contextlib.contextmanager
def registered(kernel: DeviceKernel):
    """Within this block ``kernel`` is a device kernel of its op (ahead of the built-in ones):
    the hook for a new backend, and for tests that stand a CPU function in for one."""
    _EXTRA.insert(0, kernel)
    try:
        yield kernel
    finally:
        _EXTRA.remove(kernel)
        for key in [k for k in _VERDICTS if k[1] == kernel.name]:
            del _VERDICTS[key]


def _memo_key(kernel: DeviceKernel) -> tuple[str, str, str]:
    return (cache_key(), kernel.name, kernel.fingerprint)


def verdict(kernel: DeviceKernel) -> Verdict:
    """The cached verdict, else the check run now (and cached)."""
    found = cached(kernel)
    if found is None:
        found = check(kernel)
        _store(kernel, found)
    _VERDICTS[_memo_key(kernel)] = found
    return found


def prepare() -> list[Verdict]:
    """Verdicts for every device kernel that can run here (checked now where none is cached).
    The trainer calls this before ``kernels: auto`` trains; the dispatchers then use the kernels
    that passed."""
    return [verdict(k) for k in registry() if can_run(k)]


def for_run(mode: str) -> list:
    """The ``KernelCheck`` events of a run in this ``kernels`` mode, one per device kernel that
    can run here: under "auto" each is checked (or its verdict read from the cache) now."""
    from macft.events import KernelCheck

    if mode == "device":
        return [KernelCheck(k.name, "unchecked", "") for k in registry() if can_run(k)]
    if mode != "auto":
        return []
    return [KernelCheck(v.kernel, "passed" if v.passed else "failed", v.detail, v.cached)
            for v in prepare()]


def can_run(kernel: DeviceKernel) -> bool:
    """The kernel's device is here (``available()``; one that raises is not)."""
    try:
        return bool(kernel.available())
    except Exception:       # noqa: BLE001 - a probe that fails means "not here"
        return False


def pick(op: str, *args):
    """The device kernel the dispatcher of ``op`` should call for these arguments, or None
    for its own path: under ``kernels: auto`` one that can run here, fits the arguments and
    passed its check (``prepare``); under ``kernels: device`` one that can run and fits."""
    from macft import kernels

    mode = kernels.mode()
    if mode not in ("auto", "device"):
        return None
    for k in registry():
        if k.op != op or not k.available() or not k.fits(*args):
            continue
        if mode == "device":
            return k.kernel
        found = _VERDICTS.get(_memo_key(k))
        if found is not None and found.passed:
            return k.kernel
    return None


# ----- parity cases ----------------------------------------------------------------------------

def _name(dtype) -> str:
    return str(dtype).rsplit(".", 1)[-1]


def _normal(rng, shape, scale=1.0):
    return rng.normal(0, scale, shape).astype(np.float32)


def packed_segments(b: int, t: int, lengths: list[list[int]]) -> np.ndarray:
    """Segment ids of rows packed with examples of these lengths, -1 for the padding."""
    seg = np.full((b, t), -1, np.int32)
    for row in range(b):
        at = 0
        for i, n in enumerate(lengths[row]):
            seg[row, at:at + n] = i
            at += n
    return seg


# (name, b, hq, hkv, t, s, d, causal, packed lengths or None)
ATTENTION_SHAPES = (
    *((f"causal gqa d={d}", 2, 4, 2, 45, 45, d, True, None) for d in (64, 80, 96, 128)),
    ("packed gqa d=64", 2, 4, 2, 45, 45, 64, True, [[20, 25], [45]]),
    ("packed mqa d=128", 2, 4, 1, 33, 33, 128, True, [[1, 31], [8, 8, 8]]),
    ("noncausal mha d=80", 1, 3, 3, 29, 29, 80, False, None),
    ("causal offset d=96", 1, 4, 2, 11, 40, 96, True, None),
)


def attention_cases(dtypes=DTYPES) -> list[Case]:
    """The dispatcher's calls: causal, packed (segment ids), grouped-query and multi-query
    heads, non-causal, queries at the end of a longer key sequence; every head dim of the Metal
    kernels, every compute dtype. Arguments (q, k, v, scale, causal, segments)."""
    cases = []
    for dtype in dtypes:
        for i, (name, b, hq, hkv, t, s, d, causal, lengths) in enumerate(ATTENTION_SHAPES):
            def make(b=b, hq=hq, hkv=hkv, t=t, s=s, d=d, causal=causal, lengths=lengths,
                     dtype=dtype, seed=i):
                rng = np.random.default_rng(seed)
                q, k, v = (mx.array(_normal(rng, (b, h, n, d))).astype(dtype)
                           for h, n in ((hq, t), (hkv, s), (hkv, s)))
                seg = mx.array(packed_segments(b, t, lengths)) if lengths else None
                return q, k, v, d ** -0.5, causal, seg
            cases.append(Case(f"{name} {_name(dtype)}", _name(dtype), make,
                              ((0, "q"), (1, "k"), (2, "v"))))
    return cases


def cross_entropy_cases(dtypes=DTYPES) -> list[Case]:
    """One chunk and many, a trained and a frozen head, every compute dtype. Arguments
    (h, weight, targets) and the keywords of ``linear_cross_entropy``."""
    cases = []
    chunks = {"one chunk": {}, "7 chunks": {"chunk_elements": 10_000, "single_elements": 0}}
    for dtype in dtypes:
        for label, extra in chunks.items():
            for trained in (True, False):
                def make(dtype=dtype):
                    rng = np.random.default_rng(3)
                    h = mx.array(_normal(rng, (70, 64))).astype(dtype)
                    w = mx.array(_normal(rng, (1000, 64), 0.2)).astype(dtype)
                    t = mx.array(rng.integers(0, 1000, 70).astype(np.int32))
                    return h, w, t
                head = "trained head" if trained else "frozen head"
                cases.append(Case(f"{label} {head} {_name(dtype)}", _name(dtype), make,
                                  ((0, "h"), (1, "weight")),
                                  dict(extra, weight_grad=trained)))
    return cases


def qlora_cases(dtypes=DTYPES) -> list[Case]:
    """4- and 8-bit bases in groups of 32, 64 and 128, every compute dtype. Arguments
    (x, w, scales, biases, lora_a, lora_b, scale, group_size, bits)."""
    cases = []
    for dtype in dtypes:
        for bits in (4, 8):
            for group_size in (32, 64, 128):
                def make(bits=bits, group_size=group_size, dtype=dtype):
                    rng = np.random.default_rng(bits * 1000 + group_size)
                    w = mx.array(_normal(rng, (96, 256), 0.1))
                    wq, scales, biases = mx.quantize(w, group_size=group_size, bits=bits)
                    x = mx.array(_normal(rng, (2, 5, 256))).astype(dtype)
                    a = mx.array(_normal(rng, (256, 4), 0.1))
                    b = mx.array(_normal(rng, (4, 96), 0.1))
                    return (x, wq, scales.astype(dtype), biases.astype(dtype), a, b, 2.0,
                            group_size, bits)
                cases.append(Case(f"{bits}-bit groups of {group_size} {_name(dtype)}",
                                  _name(dtype), make, ((0, "x"), (4, "lora_a"), (5, "lora_b"))))
    return cases


# ----- the Metal kernels -----------------------------------------------------------------------

def metal_here() -> bool:
    """Metal is present and MLX computes on the GPU."""
    return mx.metal.is_available() and mx.default_device() == mx.gpu


def _fingerprint(metal_kernels) -> str:
    text = "\n".join(f"{k.name}\n{k.header}\n{k.source}\n{k.inputs}\n{k.outputs}"
                     for k in metal_kernels)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


@functools.cache
def _metal_kernels() -> tuple[DeviceKernel, ...]:
    from macft.kernels import attention, cross_entropy, qmatmul

    return (
        DeviceKernel(
            "attention.metal", "attention", "Metal", attention.metal_attention,
            attention.tiled, attention_cases, metal_here, attention.metal_fits,
            _fingerprint(attention.METAL_KERNELS)),
        DeviceKernel(
            "cross_entropy.metal", "cross_entropy", "Metal",
            functools.partial(cross_entropy.linear_cross_entropy, kernel=True),
            cross_entropy.linear_cross_entropy, cross_entropy_cases, metal_here,
            fingerprint=_fingerprint(cross_entropy.METAL_KERNELS)),
        DeviceKernel(
            "qlora.metal", "qlora", "Metal", functools.partial(qmatmul.qlora_linear, kernel=True),
            qmatmul.qlora_linear, qlora_cases, metal_here,
            fingerprint=_fingerprint(qmatmul.METAL_KERNELS)),
    )
