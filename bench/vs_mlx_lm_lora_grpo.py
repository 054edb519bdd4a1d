"""GRPO step speed and memory: macft against mlx-lm-lora's GRPO trainer on the same work.

    python bench/vs_mlx_lm_lora_grpo.py                        # lora (5 steps), qlora (3)
    python bench/vs_mlx_lm_lora_grpo.py --kinds lora --steps 6 --rounds 2

The work is the GRPO quickstart's: SmolLM2-135M-Instruct (the shipped GGUF written once as
Hugging Face folders both tools open, as ``bench/vs_mlx_lm.py`` does: float32 weights for
LoRA, the 4-bit group-32 base for QLoRA), the prompts of data/grpo/train.jsonl in the order
macft's ``PromptBatcher`` draws them (both tools get the same prompts at each step), P prompts
x G completions of at most N new tokens sampled at temperature 1 (no top-p, no top-k), the
rewards json_valid + 2 x json_fields (macft's built-ins, called from mlx-lm-lora's reward
functions too), loss ``grpo`` with beta 0 (no reference pass in either), one update per
rollout, LoRA rank 16 and scale 2 on every linear layer of every block, Adam at a constant
learning rate. Every run is its own process, the tools alternate, and both load the same BLAS:
importing macft loads it before MLX; the mlx-lm-lora process imports macft first for that and
nothing else. Each process reports the BLAS libraries mapped into it (/proc/self/maps), and
the table refuses to compare runs whose libraries differ.

Seconds per step are the mean over the steps after the first (the first includes warm-up);
rollout tokens/s is the sampled tokens over the sampling time of those steps (mlx-lm-lora's
``generate_grpo`` is timed by wrapping it); peak is MLX's peak memory over the whole process,
model included.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import vs_mlx_lm  # noqa: E402  (the model folders: one copy of that code)

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "grpo" / "train.jsonl"
RANK, ALPHA, LR, SEED = 16, 32.0, 1e-5, 0
REWARDS = [{"name": "json_valid", "weight": 1.0}, {"name": "json_fields", "weight": 2.0}]
TOOLS = ("macft", "mlx-lm-lora")


def blas_maps() -> list[str]:
    """The BLAS/LAPACK shared libraries mapped into this process."""
    found = set()
    with open("/proc/self/maps") as fh:
        for line in fh:
            path = line.split()[-1]
            name = os.path.basename(path).lower()
            if path.startswith("/") and ("blas" in name or "lapack" in name):
                found.add(os.path.realpath(path))
    return sorted(found)


def prompt_order(n: int, per_step: int, steps: int) -> list[list[int]]:
    """The row indices macft's batcher draws at each step (seed SEED)."""
    from macft.data.prompts import PromptBatcher

    batcher = PromptBatcher([None] * n, per_step, SEED)
    return [[int(i) for i in batcher.batch(s).index] for s in range(steps)]


# ----- one measured run per process -------------------------------------------------------
def child_macft(args) -> dict:
    import macft  # noqa: F401  (OpenBLAS)
    import mlx.core as mx

    from macft import recipe as recipe_mod
    from macft.train.loop import Trainer

    recipe = recipe_mod.from_dict({
        "model": {"path": args.model, "dtype": "float32"},
        "method": args.kind,
        "lora": {"rank": RANK, "alpha": ALPHA, "dropout": 0.0, "targets": ["all"],
                 "layers": -1},
        "objective": "grpo",
        "data": {"train": str(DATA), "max_length": 512},
        "train": {"steps": args.steps, "batch_size": args.prompts * args.group,
                  "learning_rate": LR, "schedule": "constant", "max_grad_norm": 0.0,
                  "weight_decay": 0.0, "eval_every": 0, "save_every": 0, "seed": SEED},
        "grpo": {"loss": "grpo", "group_size": args.group, "prompts_per_step": args.prompts,
                 "max_new_tokens": args.max_new, "temperature": 1.0, "top_p": 1.0,
                 "beta": 0.0, "epsilon": 0.2, "rewards": REWARDS, "sample_every": 0},
        "output": args.out,
    })
    trainer = Trainer(recipe, [])
    trainer.setup()
    steps, prompts = [], []
    for step in range(args.steps):
        tic = time.perf_counter()
        trainer.train_step(step)
        seconds = time.perf_counter() - tic
        ro = trainer.objective.rollout
        steps.append({"seconds": seconds, "rollout_s": ro.seconds,
                      "generated": ro.info["generated"],
                      "reward": float(ro.total.mean())})
        prompts.append([len(trainer.objective.prompts[i].ids) for i in
                        trainer.data.train.batch(step).index])
    return {"steps": steps, "prompt_lengths": prompts, "peak_gb": mx.get_peak_memory() / 1e9,
            "blas": blas_maps()}


