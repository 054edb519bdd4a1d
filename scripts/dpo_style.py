"""Greedy answers of a base model and a DPO run on held-out prompts, and how chatty they are.

    python scripts/dpo_style.py runs/dpo-quickstart [--data data/dpo/test.jsonl] [--limit 60]

Prints, for each model, the mean answer length in words and the share of answers that open
with filler ("Great question", "Sure", "Certainly", ...), then a few answers side by side.
"""

from __future__ import annotations

import argparse
import re

import macft  # noqa: F401

FILLER = re.compile(r"^\s*(great|sure|certainly|absolutely|what a|of course|hello|hi|"
                    r"i'd be happy|thanks|good question)", re.IGNORECASE)


def answers(target: str, prompts: list[str], system: str | None) -> list[str]:
    from macft.generation import chat_prompt, greedy
    from macft.models.load import load_for_inference

    loaded, _ = load_for_inference(target)
    ids = [chat_prompt(loaded.tokenizer, p, system) for p in prompts]
    return greedy(loaded.model, loaded.tokenizer, ids, 64, batch_size=len(ids))


def describe(texts: list[str]) -> tuple[float, float]:
    words = sum(len(t.split()) for t in texts) / len(texts)
    filler = sum(bool(FILLER.match(t)) for t in texts) / len(texts)
    return words, filler


def main() -> None:
    from macft import recipe as recipe_mod
    from macft.data import load_rows

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--data", default="data/dpo/test.jsonl")
    ap.add_argument("--limit", type=int, default=60)
    args = ap.parse_args()
    recipe = recipe_mod.load(f"{args.run}/recipe.yaml")
    prompts = [r.data["prompt"] for r in load_rows(args.data)[:args.limit]]
    base = answers(recipe.model.path, prompts, recipe.data.system_prompt)
    tuned = answers(args.run, prompts, recipe.data.system_prompt)
    print(f"{len(prompts)} held-out prompts from {args.data}")
    print(f"{'model':<32}{'mean words':>12}{'filler opening':>16}")
    for name, texts in ((recipe.model.path, base), (args.run, tuned)):
        words, filler = describe(texts)
        print(f"{name:<32}{words:>12.1f}{filler:>16.0%}")
    for p, b, t in list(zip(prompts, base, tuned))[:3]:
        print(f"\nQ: {p}\n  base:  {b.strip()[:150]}\n  tuned: {t.strip()[:150]}")


if __name__ == "__main__":
    main()
