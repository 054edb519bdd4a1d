"""Write macft's general set (the forgetting check): short questions with checkable answers.

    python scripts/make_general_set.py      # writes macft/general/questions.jsonl

Every question and answer is generated here from facts and rules (arithmetic, sequences,
capitals, opposites, plurals, everyday facts), so the set is ours to redistribute (Apache-2.0,
like macft). The general text for perplexity, macft/general/text.txt, was written for macft.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

CAPITALS = {"France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid",
            "Japan": "Tokyo", "China": "Beijing", "Russia": "Moscow", "Egypt": "Cairo",
            "Canada": "Ottawa", "Greece": "Athens", "Portugal": "Lisbon", "Ireland": "Dublin",
            "Norway": "Oslo", "Sweden": "Stockholm", "Finland": "Helsinki", "Poland": "Warsaw",
            "Austria": "Vienna", "Hungary": "Budapest", "Kenya": "Nairobi", "Peru": "Lima",
            "Argentina": "Buenos Aires", "Thailand": "Bangkok", "England": "London",
            "Denmark": "Copenhagen", "Belgium": "Brussels", "South Korea": "Seoul",
            "India": "New Delhi", "Mexico": "Mexico City", "Cuba": "Havana", "Chile": "Santiago"}
OPPOSITES = {"hot": "cold", "up": "down", "big": "small", "fast": "slow", "light": "dark",
             "open": "closed", "happy": "sad", "old": "young", "wet": "dry", "early": "late",
             "full": "empty", "hard": "soft", "high": "low", "in": "out", "left": "right",
             "day": "night", "rich": "poor", "strong": "weak", "thick": "thin", "win": "lose",
             "buy": "sell", "push": "pull", "first": "last", "top": "bottom", "true": "false"}
PLURALS = {"cat": "cats", "dog": "dogs", "child": "children", "mouse": "mice", "man": "men",
           "woman": "women", "foot": "feet", "tooth": "teeth", "box": "boxes", "city": "cities",
           "knife": "knives", "leaf": "leaves", "goose": "geese", "bus": "buses",
           "baby": "babies", "wolf": "wolves", "person": "people", "sheep": "sheep",
           "house": "houses", "book": "books"}
FACTS = [("How many days are in a week?", "7"), ("How many months are in a year?", "12"),
         ("How many legs does a spider have?", "8"), ("How many legs does a dog have?", "4"),
         ("What colour is the sky on a clear day?", "blue"),
         ("What colour is grass?", "green"), ("What is frozen water called?", "ice"),
         ("Which planet do we live on?", "Earth"), ("What star is at the centre of our solar "
                                                   "system?", "Sun"),
         ("How many hours are in a day?", "24"), ("How many minutes are in an hour?", "60"),
         ("What is the largest ocean on Earth?", "Pacific"),
         ("What gas do plants take in from the air?", "carbon dioxide"),
         ("What do bees make?", "honey"), ("How many sides does a triangle have?", "3"),
         ("How many sides does a square have?", "4"),
         ("What is the opposite of north?", "south"),
         ("Which animal is known as the king of the jungle?", "lion"),
         ("What is the chemical symbol for water?", "H2O"),
         ("In which season do leaves fall from trees?", "autumn")]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December"]


def questions(seed: int = 0) -> list[tuple[str, str, str]]:
    rng = random.Random(seed)
    out = []
    for _ in range(80):
        a, b = rng.randint(1, 20), rng.randint(1, 20)
        out.append(("arithmetic", f"What is {a} plus {b}? Answer with a number.", str(a + b)))
    for _ in range(40):
        a, b = rng.randint(2, 9), rng.randint(2, 9)
        out.append(("arithmetic", f"What is {a} times {b}? Answer with a number.", str(a * b)))
    for _ in range(30):
        a = rng.randint(10, 40)
        b = rng.randint(1, a - 1)
        out.append(("arithmetic", f"What is {a} minus {b}? Answer with a number.", str(a - b)))
    for i, d in enumerate(DAYS):
        out.append(("sequence", f"Which day comes after {d}?", DAYS[(i + 1) % 7]))
    for i, m in enumerate(MONTHS):
        out.append(("sequence", f"Which month comes after {m}?", MONTHS[(i + 1) % 12]))
    for n in rng.sample(range(2, 99), 20):
        out.append(("sequence", f"What number comes after {n}?", str(n + 1)))
    out += [("capital", f"What is the capital of {c}?", a) for c, a in CAPITALS.items()]
    out += [("opposite", f"What is the opposite of \"{w}\"? Answer with one word.", a)
            for w, a in OPPOSITES.items()]
    out += [("plural", f"What is the plural of \"{w}\"? Answer with one word.", a)
            for w, a in PLURALS.items()]
    out += [("fact", q, a) for q, a in FACTS]
    return out


def main() -> None:
    path = Path(__file__).resolve().parents[1] / "macft" / "general" / "questions.jsonl"
    rows = [{"kind": k, "messages": [{"role": "user", "content": q},
                                     {"role": "assistant", "content": a}]}
            for k, q, a in questions()]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"{path}: {len(rows)} questions")


if __name__ == "__main__":
    main()