def child_mlx_lm_lora(args) -> dict:
    import macft  # noqa: F401  (the same OpenBLAS, loaded before MLX; nothing else is used)
    import mlx.core as mx
    import mlx.optimizers as optim
    from mlx_lm import load
    from mlx_lm.tuner.callbacks import TrainingCallback
    from mlx_lm.tuner.utils import linear_to_lora_layers
    from mlx_lm_lora.trainer import grpo_trainer as gt

    from macft.data import load_rows
    from macft.data.prompts import encode_prompts
    from macft.models.adapters import linear_keys
    from macft.recipe import DataSpec
    from macft.rewards import build_rewards

    mx.random.seed(SEED)
    model, tokenizer = load(args.model)
    model.freeze()
    linear_to_lora_layers(model, len(model.layers),
                          {"rank": RANK, "scale": ALPHA / RANK, "dropout": 0.0,
                           "keys": linear_keys(model)})
    rows = load_rows(str(DATA))
    encoded, _ = encode_prompts(rows, tokenizer, DataSpec(train=str(DATA)), str(DATA))
    dataset = [(p.ids, [], p.text, json.dumps(p.row.data["reference"])) for p in encoded]
    order = prompt_order(len(dataset), args.prompts, args.steps)

    def iterate(dataset, batch_size, max_seq_length, train=False):
        for idx in order:
            items = [dataset[i] for i in idx]
            yield ([x[0] for x in items], [x[1] for x in items], [x[2] for x in items],
                   [x[3] for x in items], None)

    def as_reward_func(reward):
        def fn(prompts, completions, answer, types=None):
            return [reward(c, {"reference": a}) for c, a in zip(completions, answer)]
        fn.__name__ = reward.name
        return fn

    rewards = build_rewards(REWARDS, ROOT)
    rollouts = []
    generate = gt.generate_grpo

    def timed_generate(*a, **kw):
        tic = time.perf_counter()
        out = generate(*a, **kw)
        rollouts.append((time.perf_counter() - tic, sum(int(c.size) for c in out[0])))
        return out

    gt.generate_grpo = timed_generate       # this process only: count the sampling time
    reports = []

    class Record(TrainingCallback):
        def on_train_loss_report(self, info):
            reports.append(info)

    out = Path(args.out)
    targs = gt.GRPOTrainingArgs(
        batch_size=args.prompts, iters=args.steps, group_size=args.group, beta=0.0,
        epsilon=0.2, epsilon_high=0.2, max_completion_length=args.max_new, temperature=1.0,
        top_p=1.0, top_k=0, min_p=0.0, grpo_loss_type="grpo", steps_per_report=1,
        steps_per_eval=10 ** 9, steps_per_save=10 ** 9, max_seq_length=512,
        adapter_file=str(out / "adapters.safetensors"))
    gt.train_grpo(model, None, tokenizer, optim.Adam(learning_rate=LR), dataset, None,
                  [as_reward_func(r) for r in rewards], targs, iterate_batches=iterate,
                  training_callback=Record(), end_answer_token="")
    steps = [{"seconds": 1.0 / r["iterations_per_second"], "rollout_s": s, "generated": n,
              "reward": r["train_total_rewards_mean"]} for r, (s, n) in zip(reports, rollouts)]
    return {"steps": steps, "prompt_lengths": [[len(dataset[i][0]) for i in idx]
                                               for idx in order],
            "peak_gb": mx.get_peak_memory() / 1e9, "blas": blas_maps()}


