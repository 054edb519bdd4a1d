"""Rollout speed of the GRPO quickstart: one batch of P prompts x G completions x N tokens.

    python bench/grpo_rollout.py [--tries 2] [--prompts 2] [--group 4] [--max-new 32]

The quickstart's model and adapters (``recipes/grpo-quickstart.yaml``), the first P prompts of
its training data, every completion sampled to exactly N tokens (no stop), in one process and
alternating between:

- before: every copy of a prompt prefilled on its own, OpenBLAS on all its threads while
  decoding (``MACFT_DECODE_THREADS=0``), as the code was;
- after: a prompt prefilled once for its G copies, OpenBLAS on one thread while decoding (the
  defaults);
- the two changes one at a time.

Tokens/s is the sampled tokens over the wall time of ``sample_completions``.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tries", type=int, default=2)
    ap.add_argument("--prompts", type=int, default=2)
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument("--max-new", type=int, default=32)
    args = ap.parse_args()

    import macft  # noqa: F401  (OpenBLAS before MLX)
    from macft import recipe as recipe_mod, runtime
    from macft.data import load_rows
    from macft.data.prompts import encode_prompts
    from macft.models import adapters
    from macft.models.load import load_spec
    from macft.train.objectives import grpo

    r = recipe_mod.load(ROOT / "recipes" / "grpo-quickstart.yaml")
    loaded = load_spec(r.model)
    adapters.prepare(loaded.model, r, r.train.seed)
    train = str(ROOT / r.data.train)
    prompts, _ = encode_prompts(load_rows(train)[:args.prompts], loaded.tokenizer, r.data, train)
    ids = [p.ids for p in prompts for _ in range(args.group)]
    shared = grpo.shared_prompt_caches

    def whole(model, prompts):
        return prompts, None, None

    configs = {"before": (whole, "0"), "after": (shared, "1"),
               "shared prefill only": (shared, "0"), "one thread only": (whole, "1")}
    print(f"BLAS: {runtime.blas_info().status}")
    print(f"{args.prompts} prompts x {args.group} completions x {args.max_new} tokens")
    try:
        for k in range(args.tries):
            for name, (fn, threads) in configs.items():
                grpo.shared_prompt_caches = fn
                os.environ["MACFT_DECODE_THREADS"] = threads
                tic = time.perf_counter()
                out = grpo.sample_completions(loaded.model, loaded.tokenizer, ids, args.max_new,
                                              1.0, 1.0, seed=k + 1, stop=False)
                seconds = time.perf_counter() - tic
                n = sum(len(c) for c, _ in out)
                print(f"try {k}  {name:<20}{n:>5} tokens {seconds:>8.2f} s {n / seconds:>8.1f} "
                      f"tokens/s", flush=True)
    finally:
        grpo.shared_prompt_caches = shared
        os.environ.pop("MACFT_DECODE_THREADS", None)


if __name__ == "__main__":
    main()
