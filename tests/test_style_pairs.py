"""scripts/make_style_pairs.py: the committed data/style set is its seeded output, and its shape."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STYLE = re.compile(r"^Answer: -?\d+\.$")     # the --style the README's DPO section passes


def test_committed_set_is_the_scripts_seeded_output(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_style_pairs.py"), "--out",
                    str(tmp_path)], check=True, capture_output=True, timeout=60)
    for split in ("train", "valid", "test"):
        assert (tmp_path / f"{split}.jsonl").read_bytes() == \
            (ROOT / "data" / "style" / f"{split}.jsonl").read_bytes(), split


def test_chosen_is_terse_and_right_rejected_rambles_and_is_wrong():
    rows = {s: [json.loads(line) for line in (ROOT / "data" / "style" / f"{s}.jsonl")
                .read_text().splitlines()] for s in ("train", "valid", "test")}
    assert [len(rows[s]) for s in ("train", "valid", "test")] == [300, 30, 60]
    prompts = {s: {r["prompt"] for r in rows[s]} for s in rows}
    assert not prompts["test"] & (prompts["train"] | prompts["valid"])
    for r in sum(rows.values(), []):
        assert STYLE.search(r["chosen"]) and not STYLE.search(r["rejected"].strip())
        right = int(r["chosen"][len("Answer: "):-1])
        said = int(re.search(r"around (-?\d+)", r["rejected"]).group(1))
        assert said != right and len(r["rejected"].split()) > 30
        numbers = [int(n) for n in re.findall(r"\d+", r["prompt"])]
        assert right in _answers(r["prompt"], numbers)


def _answers(prompt: str, n: list[int]) -> set[int]:
    """What the prompt's numbers can give (the arithmetic is checked, not copied)."""
    a, b = n[0], n[1]
    if "minus" in prompt or "gave away" in prompt:
        return {a - b}
    if "times" in prompt or "boxes" in prompt:
        return {a * b}
    if "shares" in prompt:
        return {a // b}
    return {a + b}