def run_child(tool: str, kind: str, model: Path, steps: int, args) -> dict:
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, __file__, "--child", tool, "--kind", kind, "--model", str(model),
               "--steps", str(steps), "--prompts", str(args.prompts), "--group",
               str(args.group), "--max-new", str(args.max_new), "--out", out]
        proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{tool} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----- the table ----------------------------------------------------------------------------
def summary(result: dict, skip: int = 1) -> dict:
    steps = result["steps"][skip:] or result["steps"]
    rollout_s = sum(s["rollout_s"] for s in steps)
    return {"step_s": sum(s["seconds"] for s in steps) / len(steps),
            "rollout_tok_s": sum(s["generated"] for s in steps) / max(rollout_s, 1e-9),
            "rollout_share": rollout_s / sum(s["seconds"] for s in steps),
            "peak_gb": result["peak_gb"], "blas": result["blas"],
            "prompts": result["prompt_lengths"]}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def merged(runs: list[dict]) -> dict:
    """Rounds of one tool: the mean step time, rollout rate and the highest peak."""
    out = dict(runs[0])
    for key in ("step_s", "rollout_tok_s", "rollout_share"):
        out[key] = sum(r[key] for r in runs) / len(runs)
    out["peak_gb"] = max(r["peak_gb"] for r in runs)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kinds", default="lora,qlora")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--qlora-steps", type=int, default=3,
                    help="steps of the qlora rows (mlx-lm-lora's QLoRA runs MLX's CPU "
                         "quantized_matmul: minutes per step here)")
    ap.add_argument("--rounds", type=int, default=1, help="alternating runs of each tool")
    ap.add_argument("--prompts", type=int, default=2)
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument("--max-new", type=int, default=32)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--kind", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        fn = child_macft if args.child == "macft" else child_mlx_lm_lora
        print(json.dumps(fn(args)))
        return

    kinds = args.kinds.split(",")
    paths = vs_mlx_lm.prepare("smollm2", tuple(kinds))
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores, {platform.platform()}")
    print(f"SmolLM2-135M-Instruct, {args.prompts} prompts x {args.group} completions x "
          f"{args.max_new} new tokens, LoRA rank {RANK} scale {ALPHA / RANK:g} on every linear "
          f"layer, beta 0, {args.steps} steps for lora and {args.qlora_steps} for qlora (the "
          f"first not timed), {args.rounds} round(s)\n")
    print(f"{'kind':<6}  {'tool':<12}{'s/step':>8}{'rollout tok/s':>15}{'rollout %':>11}"
          f"{'peak GB':>9}")
    for kind in kinds:
        model = paths["q4" if kind == "qlora" else "f32"]
        steps = args.qlora_steps if kind == "qlora" else args.steps
        rows: dict[str, list] = {t: [] for t in TOOLS}
        for _ in range(args.rounds):
            for tool in TOOLS:
                rows[tool].append(summary(run_child(tool, kind, model, steps, args)))
        m, o = merged(rows["macft"]), merged(rows["mlx-lm-lora"])
        if m["blas"] != o["blas"]:
            raise SystemExit(f"the two processes loaded different BLAS libraries: "
                             f"{m['blas']} vs {o['blas']}")
        if m["prompts"] != o["prompts"]:
            raise SystemExit("the two tools were given different prompts")
        for tool, r in (("macft", m), ("mlx-lm-lora", o)):
            print(f"{kind:<6}  {tool:<12}{r['step_s']:>8.2f}{r['rollout_tok_s']:>15.1f}"
                  f"{r['rollout_share']:>10.0%}{r['peak_gb']:>9.2f}", flush=True)
        print(f"{'':<8}macft / mlx-lm-lora: {o['step_s'] / m['step_s']:.2f}x faster per step, "
              f"rollout {m['rollout_tok_s'] / o['rollout_tok_s']:.2f}x, "
              f"peak {m['peak_gb'] / o['peak_gb']:.2f}x; BLAS: {', '.join(m['blas']) or 'none'}")


if __name__ == "__main__":
    main()
