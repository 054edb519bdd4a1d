"""Cross-entropy of the output layer at real vocabularies: full logits vs the chunked op.

    python bench/kernels_ce.py

4 x 2048 tokens, every one trained, hidden states in float32 and a frozen head (the LoRA case:
only dh is needed): hidden 576 at vocabulary 49152 (SmolLM2), 1024 at 151936 (Qwen2.5/3).
Each measurement runs in its own process, one forward+backward, and prints the peak memory
MLX reports (``mx.get_peak_memory``, inputs included) and the wall time. "full logits" is the
stock path (``kernels: stock``): all logits, then log-sum-exp; "chunked" is
``kernels.cross_entropy.linear_cross_entropy`` as the dispatcher runs it on this machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

TOKENS = 4 * 2048
CASES = ((49152, 576), (151936, 1024))


def child(vocab: int, hidden: int, mode: str) -> dict:
    import macft  # noqa: F401  (loads OpenBLAS before mlx)
    import mlx.core as mx

    from macft import kernels
    from macft.kernels import cross_entropy as ce

    import mlx.nn as nn

    mx.random.seed(0)
    h = mx.random.normal((TOKENS, hidden)) * 0.5
    head = nn.Linear(hidden, vocab, bias=False)
    head.freeze()
    targets = mx.random.randint(0, vocab, (TOKENS,))
    mx.eval(h, head.parameters(), targets)

    def loss(h):
        return ce.losses(h, head, targets).mean()

    step = mx.value_and_grad(loss)
    mx.synchronize()
    inputs = mx.get_active_memory()
    mx.reset_peak_memory()
    start = time.perf_counter()
    with kernels.using(mode):
        value, dh = step(h)
        mx.eval(value, dh)
    seconds = time.perf_counter() - start
    return {"loss": value.item(), "peak": mx.get_peak_memory(), "inputs": inputs,
            "seconds": seconds, "chunks": len(ce.spans(TOKENS, vocab))}


def _run(vocab: int, hidden: int, mode: str) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", str(vocab), str(hidden), mode],
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def cross_entropy_table(cases=CASES) -> list[dict]:
    """Measure each case both ways and print the table; return its rows."""
    rows = []
    print(f"cross-entropy forward+backward, {TOKENS} tokens (4 x 2048), float32, frozen head")
    print("| vocab | hidden | path | chunks | loss | peak MB | peak vs full | time s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for vocab, hidden in cases:
        full = _run(vocab, hidden, "stock")
        chunked = _run(vocab, hidden, "reference")
        for label, r in (("full logits", full), ("chunked", chunked)):
            ratio = r["peak"] / full["peak"]
            chunks = 1 if r is full else r["chunks"]
            print(f"| {vocab} | {hidden} | {label} | {chunks} | {r['loss']:.4f} | "
                  f"{r['peak'] / 2**20:,.0f} | {ratio:.2f}x | {r['seconds']:.1f} |")
            rows.append(dict(r, vocab=vocab, hidden=hidden, path=label, ratio=ratio))
    return rows


if __name__ == "__main__":
    if "--child" in sys.argv:
        i = sys.argv.index("--child")
        print(json.dumps(child(int(sys.argv[i + 1]), int(sys.argv[i + 2]), sys.argv[i + 3])))
    else:
        cross_entropy_table()
