"""Seeded tiny training runs whose per-step losses are pinned in tests/golden/pinned_losses.json.

Shared by ``tests/test_pinned.py`` (which compares a fresh run with the file) and
``scripts/pin_losses.py`` (which writes the file and the real-model runs next to it).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

GOLDEN = Path(__file__).resolve().parent / "golden" / "pinned_losses.json"
TOLERANCE = 1e-6


def write_chats(path: Path, n: int = 24, seed: int = 0) -> Path:
    """Seeded chat rows, one question and answer each (also the fault tests' data)."""
    rng = np.random.default_rng(seed)
    with path.open("w") as fh:
        for _ in range(n):
            a, b = (int(v) for v in rng.integers(0, 10, 2))
            fh.write(json.dumps({"messages": [
                {"role": "user", "content": f"hello {a} world {b}"},
                {"role": "assistant", "content": f"the answer is {a}{b}"}]}) + "\n")
    return path


def write_pairs(path: Path, n: int, seed: int = 0) -> Path:
    """Seeded preference pairs (also the fault tests' data)."""
    rng = np.random.default_rng(seed)
    with path.open("w") as fh:
        for _ in range(n):
            a = int(rng.integers(0, 100))
            fh.write(json.dumps({"prompt": f"hello {a}", "chosen": "yes",
                                 "rejected": "no no no, this is a test"}) + "\n")
    return path


def tiny_recipe(folder: Path, kind: str) -> dict:
    """The raw recipe of the tiny ``sft`` or ``dpo`` run (data written into ``folder``)."""
    from conftest import write_tiny_model

    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "model" / "config.json").exists():
        write_tiny_model(folder / "model")
    common = {"name": kind, "model": str(folder / "model"), "method": "lora",
              "lora": {"rank": 4, "alpha": 8}, "output": str(folder / f"run-{kind}")}
    if kind == "sft":
        write_chats(folder / "chat-train.jsonl", 24, 0)
        write_chats(folder / "chat-valid.jsonl", 8, 1)
        return {**common, "data": {"train": str(folder / "chat-train.jsonl"),
                                   "valid": str(folder / "chat-valid.jsonl"),
                                   "max_length": 64, "packing": True},
                "train": {"steps": 6, "batch_size": 2, "grad_accum": 2, "learning_rate": 1e-2,
                          "eval_every": 3, "save_every": 3, "seed": 7}}
    write_pairs(folder / "pairs-train.jsonl", 16, 0)
    write_pairs(folder / "pairs-valid.jsonl", 8, 1)
    return {**common, "objective": "dpo", "preference": {"beta": 0.1},
            "data": {"train": str(folder / "pairs-train.jsonl"),
                     "valid": str(folder / "pairs-valid.jsonl"), "max_length": 64},
            "train": {"steps": 6, "batch_size": 4, "grad_accum": 2, "learning_rate": 5e-4,
                      "eval_every": 3, "save_every": 3, "seed": 5}}


def run_tiny(folder: Path, kind: str) -> dict:
    """Train the tiny run in this process; its losses and adapter hash."""
    from macft import recipe as recipe_mod
    from macft.train.loop import train

    recipe = recipe_mod.from_dict(tiny_recipe(folder, kind))
    train(recipe, [])
    return summary(recipe.run_dir)


def summary(run_dir: Path) -> dict:
    """Per-step training losses, eval losses and the final adapters' sha256 of a run folder."""
    from macft.events import read_metrics

    events = read_metrics(Path(run_dir) / "metrics.jsonl")
    adapters = Path(run_dir) / "adapters.safetensors"
    return {"losses": [e["loss"] for e in events if e["event"] == "Step"],
            "val_losses": [e["val_loss"] for e in events if e["event"] == "Eval"],
            "adapters_sha256": hashlib.sha256(adapters.read_bytes()).hexdigest()}


def max_diff(a: list[float], b: list[float]) -> float:
    assert len(a) == len(b), f"{len(a)} losses against {len(b)}"
    return max((abs(x - y) for x, y in zip(a, b)), default=0.0)
