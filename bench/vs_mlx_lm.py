"""LoRA and QLoRA training speed and memory: macft against mlx_lm.lora on the same work.

    python bench/vs_mlx_lm.py                      # the full tables (long: ~1 hour here)
    python bench/vs_mlx_lm.py --lengths 512 --tools macft,mlx_lm+openblas --steps 6
    python bench/vs_mlx_lm.py --models gemma3 --kinds lora --lengths 160 --scaling ''

Both tools train SmolLM2-135M (the shipped GGUF, written once as Hugging Face folders both
tools open: float32 weights for LoRA, the 4-bit group-32 base for QLoRA), or Gemma 3 270M
(``--models gemma3``: its Q4_K_M GGUF from the gemma3-270m packages, dequantized into a float32
folder; LoRA only, its 262k vocabulary makes mlx_lm's full logits the memory peak) on the same
text rows,
each cut to the same length, with the same batch size, rank (8), scale (2.0), targets (every
linear layer of every block), optimizer (Adam, constant learning rate 1e-4, no clipping) and
number of steps. Every run is its own process; runs alternate between tools. mlx_lm.lora runs
twice: as installed (MLX's bundled reference BLAS) and with the OpenBLAS that macft loads
imported first, so the table separates the BLAS fix from macft's own engineering.

Tokens/s counts input tokens over the steps after the first (the first includes compilation and
warm-up); peak is MLX's peak memory over the whole process (model included); loss is the last
step's training loss. The achieved matmul rate is the model's matmul FLOPs per step (forward,
plus the input-gradient of every frozen layer and both gradients of the adapters) divided by the
step time, as a share of the float32 BLAS peak this script measures first.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import time
from pathlib import Path

CACHE = Path(os.environ.get("MACFT_BENCH_CACHE", Path.home() / ".cache" / "macft" / "bench"))
# name -> (macft alias, bench folder prefix, matmul shapes: d, layers, ffn, heads, kv, head dim,
# vocab)
MODELS = {
    "smollm2": ("smollm2-135m-instruct", "smollm2-135m", (576, 30, 1536, 9, 3, 64, 49152)),
    "gemma3": ("gemma3-270m", "gemma3-270m", (640, 18, 2048, 4, 1, 256, 262144)),
}
RANK, SCALE, LR = 8, 2.0, 1e-4
TOOLS = ("macft", "mlx_lm+openblas", "mlx_lm")

WORDS = ("time person year way day thing man world life hand part child eye woman place work "
         "week case point government company number group problem fact river mountain city "
         "garden winter summer music paper light water stone story letter window morning "
         "evening kitchen market teacher doctor farmer engine bridge forest ocean island "
         "village").split()
VERBS = "sees makes takes finds gives tells asks feels leaves calls keeps holds brings writes".split()


def sentence(rng: random.Random) -> str:
    a, b = rng.choice(WORDS), rng.choice(WORDS)
    return f"The {a} {rng.choice(VERBS)} a {b} near the {rng.choice(WORDS)}."


def write_data(folder: Path, rows: int = 24, words: int = 3000) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    for split, n in (("train", rows), ("valid", 4)):
        with (folder / f"{split}.jsonl").open("w") as fh:
            for _ in range(n):
                text = " ".join(sentence(rng) for _ in range(words // 8))
                fh.write(json.dumps({"text": text}) + "\n")


def prepare(name: str = "smollm2", kinds: tuple = ("lora", "qlora")) -> dict:
    """Model folders (float32 and, for qlora, 4-bit) and the data, made once under CACHE."""
    alias, prefix, _ = MODELS[name]
    paths = {"f32": CACHE / f"{prefix}-f32", "q4": CACHE / f"{prefix}-q4",
             "data": CACHE / "text"}
    if not (paths["data"] / "train.jsonl").exists():
        write_data(paths["data"])
    keys = ["q4"] if "qlora" in kinds else []
    keys.append("f32")
    if all((paths[k] / "config.json").exists() for k in keys):
        return paths
    import macft  # noqa: F401
    from mlx_lm.utils import dequantize_model

    from macft.models.fuse import save_folder
    from macft.models.load import load_base

    for key in keys:
        if (paths[key] / "config.json").exists():
            continue
        loaded = load_base(alias, dtype="float32")
        model = loaded.model
        if key == "f32":
            model = dequantize_model(model)
        save_folder(model, loaded.tokenizer, loaded.config, paths[key])
    return paths


# ----- one measured run per process ---------------------------------------------------------
def child_macft(args) -> dict:
    import macft  # noqa: F401  (OpenBLAS)
    import mlx.core as mx

    from macft import recipe as recipe_mod
    from macft.train.loop import Trainer

    recipe = recipe_mod.from_dict({
        "model": {"path": args.model, "dtype": "float32"},
        "method": "qlora" if args.quant else "lora",
        "lora": {"rank": RANK, "alpha": RANK * SCALE, "dropout": 0.0, "targets": ["all"],
                 "layers": -1},
        "data": {"train": str(Path(args.data) / "train.jsonl"), "format": "text",
                 "max_length": args.length},
        "train": {"steps": args.steps, "batch_size": args.batch, "learning_rate": LR,
                  "schedule": "constant", "max_grad_norm": 0.0, "eval_every": 0,
                  "save_every": 0, "seed": 0},
        "output": args.out,
    })
    trainer = Trainer(recipe, [])
    trainer.setup()
    losses, times, tokens = [], [], []
    for step in range(args.steps):
        tic = time.perf_counter()
        loss, n = trainer.train_step(step)
        times.append(time.perf_counter() - tic)
        losses.append(loss)
        tokens.append(n)
    return {"losses": losses, "times": times, "tokens": tokens,
            "peak_gb": mx.get_peak_memory() / 1e9}


def child_mlx_lm(args) -> dict:
    if args.tool == "mlx_lm+openblas":
        from macft import runtime

        runtime.preload_blas()
    import mlx.core as mx
    from mlx_lm import load, lora
    from mlx_lm.tuner.callbacks import TrainingCallback

    reports = []

    class Record(TrainingCallback):
        def on_train_loss_report(self, info):
            reports.append(info)

    config = dict(lora.CONFIG_DEFAULTS)
    config.update({
        "model": args.model, "train": True, "data": args.data, "fine_tune_type": "lora",
        "optimizer": "adam", "num_layers": -1, "batch_size": args.batch, "iters": args.steps,
        "val_batches": 1, "learning_rate": LR, "steps_per_report": 1,
        "steps_per_eval": 10 ** 9, "save_every": 10 ** 9, "max_seq_length": args.length,
        "adapter_path": args.out, "seed": 0,
        "lora_parameters": {"rank": RANK, "dropout": 0.0, "scale": SCALE},
    })
    # lora.run() replaces the callback it is given, so do its three steps here.
    args_ns = argparse.Namespace(**config)
    model, tokenizer = load(args.model)
    train_set, valid_set, _ = lora.load_dataset(args_ns, tokenizer)
    lora.train_model(args_ns, model, train_set, valid_set, Record())
    # Each report covers one step: tokens/s over that step's own time.
    times = [1.0 / r["iterations_per_second"] for r in reports]
    tokens = [round(r["tokens_per_second"] * t) for r, t in zip(reports, times)]
    return {"losses": [r["train_loss"] for r in reports], "times": times, "tokens": tokens,
            "peak_gb": mx.get_peak_memory() / 1e9}


def child_blas_peak() -> dict:
    import macft  # noqa: F401
    import mlx.core as mx

    n, best = 2048, 0.0
    a, b = mx.random.normal((n, n)), mx.random.normal((n, n))
    mx.eval(a, b)
    for _ in range(5):
        tic = time.perf_counter()
        mx.eval(a @ b)
        best = max(best, 2 * n ** 3 / (time.perf_counter() - tic) / 1e9)
    return {"gflops": best}


def run_child(tool: str, model: Path, data: Path, length: int, batch: int, steps: int,
              quant: bool) -> dict:
    import tempfile

    with tempfile.TemporaryDirectory() as out:
        env = dict(os.environ)
        if tool == "mlx_lm":
            env["MACFT_BLAS"] = "0"
        cmd = [sys.executable, __file__, "--child", tool, "--model", str(model), "--data",
               str(data), "--length", str(length), "--batch", str(batch), "--steps",
               str(steps), "--out", out] + (["--quant"] if quant else [])
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{tool} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----- FLOPs and the tables ----------------------------------------------------------------------
def step_flops(length: int, batch: int, name: str = "smollm2") -> float:
    """Matmul FLOPs of one LoRA step of the model ``name`` on batch x length tokens."""
    d, layers, ffn, heads, kv, hd, vocab = MODELS[name][2]
    tokens = batch * length
    linear = layers * (d * heads * hd * 2 + d * kv * hd * 2 + 3 * d * ffn) + d * vocab
    adapters = layers * RANK * ((d + heads * hd) * 2 + (d + kv * hd) * 2 + (d + ffn) * 3)
    attention = layers * 2 * 2 * length * hd * heads  # QK^T and PV per token (full square)
    # forward 2 per weight; backward: input gradient 2 (frozen) + adapters' weight gradient 2.
    return tokens * (2 * linear * 2 + 2 * adapters * 3 + attention * 3)


def summary(result: dict, skip: int = 1) -> dict:
    times, tokens = result["times"][skip:], result["tokens"][skip:]
    return {"tok_s": sum(tokens) / sum(times), "step_s": sum(times) / len(times),
            "peak_gb": result["peak_gb"], "loss": result["losses"][-1],
            "losses": result["losses"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="smollm2",
                    help=f"comma-separated: {', '.join(MODELS)}")
    ap.add_argument("--lengths", default="512,2048")
    ap.add_argument("--tools", default=",".join(TOOLS))
    ap.add_argument("--kinds", default="lora,qlora")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--installed-steps", type=int, default=3,
                    help="steps for mlx_lm as installed and for mlx_lm's QLoRA (both ~20x "
                         "slower)")
    ap.add_argument("--scaling", default="512,1024,2048,4096",
                    help="lengths of the macft-only table ('' to skip)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--tool", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--length", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--quant", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        args.tool = args.child
        fn = {"macft": child_macft, "blas": lambda a: child_blas_peak()}.get(args.child,
                                                                              child_mlx_lm)
        print(json.dumps(fn(args)))
        return

    blas = run_child_blas()
    tools = args.tools.split(",")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, "
          f"{platform.platform()}; float32 BLAS peak (2048 matmul): {blas:.0f} GFLOP/s")
    for name in args.models.split(","):
        table(args, name, prepare(name, tuple(args.kinds.split(","))), blas, tools)


def table(args, name: str, paths: dict, blas: float, tools: list[str]) -> None:
    print(f"\n{MODELS[name][0]}, batch {args.batch}, rank {RANK}, all linear layers, Adam {LR}, "
          f"{args.steps} steps ({args.installed_steps} for mlx_lm as installed)\n")
    header = (f"{'kind':<6}{'T':>6}  {'tool':<17}{'tok/s':>8}{'s/step':>8}{'peak GB':>9}"
              f"{'loss':>8}{'matmul % of peak':>18}")
    print(header)
    rows = {}
    for length in [int(x) for x in args.lengths.split(",") if x]:
        for kind in args.kinds.split(","):
            model = paths["q4" if kind == "qlora" else "f32"]
            for tool in tools:  # one tool after the other: alternating runs
                # mlx_lm as installed, and mlx_lm on a 4-bit base (its quantized_matmul runs at
                # ~3 GFLOP/s here), take minutes per step: fewer steps for them.
                slow = tool == "mlx_lm" or (kind == "qlora" and tool != "macft")
                steps = args.installed_steps if slow else args.steps
                r = summary(run_child(tool, model, paths["data"], length, args.batch, steps,
                                      kind == "qlora"))
                rows[(kind, length, tool)] = r
                share = step_flops(length - 1, args.batch, name) / r["step_s"] / 1e9 / blas
                print(f"{kind:<6}{length:>6}  {tool:<17}{r['tok_s']:>8.1f}{r['step_s']:>8.1f}"
                      f"{r['peak_gb']:>9.2f}{r['loss']:>8.3f}{share:>17.0%}", flush=True)
            ratios(rows, kind, length)
    if args.scaling:
        print("\nmacft alone (LoRA, batch 1)")
        print(f"{'T':>6}{'tok/s':>8}{'peak GB':>9}")
        for length in [int(x) for x in args.scaling.split(",")]:
            r = summary(run_child("macft", paths["f32"], paths["data"], length, 1,
                                  max(3, args.steps // 2), False))
            print(f"{length:>6}{r['tok_s']:>8.1f}{r['peak_gb']:>9.2f}", flush=True)


def run_child_blas() -> float:
    proc = subprocess.run([sys.executable, __file__, "--child", "blas"], capture_output=True,
                          text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])["gflops"]


def ratios(rows: dict, kind: str, length: int) -> None:
    m = rows.get((kind, length, "macft"))
    if m is None:
        return
    for tool in ("mlx_lm", "mlx_lm+openblas"):
        o = rows.get((kind, length, tool))
        if o is None:
            continue
        k = min(len(m["losses"]), len(o["losses"]))   # losses compared after the same steps
        print(f"{'':<14}macft / {tool}: speed {m['tok_s'] / o['tok_s']:.2f}x, "
              f"peak {m['peak_gb'] / o['peak_gb']:.2f}x, "
              f"loss after {k} steps {m['losses'][k - 1]:.3f} vs {o['losses'][k - 1]:.3f} "
              f"({m['losses'][k - 1] / o['losses'][k - 1]:.3f}x)")


if __name__ == "__main__":
    main()
