#!/usr/bin/env python3
"""Generate the quickstart data set: semi-structured order notes -> strict JSON.

Pure standard library and fully deterministic: the same --seed always gives
byte-identical files.

    python scripts/make_quickstart_data.py                # -> data/quickstart/
    python scripts/make_quickstart_data.py --out DIR --seed N

Each row is a chat example:
    {"messages": [{"role": "system", ...}, {"role": "user", ...},
                  {"role": "assistant", "content": "<json>"}]}
The assistant answer is json.dumps({"customer", "item", "quantity", "city"})
with that fixed key order; every value appears verbatim in the user text
(quantity as digits), so the output is fully determined by the input.
"""

from __future__ import annotations

import argparse
import json
import os
import random

SYSTEM = "Extract the order as JSON with keys customer, item, quantity, city."

SPLITS = (("train", 600), ("valid", 60), ("test", 100))

FIRST_NAMES = [
    "Maria", "James", "Aisha", "Chen", "Olivia", "Liam", "Sofia", "Noah",
    "Fatima", "Lucas", "Emma", "Mateo", "Yuki", "Omar", "Hannah", "Ivan",
    "Priya", "Daniel", "Elena", "Kofi", "Grace", "Diego", "Nora", "Ali",
    "Chloe", "Samuel", "Leila", "Hugo", "Mia", "Tomas", "Zara", "Felix",
    "Ana", "Ravi", "Julia", "Marco", "Ingrid", "Kwame", "Lena", "Pablo",
]

LAST_NAMES = [
    "Lopez", "Smith", "Khan", "Wang", "Brown", "Garcia", "Rossi", "Muller",
    "Silva", "Kim", "Nguyen", "Ivanova", "Patel", "Jensen", "Dubois",
    "Tanaka", "Okafor", "Novak", "Costa", "Fischer", "Hassan", "Moreau",
    "Santos", "Becker", "Larsen", "Mensah", "Weber", "Popescu", "Alvarez",
    "Cohen", "Sato", "Kowalski", "Reyes", "Berg", "Ferrari", "Haddad",
    "Murphy", "Yilmaz", "Andersen", "Romero",
]

# 1-3 word products, lowercase; none contains the words used as glue in the
# templates ("of", "to", "for", "in", "x") so the item span is unambiguous.
ITEMS = [
    "blue mug", "desk lamp", "notebook", "wool scarf", "coffee beans",
    "water bottle", "yoga mat", "phone case", "usb cable", "green tea",
    "steel pan", "rain jacket", "table fan", "candle", "backpack",
    "wireless mouse", "paper towels", "olive oil", "hiking boots",
    "bath towel", "sketch pad", "pencil set", "tote bag", "wall clock",
    "glass vase", "dog leash", "cat bowl", "garden hose", "printer paper",
    "red wine", "honey jar", "silk tie", "sun hat", "rubber gloves",
    "flower seeds", "chess board", "puzzle box", "baking tray", "cutting board",
    "tea kettle", "soup bowl", "bike helmet", "travel pillow", "beach umbrella",
    "leather wallet", "hand cream", "shampoo", "toothbrush", "spice rack",
    "picture frame", "alarm clock", "floor mat", "ceramic plate",
    "laptop stand", "hair dryer", "pocket knife", "winter gloves",
    "oak shelf", "linen shirt", "running shoes", "mini speaker",
    "dark chocolate bar",
]

CITIES = [
    "Lyon", "Berlin", "Madrid", "Tokyo", "Toronto", "Nairobi", "Lima",
    "Oslo", "Dublin", "Seoul", "Cairo", "Lisbon", "Vienna", "Prague",
    "Mumbai", "Sydney", "Chicago", "Boston", "Denver", "Austin", "Paris",
    "Rome", "Milan", "Athens", "Warsaw", "Helsinki", "Stockholm", "Istanbul",
    "Dubai", "Bangkok", "Jakarta", "Manila", "Hanoi", "Lagos", "Accra",
    "Santiago", "Bogota", "Quito", "Montreal", "Vancouver", "Melbourne",
    "Auckland", "New York", "Cape Town", "Buenos Aires", "Hong Kong",
    "Mexico City", "San Diego", "Tel Aviv", "Kuala Lumpur",
]

# Surface templates. Fields: c=customer, i=item, q=quantity, city, n=an
# unrelated order number (a distractor in one template). Values are inserted
# verbatim; field order and separators vary.
TEMPLATES = [
    "Order from {c}: {q} x {i}, ship to {city}.",
    "customer={c}; qty={q}; product={i}; dest={city}",
    "Name: {c}\nCity: {city}\nItem: {i}\nQty: {q}",
    "dest: {city} | item: {i} | qty: {q} | buyer: {c}",
    "{c} ordered {i} (qty {q}), deliver to {city}",
    "Ship {q} units of {i} to {city} for {c}.",
    "Order #{n}: {c} wants {q} pcs of {i} delivered in {city}.",
    "{city} <- {c} | {i} | quantity {q}",
]


def make_record(rng: random.Random) -> dict:
    return {
        "customer": f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}",
        "item": rng.choice(ITEMS),
        "quantity": rng.randint(1, 20),
        "city": rng.choice(CITIES),
    }


def render(rec: dict, template: str, rng: random.Random) -> str:
    return template.format(
        c=rec["customer"], i=rec["item"], q=rec["quantity"],
        city=rec["city"], n=rng.randint(1000, 9999),
    )


def to_row(user: str, rec: dict) -> dict:
    answer = json.dumps(
        {k: rec[k] for k in ("customer", "item", "quantity", "city")},
        ensure_ascii=False,
    )
    return {"messages": [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": user},
        {"role": "assistant", "content": answer},
    ]}


def build(seed: int) -> dict[str, list[dict]]:
    rng = random.Random(seed)
    seen_records: set[tuple] = set()
    seen_users: set[str] = set()
    out: dict[str, list[dict]] = {}
    for name, count in SPLITS:
        # Balanced template use within each split, in shuffled order.
        order = [TEMPLATES[k % len(TEMPLATES)] for k in range(count)]
        rng.shuffle(order)
        rows = []
        for template in order:
            while True:
                rec = make_record(rng)
                key = (rec["customer"], rec["item"], rec["quantity"], rec["city"])
                user = render(rec, template, rng)
                # Unique across all splits: no record combination and no user
                # text is ever repeated, so test rows never occur in training.
                if key not in seen_records and user not in seen_users:
                    break
            seen_records.add(key)
            seen_users.add(user)
            rows.append(to_row(user, rec))
        out[name] = rows
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join("data", "quickstart"),
                    help="output directory (default: data/quickstart)")
    ap.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    args = ap.parse_args()

    splits = build(args.seed)
    os.makedirs(args.out, exist_ok=True)
    for name, rows in splits.items():
        path = os.path.join(args.out, f"{name}.jsonl")
        with open(path, "w", encoding="utf-8", newline="\n") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    counts = ", ".join(f"{n}={len(r)}" for n, r in splits.items())
    print(f"wrote {counts} to {args.out} (seed={args.seed}, "
          f"{len(TEMPLATES)} templates)")


if __name__ == "__main__":
    main()
