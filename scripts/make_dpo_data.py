"""Generate the bundled preference set: concise answers (chosen) vs padded, wordy ones (rejected).

    python scripts/make_dpo_data.py            # writes data/dpo/{train,valid,test}.jsonl

Every prompt is a short factual question with a known answer. The chosen answer states it in
one sentence; the rejected answer buries the same fact in a wordy explanation, the habit of
small instruct models ("To answer this, we need to ...").
Deterministic for a given --seed; test prompts never appear in train or valid.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid",
    "Portugal": "Lisbon", "Japan": "Tokyo", "China": "Beijing", "India": "New Delhi",
    "Canada": "Ottawa", "Australia": "Canberra", "Brazil": "Brasilia", "Egypt": "Cairo",
    "Kenya": "Nairobi", "Norway": "Oslo", "Sweden": "Stockholm", "Finland": "Helsinki",
    "Poland": "Warsaw", "Greece": "Athens", "Turkey": "Ankara", "Russia": "Moscow",
    "Mexico": "Mexico City", "Argentina": "Buenos Aires", "Chile": "Santiago", "Peru": "Lima",
    "Ireland": "Dublin", "Austria": "Vienna", "Hungary": "Budapest", "Denmark": "Copenhagen",
    "Belgium": "Brussels", "Netherlands": "Amsterdam", "Switzerland": "Bern",
    "Thailand": "Bangkok", "Vietnam": "Hanoi", "South Korea": "Seoul", "Cuba": "Havana",
    "Morocco": "Rabat", "Nigeria": "Abuja", "Iran": "Tehran", "Iraq": "Baghdad",
    "Czechia": "Prague", "Romania": "Bucharest", "Ukraine": "Kyiv", "Colombia": "Bogota",
}
OPPOSITES = {
    "hot": "cold", "up": "down", "big": "small", "fast": "slow", "light": "dark",
    "open": "closed", "early": "late", "happy": "sad", "full": "empty", "old": "new",
    "hard": "soft", "wet": "dry", "loud": "quiet", "rich": "poor", "strong": "weak",
}
OPENERS = [
    "Great question! I'd be happy to help you with that.",
    "Sure thing! That's a really interesting thing to ask about.",
    "Certainly! Let me think about this carefully for you.",
    "What a wonderful question! Many people wonder about this.",
    "Absolutely, I can help with that! Here is what I know.",
]
CLOSERS = [
    "I hope this helps! Let me know if you have any other questions.",
    "Feel free to ask me anything else you would like to know!",
    "Is there anything else I can help you with today?",
    "Thanks for asking, and have a wonderful day!",
]


def facts(rng: random.Random) -> list[tuple[str, str]]:
    out = [(f"What is the capital of {country}?", f"The capital of {country} is {city}.")
           for country, city in CAPITALS.items()]
    out += [(f"What is the opposite of '{a}'?", f"The opposite of '{a}' is '{b}'.")
            for a, b in OPPOSITES.items()]
    pairs = set()
    while len(pairs) < 160:
        pairs.add((rng.randint(2, 60), rng.randint(2, 60)))
    out += [(f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}.") for a, b in sorted(pairs)]
    return out


LEADS = [
    "To answer this question, we need to think about it step by step.",
    "This is a common question, and it helps to look at the background first.",
    "Let's break this down carefully so that the answer is clear.",
    "There are a few things to consider here before giving the answer.",
]
TAILS = [
    "This is an important fact that many people learn in school.",
    "Understanding this can help with many other questions as well.",
    "It is always a good idea to double-check facts like this one.",
    "Knowing this is useful in everyday life and in many situations.",
]


def row(question: str, answer: str, rng: random.Random) -> dict:
    wordy = (f"{rng.choice(OPENERS)} {rng.choice(LEADS)} After thinking about it, "
             f"{answer[0].lower() + answer[1:]} {rng.choice(TAILS)} {rng.choice(CLOSERS)}")
    return {"prompt": question, "chosen": answer, "rejected": wordy}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="data/dpo")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    items = facts(rng)
    rng.shuffle(items)
    rows = [row(q, a, rng) for q, a in items]
    splits = {"test": rows[:60], "valid": rows[60:90], "train": rows[90:]}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, part in splits.items():
        with (out / f"{name}.jsonl").open("w") as fh:
            for r in part:
                fh.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"wrote {out}: " + ", ".join(f"{k} {len(v)}" for k, v in splits.items()))


if __name__ == "__main__":
    main()
