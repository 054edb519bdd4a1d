"""Greedy answers of a base model and a DPO run on held-out prompts, and how chatty they are.

    python scripts/dpo_style.py runs/dpo-quickstart [--data data/dpo/test.jsonl] [--limit 60]

Prints, for each model, the mean answer length in words, the share of answers that open with
filler ("Great question", "Sure", "Certainly", ...), the share that open the way the chosen
answer does (its first three words) and the share that are exactly the chosen answer, then a
few answers side by side.
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


def describe(texts: list[str], chosen: list[str]) -> tuple[float, float, float, float]:
    n = len(texts)
    words = sum(len(t.split()) for t in texts) / n
    filler = sum(bool(FILLER.match(t)) for t in texts) / n
    opens = sum(t.split()[:3] == c.split()[:3] for t, c in zip(texts, chosen)) / n
    exact = sum(t.strip() == c.strip() for t, c in zip(texts, chosen)) / n
    return words, filler, opens, exact


def main() -> None:
    from macft import recipe as recipe_mod
    from macft.data import load_rows

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--data", default="data/dpo/test.jsonl")
    ap.add_argument("--limit", type=int, default=60)
    args = ap.parse_args()
    recipe = recipe_mod.load(f"{args.run}/recipe.yaml")
    rows = load_rows(args.data)[:args.limit]
    prompts = [r.data["prompt"] for r in rows]
    chosen = [r.data["chosen"] for r in rows]
    base = answers(recipe.model.path, prompts, recipe.data.system_prompt)
    tuned = answers(args.run, prompts, recipe.data.system_prompt)
    print(f"{len(prompts)} held-out prompts from {args.data}")
    print(f"{'model':<28}{'mean words':>11}{'filler start':>14}{'opens like chosen':>19}"
          f"{'= chosen':>10}")
    for name, texts in ((recipe.model.path, base), (args.run, tuned)):
        words, filler, opens, exact = describe(texts, chosen)
        print(f"{name:<28}{words:>11.1f}{filler:>14.0%}{opens:>19.0%}{exact:>10.0%}")
    for p, b, t in list(zip(prompts, base, tuned))[:3]:
        print(f"\nQ: {p}\n  base:  {b.strip()[:150]}\n  tuned: {t.strip()[:150]}")


if __name__ == "__main__":
    main()
