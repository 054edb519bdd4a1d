"""Write a deliberately messy chat data set and a manifest of everything planted in it.

    python scripts/make_messy_data.py [--out data/messy] [--seed 19]

train.jsonl holds clean rows plus exact copies (some differing only in case and spacing),
paraphrased near copies, rows carrying one PII item each (e-mail, phone, Luhn-valid card,
mod-97-valid IBAN, IPv4, IPv6, secret shapes), over-long rows and rows shared with test.jsonl.
manifest.json lists, by 1-based line, which rows are clean, which duplicate which, every PII
value, the over-long rows and the train/test overlaps; tests/test_dataprep.py checks
`macft data clean` and `macft data leak` against it. The same seed writes the same bytes.
"""

from __future__ import annotations

import argparse
import json
import random
import string
from pathlib import Path

WORDS = """apple river stone cloud garden window yellow basket violin candle forest ladder
mirror pepper silver tunnel wallet anchor bridge carpet dragon engine falcon glacier harbor
island jacket kettle lemon marble needle orange pillow quartz rabbit saddle tiger umbrella
valley walnut yogurt zebra bottle camera desert feather guitar helmet iguana jungle koala
lantern meadow napkin oyster parrot quiver rocket sponge turtle velvet whistle copper ribbon
scarlet timber harvest pebble thunder cinnamon blanket compass lobster pumpkin sapphire
shovel spider teapot tractor trumpet volcano wizard almond beacon cactus dolphin ember fossil
goblet hammock insect jasmine kayak locket magnet nectar orchid pirate quill raven satchel
thistle unicorn vessel willow breeze canyon dagger emerald fjord gravel hazel ivory juniper
kernel lagoon mustard nutmeg opal plume radish saffron tulip urchin vapor wheat yarn zinc
""".split()
ASKS = ["Describe", "Explain", "Summarise", "List", "Compare", "Sketch", "Outline", "Name"]
PII_KINDS = ["EMAIL", "PHONE", "CARD", "IBAN", "IP", "IP6", "SECRET"]


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def chat(user: str, assistant: str) -> dict:
    return {"messages": [{"role": "user", "content": user},
                         {"role": "assistant", "content": assistant}]}


def base_row(rng: random.Random) -> dict:
    return chat(f"{rng.choice(ASKS)} the {sentence(rng, 14)}.", sentence(rng, 16).capitalize()
                + ".")


def luhn_digit(body: str) -> str:
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch)
        if i % 2 == 0:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return str((10 - total % 10) % 10)


def card(rng: random.Random) -> str:
    body = rng.choice(["4", "51", "37"]) + "".join(rng.choice(string.digits) for _ in range(13))
    body = body[:15]
    digits = body + luhn_digit(body)
    return " ".join(digits[i:i + 4] for i in range(0, 16, 4)) if rng.random() < 0.5 else digits


def iban(rng: random.Random) -> str:
    country, length = rng.choice([("DE", 18), ("FR", 23), ("NL", 14), ("ES", 20)])
    bban = "".join(rng.choice(string.digits) for _ in range(length))
    if country == "NL":
        bban = "".join(rng.choice(string.ascii_uppercase) for _ in range(4)) + bban[:10]
    moved = bban + country + "00"
    check = 98 - int("".join(str(int(c, 36)) for c in moved)) % 97
    value = f"{country}{check:02d}{bban}"
    return " ".join(value[i:i + 4] for i in range(0, len(value), 4)) if rng.random() < 0.5 \
        else value


def pii_value(rng: random.Random, kind: str) -> str:
    name = rng.choice(["ada", "li.wei", "omar_k", "sofia", "j.smith"]) + str(rng.randint(1, 99))
    if kind == "EMAIL":
        return f"{name}@{rng.choice(['example.com', 'mail.example.org', 'corp.example.net'])}"
    if kind == "PHONE":
        a, b, c = rng.randint(200, 999), rng.randint(100, 999), rng.randint(1000, 9999)
        return rng.choice([f"+1 {a} {b} {c}", f"({a}) {b}-{c}", f"{a}-{b}-{c}",
                           f"+44 20 {rng.randint(1000, 9999)} {c}"])
    if kind == "CARD":
        return card(rng)
    if kind == "IBAN":
        return iban(rng)
    if kind == "IP":
        return ".".join(str(rng.randint(1, 254)) for _ in range(4))
    if kind == "IP6":
        return "2001:db8:" + ":".join(f"{rng.randint(0, 65535):x}" for _ in range(6))
    token = "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(36))
    return rng.choice([f"AKIA{''.join(rng.choice(string.ascii_uppercase) for _ in range(16))}",
                       f"sk-{token[:32]}", f"ghp_{token}", f"api_key={token[:24]}"])


