"""Peak memory of DPO vs SFT with LoRA on the same model, sequence length and batch tokens.

    python bench/dpo_memory.py [--model smollm2-135m-instruct] [--length 256] [--steps 3]

SFT trains on batches of 8 sequences; DPO on batches of 4 pairs, i.e. the same 8 sequences of
the same length (every sequence is cut to exactly --length tokens). Each objective runs in its
own process; the table shows MLX's peak memory over the training steps (model included) and
the DPO/SFT ratio. DPO's reference log-probs are computed once before training, from the same
weights, so no second model is held.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

WORDS = ("the quick brown fox jumps over the lazy dog while a small cat watches from the old "
         "wooden fence and the sun sets slowly behind the distant green hills ").split()


def _text(seed: int, n: int = 400) -> str:
    return " ".join(WORDS[(seed * 7 + i * 3) % len(WORDS)] for i in range(n))


def write_data(folder: Path) -> None:
    with (folder / "sft.jsonl").open("w") as fh:
        for i in range(16):
            fh.write(json.dumps({"prompt": f"Write {i}.", "completion": _text(i)}) + "\n")
    with (folder / "pairs.jsonl").open("w") as fh:
        for i in range(8):
            fh.write(json.dumps({"prompt": f"Write {i}.", "chosen": _text(i),
                                 "rejected": _text(i + 100)}) + "\n")


def child(objective: str, model: str, length: int, steps: int, folder: Path) -> dict:
    import macft  # noqa: F401
    import mlx.core as mx

    from macft import recipe as recipe_mod
    from macft.train.loop import Trainer

    data = folder / ("sft.jsonl" if objective == "sft" else "pairs.jsonl")
    recipe = recipe_mod.from_dict({
        "model": model, "method": "lora", "objective": objective,
        "data": {"train": str(data), "max_length": length},
        "train": {"steps": steps, "batch_size": 8 if objective == "sft" else 4,
                  "eval_every": 0, "save_every": 0, "learning_rate": 1e-4},
        "output": str(folder / f"run-{objective}"),
    })
    trainer = Trainer(recipe, [])
    trainer.setup()
    batch = trainer.micro_batches(0)[0]
    rows = (batch.batch if objective != "sft" else batch).inputs.shape
    mx.reset_peak_memory()
    for step in range(steps):
        trainer.train_step(step)
    return {"objective": objective, "peak_gb": mx.get_peak_memory() / 1e9,
            "batch_shape": list(rows)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--length", type=int, default=256)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.model, args.length, args.steps,
                               Path(args.folder))))
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_data(folder)
        rows = {}
        for objective in ("sft", "dpo"):
            proc = subprocess.run([sys.executable, __file__, "--child", objective, "--model",
                                   args.model, "--length", str(args.length), "--steps",
                                   str(args.steps), "--folder", str(folder)],
                                  capture_output=True, text=True, check=True)
            rows[objective] = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"model {args.model}, LoRA, {args.length} tokens per sequence, {args.steps} steps")
    print(f"{'objective':<10}{'batch (rows x T)':>18}{'peak GB':>10}")
    for objective, r in rows.items():
        shape = "x".join(map(str, r["batch_shape"]))
        print(f"{objective:<10}{shape:>18}{r['peak_gb']:>10.2f}")
    print(f"DPO / SFT peak: {rows['dpo']['peak_gb'] / rows['sft']['peak_gb']:.2f}x")


if __name__ == "__main__":
    main()
