"""Peak memory and time of the training kernels' paths on this machine.

    python bench/kernels.py [--lengths 512,1024,2048,4096] [--no-ce]

Attention forward+backward (SmolLM2-135M's shape: 9 query heads, 3 key/value heads, head dim
64, batch 1, causal, float32): MLX's ``scaled_dot_product_attention`` and its gradient
(``kernels: stock``) against ``kernels.attention.tiled`` (``kernels: reference``, the path
"auto" takes on CPU for long sequences). Then the cross-entropy table of bench/kernels_ce.py
(vocabularies 49k and 151k, 4 x 2048 tokens). Each measurement runs in its own process and
reports MLX's peak memory (inputs included) and the wall time of one forward+backward.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HEADS, KV_HEADS, HEAD_DIM = 9, 3, 64


def child(t: int, mode: str) -> dict:
    import macft  # noqa: F401  (loads OpenBLAS before mlx)
    import mlx.core as mx

    from macft import kernels
    from macft.kernels import attention

    mx.random.seed(0)
    q = mx.random.normal((1, HEADS, t, HEAD_DIM))
    k = mx.random.normal((1, KV_HEADS, t, HEAD_DIM))
    v = mx.random.normal((1, KV_HEADS, t, HEAD_DIM))
    g = mx.random.normal((1, HEADS, t, HEAD_DIM))
    mx.eval(q, k, v, g)
    scale = HEAD_DIM ** -0.5

    def loss(q, k, v):
        if mode == "stock":
            out = mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask="causal")
        else:
            out = attention.tiled(q, k, v, scale, causal=True)
        return (out * g).sum()

    step = mx.value_and_grad(loss, argnums=(0, 1, 2))
    mx.synchronize()
    inputs = mx.get_active_memory()
    mx.reset_peak_memory()
    start = time.perf_counter()
    with kernels.using(mode):
        value, grads = step(q, k, v)
        mx.eval(value, grads)
    seconds = time.perf_counter() - start
    return {"value": value.item(), "peak": mx.get_peak_memory(), "inputs": inputs,
            "seconds": seconds}


def _run(t: int, mode: str) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", str(t), mode],
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def attention_table(lengths) -> list[dict]:
    rows = []
    print(f"attention forward+backward, batch 1, {HEADS} query / {KV_HEADS} kv heads, "
          f"head dim {HEAD_DIM}, causal, float32")
    print("| T | MLX sdpa peak MB | tiled peak MB | peak ratio | MLX s | tiled s | "
          "rel. diff of sum(out*g) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for t in lengths:
        stock, tiled = _run(t, "stock"), _run(t, "reference")
        ratio = tiled["peak"] / stock["peak"]
        diff = abs(tiled["value"] - stock["value"]) / max(abs(stock["value"]), 1e-9)
        print(f"| {t} | {stock['peak'] / 2**20:,.0f} | {tiled['peak'] / 2**20:,.0f} | "
              f"{ratio:.2f}x | {stock['seconds']:.2f} | {tiled['seconds']:.2f} | {diff:.1e} |",
              flush=True)
        rows.append({"t": t, "stock": stock, "tiled": tiled, "ratio": ratio})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", default="512,1024,2048,4096")
    p.add_argument("--no-ce", action="store_true", help="skip the cross-entropy table")
    args = p.parse_args()
    attention_table([int(x) for x in args.lengths.split(",")])
    if not args.no_ce:
        print()
        sys.path.insert(0, str(Path(__file__).parent))
        from kernels_ce import cross_entropy_table

        cross_entropy_table()


if __name__ == "__main__":
    if "--child" in sys.argv:
        i = sys.argv.index("--child")
        print(json.dumps(child(int(sys.argv[i + 1]), sys.argv[i + 2])))
    else:
        main()
