"""Generate a fresh preference set: terse correct "Answer: N." against rambling wrong answers.

    python scripts/make_style_pairs.py         # writes data/style/{train,valid,test}.jsonl

A different task from data/dpo of the same shape (prompt, chosen, rejected): short arithmetic
word problems. The chosen answer is exactly "Answer: N." with the right number; the rejected
one rambles (a cheerful opener, some "reasoning") and lands on a wrong number. SmolLM2's own
answers never take the chosen form, so `macft eval RUN --pairs data/style/test.jsonl --style
'^Answer: -?\\d+\\.$'` measures whether preference training moved what the model *says*, not
only the margin. Deterministic for a given --seed; no test prompt appears in train or valid.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

NAMES = ["Ava", "Ben", "Chloe", "Dan", "Ella", "Finn", "Grace", "Hugo", "Iris", "Jack", "Kate",
         "Leo", "Maya", "Noah", "Olive", "Paul", "Quinn", "Rosa", "Sam", "Tara", "Uma", "Victor",
         "Wendy", "Yusuf", "Zoe"]
THINGS = ["apples", "books", "marbles", "stickers", "pencils", "cookies", "stamps", "shells",
          "coins", "cards", "balloons", "flowers", "eggs", "toy cars", "crayons", "buttons"]

# (template, answer) builders: each takes (rng, name, thing) -> (question, answer)


def _add(rng, name, thing):
    a, b = rng.randint(2, 60), rng.randint(2, 40)
    question = f"{name} has {a} {thing} and gets {b} more. How many {thing} does {name} have now?"
    return question, a + b


def _sub(rng, name, thing):
    a = rng.randint(15, 90)
    b = rng.randint(1, a - 1)
    return f"{name} had {a} {thing} and gave away {b}. How many {thing} are left?", a - b


def _mul(rng, name, thing):
    a, b = rng.randint(2, 12), rng.randint(2, 12)
    return f"{name} has {a} boxes with {b} {thing} in each box. How many {thing} is that?", a * b


def _share(rng, name, thing):
    b, q = rng.randint(2, 9), rng.randint(2, 12)
    return (f"{name} shares {b * q} {thing} equally among {b} friends. How many {thing} does "
            f"each friend get?", q)


def _plain(rng, name, thing):
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    op = rng.choice(["plus", "minus", "times"])
    value = {"plus": a + b, "minus": a - b, "times": a * b}[op]
    return f"What is {a} {op} {b}?", value


KINDS = [_add, _sub, _mul, _share, _plain]

OPENERS = [
    "Great question! I'd be happy to help you work through this one.",
    "Sure thing! Word problems like this are a lot of fun to think about.",
    "Certainly! Let me walk you through my thinking on this.",
    "What a wonderful question! Many people find these tricky at first.",
    "Of course! Let's take this one slowly, step by step.",
    "Absolutely, I can help with that! Math can be really enjoyable.",
]
MIDDLES = [
    "First we look at the numbers in the question and think about what they mean. Then we "
    "decide whether to add, subtract, multiply or divide, and we do the calculation carefully.",
    "When I read a problem like this, I like to picture the situation in my head, maybe with "
    "little drawings, and then I count everything up one more time just to be sure.",
    "The key here is to read every word of the question, because small details can change the "
    "answer. After that it is just a matter of putting the numbers together.",
    "There are a few ways to approach this, and every one of them should give the same result "
    "if we are careful, so let's pick the simplest way and go with it.",
]
CLOSERS = [
    "I hope this helps! Let me know if you have any other questions.",
    "Math is all about practice, so keep it up and you will get faster every day!",
    "Thanks for asking, and have a wonderful day!",
    "Feel free to ask me another one whenever you like!",
]


def rejected(rng, answer: int) -> str:
    wrong = answer + rng.choice([-3, -2, -1, 1, 2, 3, 10, -10])
    return (f"{rng.choice(OPENERS)} {rng.choice(MIDDLES)} So after all of that, I think the "
            f"answer is probably around {wrong}, give or take. {rng.choice(CLOSERS)}")


def make(seed: int, n_train: int, n_valid: int, n_test: int) -> dict[str, list[dict]]:
    rng = random.Random(seed)
    seen: set[str] = set()
    rows = []
    while len(rows) < n_train + n_valid + n_test:
        kind = KINDS[len(rows) % len(KINDS)]
        question, answer = kind(rng, rng.choice(NAMES), rng.choice(THINGS))
        if question in seen:
            continue
        seen.add(question)
        rows.append({"prompt": question, "chosen": f"Answer: {answer}.",
                     "rejected": rejected(rng, answer)})
    rng.shuffle(rows)
    return {"train": rows[:n_train], "valid": rows[n_train:n_train + n_valid],
            "test": rows[n_train + n_valid:]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=17)
    ap.add_argument("--out", default="data/style")
    ap.add_argument("--train", type=int, default=300)
    ap.add_argument("--valid", type=int, default=30)
    ap.add_argument("--test", type=int, default=60)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for split, rows in make(args.seed, args.train, args.valid, args.test).items():
        path = out / f"{split}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        print(f"{path}: {len(rows)} pairs")


if __name__ == "__main__":
    main()
