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


def _rows(split: str) -> list[dict]:
    path = ROOT / "data" / "style" / f"{split}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_readme_style_check_takes_every_chosen_answer_and_no_rejected_one():
    """The --style the README passes to `macft eval --pairs data/style/test.jsonl` is the
    checker behind its N/60: it must tell the two sides apart on every pair (100% vs 0%)."""
    from macft.evaluation import compile_style, style_match

    readme = (ROOT / "README.md").read_text()
    pattern = re.search(r"--pairs data/style/test\.jsonl --style '([^']+)'", readme).group(1)
    style = compile_style(pattern)
    for split in ("train", "valid", "test"):
        rows = _rows(split)
        assert [style_match(r["chosen"], r["chosen"], style) for r in rows] == [True] * len(rows)
        assert [style_match(r["rejected"], r["chosen"], style) for r in rows] == \
            [False] * len(rows)


def test_the_shipped_dpo_recipe_on_data_style_trains_each_whole_chosen_answer(
        smollm2_path, monkeypatch):
    """`macft run recipes/dpo-quickstart.yaml data.train=data/style/train.jsonl ...` (the
    README's command) loads, keeps every pair, and its loss sees each chosen answer whole
    ("Answer: N." and the end of turn) although the rambling rejected ones are cut at
    data.max_length, so an NLL term (preference.nll_weight) trains the full chosen form."""
    from macft import recipe as recipe_mod
    from macft.data import load_rows
    from macft.data.preference import encode_pairs
    from macft.gguf.reader import read_header
    from macft.gguf.tokenizer import read_gguf_tokenizer

    monkeypatch.chdir(ROOT)
    recipe = recipe_mod.load("recipes/dpo-quickstart.yaml",
                             ["data.train=data/style/train.jsonl",
                              "data.valid=data/style/valid.jsonl"])
    assert recipe.objective == "dpo" and recipe.data.train == "data/style/train.jsonl"
    tokenizer = read_gguf_tokenizer(read_header(smollm2_path).metadata, name=smollm2_path.name)
    rows = _rows("train")
    encoded = encode_pairs(load_rows(recipe.data.train), tokenizer, recipe.data,
                           recipe.data.train)
    assert encoded.stats.kept == len(encoded.pairs) == len(rows) == 300
    trained = [tokenizer.decode([t for t, m in zip(p.chosen.ids, p.chosen.mask) if m])
               for p in encoded.pairs]
    assert trained == [r["chosen"] + "<|im_end|>" for r in rows]
    assert max(len(p.rejected.ids) for p in encoded.pairs) == recipe.data.max_length
    assert encoded.stats.truncated > 0
