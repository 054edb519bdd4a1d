"""Matrix-product throughput on this machine: the BLAS macft loads vs MLX's bundled one.

    python bench/blas.py

Prints one table: float32 matmul GFLOP/s with the BLAS macft loads and with MLX's reference
BLAS (MACFT_BLAS=0, in a subprocess), and a 4-bit layer through MLX's quantized_matmul vs
macft's dequantize-then-BLAS path.
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

    out = {"blas": runtime.BLAS_STATUS}
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


def main() -> None:
    if "--child" in sys.argv:
        print(json.dumps(measure()))
        return
    rows = {}
    for label, env in (("macft", {}), ("MLX bundled", {"MACFT_BLAS": "0"})):
        proc = subprocess.run([sys.executable, __file__, "--child"], capture_output=True,
                              text=True, env=dict(os.environ, **env), check=True)
        rows[label] = json.loads(proc.stdout.strip().splitlines()[-1])
    keys = [k for k in rows["macft"] if k != "blas"]
    print(f"{'GFLOP/s (float32)':<24}" + "".join(f"{label:>16}" for label in rows))
    for key in keys:
        print(f"{key:<24}" + "".join(f"{rows[label][key]:>16.1f}" for label in rows))
    for label, r in rows.items():
        print(f"{label}: {r['blas']}")


if __name__ == "__main__":
    main()
