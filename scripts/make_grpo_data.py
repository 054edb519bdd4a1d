#!/usr/bin/env python3
"""Generate the GRPO quickstart task: short notes about a person -> one strict JSON object.

Pure standard library and fully deterministic: the same --seed always gives byte-identical
files.

    python scripts/make_grpo_data.py                  # -> data/grpo/
    python scripts/make_grpo_data.py --out DIR --seed N

Files:
    train.jsonl, valid.jsonl, test.jsonl   prompt rows for GRPO and `macft eval --rewards`:
        {"messages": [{"role": "system", ...}, {"role": "user", "content": "<note>"}],
         "reference": {"name": ..., "age": ..., "city": ...}}
    sft.jsonl   a few chat rows with the answer (the optional warm-up stage of the recipe)

The answer is checkable: the rewards json_valid (the completion is bare JSON) and json_fields
(share of name, age, city equal to the reference; age as a number) score it. Every value
appears verbatim in the note, so the answer is fully determined by the input.
"""

from __future__ import annotations

import argparse
import json
import os
import random

SYSTEM = ("Reply with only a JSON object with the keys name, age (a number) and city. "
          "No other text.")

SPLITS = (("sft", 48), ("train", 400), ("valid", 24), ("test", 100))

FIRST = ["Maria", "James", "Aisha", "Chen", "Olivia", "Liam", "Sofia", "Noah", "Fatima",
         "Lucas", "Emma", "Mateo", "Yuki", "Omar", "Hannah", "Ivan", "Priya", "Daniel",
         "Elena", "Kofi", "Grace", "Diego", "Nora", "Ali", "Chloe", "Samuel", "Leila", "Hugo"]
LAST = ["Lopez", "Smith", "Khan", "Wang", "Brown", "Garcia", "Rossi", "Muller", "Silva", "Kim",
        "Nguyen", "Patel", "Jensen", "Dubois", "Tanaka", "Okafor", "Novak", "Costa", "Fischer"]
CITIES = ["Lisbon", "Oslo", "Nairobi", "Lima", "Osaka", "Dublin", "Cairo", "Denver", "Porto",
          "Seoul", "Madrid", "Toronto", "Accra", "Hanoi", "Zurich", "Perth", "Quito", "Milan"]

TEMPLATES = [
    "{name}, {age}, lives in {city}.",
    "Contact: {name} (age {age}) from {city}.",
    "{city} resident {name} is {age} years old.",
    "New member {name}; age: {age}; city: {city}",
    "Met {name} in {city} yesterday, turns out they are {age}.",
    "name={name} | city={city} | age={age}",
    "{name} ({age}) moved to {city} last year.",
    "Profile - {city} - {name} - {age} yrs",
]


def person(rng: random.Random) -> dict:
    return {"name": f"{rng.choice(FIRST)} {rng.choice(LAST)}", "age": rng.randint(18, 89),
            "city": rng.choice(CITIES)}


def row(rng: random.Random, with_answer: bool) -> dict:
    p = person(rng)
    note = rng.choice(TEMPLATES).format(**p)
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": note}]
    if with_answer:
        messages.append({"role": "assistant", "content": json.dumps(p)})
        return {"messages": messages}
    return {"messages": messages, "reference": p}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "data",
                                                  "grpo"))
    ap.add_argument("--seed", type=int, default=17)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    os.makedirs(args.out, exist_ok=True)
    for split, n in SPLITS:
        with open(os.path.join(args.out, f"{split}.jsonl"), "w", encoding="utf-8") as fh:
            for _ in range(n):
                fh.write(json.dumps(row(rng, split == "sft"), ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
