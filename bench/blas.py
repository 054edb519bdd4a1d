"""Matrix-product throughput on this machine: the BLAS macft loads vs MLX's bundled one.

    python bench/blas.py

Prints the machine (CPU model, AVX2 / AVX-512), then one table: float32 matmul GFLOP/s with the
BLAS macft loads, with every other OpenBLAS it could load on this CPU (forced through
MACFT_BLAS, each in its own subprocess) and with MLX's reference BLAS (MACFT_BLAS=0), and a
4-bit layer through MLX's quantized_matmul vs macft's dequantize-then-BLAS path.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time


def _rate(fn, flops: float, repeat: int = 5) -> float:
    import mlx.core as mx

    mx.eval(fn())
    start = time.perf_counter()
    for _ in range(repeat):
        mx.eval(fn())
    return flops * repeat / (time.perf_counter() - start) / 1e9


def measure() -> dict:
    import macft  # noqa: F401  (loads OpenBLAS unless MACFT_BLAS=0)
    import mlx.core as mx

    from macft import runtime
    from macft.kernels.qmatmul import reference

    out = {"blas": runtime.BLAS_STATUS, "library": runtime.blas_info().library}
    if "--quick" in sys.argv:
        return out
    for n in (512, 1024, 2048):
        a, b = mx.random.normal((n, n)), mx.random.normal((n, n))
        mx.eval(a, b)
        out[f"matmul {n}"] = _rate(lambda: a @ b, 2 * n ** 3, repeat=3 if n == 2048 else 5)
    m, k, n = 1024, 576, 1536           # a SmolLM2 MLP projection over 1024 tokens
    x = mx.random.normal((m, k))
    w, s, bias = mx.quantize(mx.random.normal((n, k)), group_size=32, bits=4)
    mx.eval(x, w, s, bias)
    out["q4 quantized_matmul"] = _rate(
        lambda: mx.quantized_matmul(x, w, s, bias, transpose=True, group_size=32, bits=4),
        2 * m * k * n)
    out["q4 dequantize+matmul"] = _rate(lambda: reference(x, w, s, bias, 32, 4), 2 * m * k * n)
    return out


def _child(env: dict, quick: bool = False) -> str:
    argv = [sys.executable, __file__, "--child"] + (["--quick"] if quick else [])
    proc = subprocess.run(argv, capture_output=True, text=True, env=dict(os.environ, **env),
                          check=True)
    return proc.stdout.strip().splitlines()[-1]


def main() -> None:
    if "--child" in sys.argv:
        print(json.dumps(measure()))
        return
    from macft import blas

    flags = blas.cpu_flags()
    simd = "AVX-512" if "avx512f" in flags else ("AVX2" if "avx2" in flags else "no AVX2")
    print(f"machine: {blas.cpu_model()}, {os.cpu_count()} cores, {simd}")
    loaded = json.loads(_child({}, quick=True))["library"]
    runs = [("macft", {})]
    for source, lib in blas.candidates():
        verdict = blas.probe(lib)
        if str(lib) != loaded and verdict.get("ok"):
            runs.append((source, {"MACFT_BLAS": str(lib)}))
        if verdict.get("ok") and verdict.get("core") != "HASWELL" and "avx2" in flags \
                and source != "cmeel-openblas":
            # A DYNAMIC_ARCH build with the kernels it picks on an AVX2-only CPU (an estimate
            # of that CPU's BLAS on this one; not a measurement of such a machine).
            runs.append((f"{source} HASWELL",
                         {"MACFT_BLAS": str(lib), "OPENBLAS_CORETYPE": "Haswell"}))
    runs.append(("MLX bundled", {"MACFT_BLAS": "0"}))
    rows = {label: json.loads(_child(env)) for label, env in runs}
    keys = [k for k in rows["macft"] if k not in ("blas", "library")]
    width = max(16, *(len(label) + 2 for label in rows))
    print(f"{'GFLOP/s (float32)':<24}" + "".join(f"{label:>{width}}" for label in rows))
    for key in keys:
        print(f"{key:<24}" + "".join(f"{rows[label][key]:>{width}.1f}" for label in rows))
    bundled = rows["MLX bundled"]["matmul 1024"]
    print(f"{'matmul 1024 / bundled':<24}" + "".join(
        f"{r['matmul 1024'] / bundled:>{width - 1}.1f}x" for r in rows.values()))
    for label, r in rows.items():
        print(f"{label}: {r['blas']}")


if __name__ == "__main__":
    main()
