"""Greedy exact match of a GGUF (optionally + LoRA adapter GGUF) in llama.cpp on a chat JSONL.

    python scripts/gguf_exact_match.py MODEL.gguf [--lora ADAPTER.gguf]
        [--data data/quickstart/test.jsonl] [--max-tokens 48]

Compare with `macft eval RUN --data ...` (the same prompts, greedy, exact match after trimming).
"""

from __future__ import annotations

import argparse
import json
import time

import macft  # noqa: F401
from macft.export.llamacpp import open_gguf


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("gguf")
    ap.add_argument("--lora")
    ap.add_argument("--data", default="data/quickstart/test.jsonl")
    ap.add_argument("--max-tokens", type=int, default=48)
    args = ap.parse_args()
    llm = open_gguf(args.gguf, n_ctx=512, lora=args.lora)
    rows = [json.loads(line) for line in open(args.data) if line.strip()]
    start, hits = time.time(), 0
    for row in rows:
        out = llm.create_chat_completion(messages=row["messages"][:-1], temperature=0.0,
                                         max_tokens=args.max_tokens)
        prediction = out["choices"][0]["message"]["content"] or ""
        hits += prediction.strip() == row["messages"][-1]["content"].strip()
    print(f"{args.gguf} (lora {args.lora}): exact match {hits}/{len(rows)} "
          f"in {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