def near_copy(rng: random.Random, row: dict) -> dict:
    """A paraphrase: one word swapped, a filler word, different case and punctuation."""
    user, answer = (m["content"] for m in row["messages"])
    words = answer.rstrip(".").split()
    words[rng.randrange(len(words))] = rng.choice(WORDS)
    return chat("Please " + user[0].lower() + user[1:].upper(), " ".join(words) + "!")


def exact_copy(rng: random.Random, row: dict) -> dict:
    if rng.random() < 0.5:
        return json.loads(json.dumps(row))
    user, answer = (m["content"] for m in row["messages"])
    return chat("  " + user.replace(" ", "  ", 2).upper(), answer + " ")


def build(seed: int, clean: int = 200, copies: int = 20, near: int = 20, pii_each: int = 4,
          overlong: int = 5, shared: int = 5, test_size: int = 40):
    rng = random.Random(seed)
    test = [base_row(rng) for _ in range(test_size)]
    train: list[dict] = []
    kinds: list[str] = []
    facts: list[dict] = []
    for _ in range(clean):
        train.append(base_row(rng))
        kinds.append("clean")
        facts.append({})
    for j in range(shared):          # a test row, or a paraphrase of one, sitting in train
        t = test[j * 3]
        train.append(t if j % 2 == 0 else near_copy(rng, t))
        kinds.append("shared")
        facts.append({"test_line": j * 3 + 1})
    for kind in PII_KINDS:
        for _ in range(pii_each):
            value = pii_value(rng, kind)
            row = base_row(rng)
            row["messages"][0]["content"] += rng.choice([" Contact: ", " My details are ",
                                                         " Use "]) + value + " for this."
            train.append(row)
            kinds.append("pii")
            facts.append({"kind": "IP" if kind == "IP6" else kind, "value": value})
    for _ in range(overlong):
        row = base_row(rng)
        row["messages"][1]["content"] = sentence(rng, 900)
        train.append(row)
        kinds.append("overlong")
        facts.append({})
    originals = [r for r, k in zip(train, kinds) if k == "clean"]
    # copies go after their original, so the original is the row a cleaner keeps
    for kind, count in (("exact", copies), ("near", near)):
        for src in rng.sample(originals, count):
            make = exact_copy if kind == "exact" else near_copy
            pos = next(i for i, r in enumerate(train) if r is src)
            at = rng.randint(pos + 1, len(train))
            train.insert(at, make(rng, src))
            kinds.insert(at, kind)
            facts.insert(at, {"of": id(src)})
    ids = {id(r): i + 1 for i, r in enumerate(train)}
    manifest = {"seed": seed, "clean": [], "duplicates": [], "pii": [], "overlong": [],
                "leaks": []}
    for i, (row, kind, fact) in enumerate(zip(train, kinds, facts), start=1):
        if kind == "clean":
            manifest["clean"].append(i)
        elif kind in ("exact", "near"):
            manifest["duplicates"].append({"line": i, "of": ids[fact["of"]], "kind": kind})
        elif kind == "pii":
            manifest["pii"].append({"line": i, **fact})
        elif kind == "overlong":
            manifest["overlong"].append(i)
        else:
            manifest["leaks"].append({"train_line": i, **fact})
    return train, test, manifest


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="data/messy")
    ap.add_argument("--seed", type=int, default=19)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train, test, manifest = build(args.seed)
    write_jsonl(out / "train.jsonl", train)
    write_jsonl(out / "test.jsonl", test)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"{out}: train {len(train)} rows, test {len(test)} rows, manifest.json")


if __name__ == "__main__":
    main()
