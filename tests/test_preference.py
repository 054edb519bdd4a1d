"""Preference training: the losses against plain implementations, pair data, DPO runs, stages."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

import macft  # noqa: F401
import mlx.core as mx
import numpy as np

from conftest import write_tiny_model
from macft import recipe as recipe_mod
from macft.data import load_rows
from macft.data.preference import PairBatcher, encode_pairs
from macft.errors import MacftError
from macft.events import Collect, Eval, Step, read_metrics
from macft.train.objectives import preference as obj
from macft.train.loop import train

ROOT = Path(__file__).resolve().parents[1]


# --- the losses, against plain float64 implementations ----------------------------------------

def logsig(x):
    return -np.log1p(np.exp(-x)) if x >= 0 else x - np.log1p(np.exp(x))


def plain_dpo(pc, pr, rc, rr, beta, ls):
    z = beta * ((pc - rc) - (pr - rr))
    return np.mean([-(1 - ls) * logsig(v) - ls * logsig(-v) for v in z])


def plain_ipo(pc, pr, rc, rr, nc, nr, beta):
    h = (pc - rc) / nc - (pr - rr) / nr
    return np.mean((h - 1 / (2 * beta)) ** 2)


def plain_orpo(pc, pr, nc, nr, lam):
    out = []
    for c, r, n1, n2 in zip(pc, pr, nc, nr):
        a, b = c / n1, r / n2
        odds_c = math.exp(a) / (1 - math.exp(a))
        odds_r = math.exp(b) / (1 - math.exp(b))
        out.append(-a - lam * logsig(math.log(odds_c / odds_r)))
    return np.mean(out)


def plain_simpo(pc, pr, nc, nr, beta, gamma, ls):
    z = beta * (pc / nc - pr / nr) - gamma
    return np.mean([-(1 - ls) * logsig(v) - ls * logsig(-v) for v in z])


def numeric_grad(f, x, eps=1e-6):
    g = np.zeros_like(x)
    for i in range(len(x)):
        up, down = x.copy(), x.copy()
        up[i] += eps
        down[i] -= eps
        g[i] = (f(up) - f(down)) / (2 * eps)
    return g


@pytest.fixture()
def logps():
    rng = np.random.default_rng(0)
    n = 6
    nc, nr = rng.integers(3, 20, n).astype(np.float64), rng.integers(3, 20, n).astype(np.float64)
    pc, pr = -rng.uniform(0.5, 3, n) * nc, -rng.uniform(0.5, 3, n) * nr
    rc, rr = pc + rng.normal(0, 1, n), pr + rng.normal(0, 1, n)
    return pc, pr, rc, rr, nc, nr


CASES = {
    "dpo": (lambda pc, pr, rc, rr, nc, nr: obj.dpo_loss(pc, pr, rc, rr, 0.3, 0.1)[0],
            lambda pc, pr, rc, rr, nc, nr: plain_dpo(pc, pr, rc, rr, 0.3, 0.1)),
    "ipo": (lambda pc, pr, rc, rr, nc, nr: obj.ipo_loss(pc, pr, rc, rr, nc, nr, 0.2)[0],
            lambda pc, pr, rc, rr, nc, nr: plain_ipo(pc, pr, rc, rr, nc, nr, 0.2)),
    "orpo": (lambda pc, pr, rc, rr, nc, nr: obj.orpo_loss(pc, pr, nc, nr, 0.25)[0],
             lambda pc, pr, rc, rr, nc, nr: plain_orpo(pc, pr, nc, nr, 0.25)),
    "simpo": (lambda pc, pr, rc, rr, nc, nr: obj.simpo_loss(pc, pr, nc, nr, 2.0, 0.5, 0.05)[0],
              lambda pc, pr, rc, rr, nc, nr: plain_simpo(pc, pr, nc, nr, 2.0, 0.5, 0.05)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_loss_and_gradients_match_a_plain_implementation(name, logps):
    ours, plain = CASES[name]
    pc, pr, rc, rr, nc, nr = logps
    args32 = [mx.array(a.astype(np.float32)) for a in logps]
    assert ours(*args32).item() == pytest.approx(plain(*logps), rel=1e-5, abs=1e-5)

    grad_c, grad_r = mx.grad(lambda a, b: ours(a, b, *args32[2:]), argnums=(0, 1))(*args32[:2])
    want_c = numeric_grad(lambda x: plain(x, pr, rc, rr, nc, nr), pc)
    want_r = numeric_grad(lambda x: plain(pc, x, rc, rr, nc, nr), pr)
    assert np.allclose(np.array(grad_c), want_c, atol=1e-5)
    assert np.allclose(np.array(grad_r), want_r, atol=1e-5)


def test_dpo_metrics(logps):
    pc, pr, rc, rr, _, _ = [mx.array(a.astype(np.float32)) for a in logps]
    _, m = obj.dpo_loss(pc, pr, rc, rr, 0.5)
    chosen = 0.5 * (logps[0] - logps[2])
    rejected = 0.5 * (logps[1] - logps[3])
    assert m["reward_chosen"].item() == pytest.approx(chosen.mean(), abs=1e-5)
    assert m["margin"].item() == pytest.approx((chosen - rejected).mean(), abs=1e-5)
    assert m["accuracy"].item() == pytest.approx((chosen > rejected).mean())


# --- pair data ----------------------------------------------------------------------------------

def write_pairs(path: Path, n: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    with path.open("w") as fh:
        for i in range(n):
            a = int(rng.integers(0, 100))
            row = ({"prompt": f"hello {a}"} if i % 2 else
                   {"messages": [{"role": "system", "content": "be brief"},
                                 {"role": "user", "content": f"hello {a}"}]})
            row["chosen"] = "yes"
            row["rejected"] = {"role": "assistant", "content": "no no no, this is a test"}
            fh.write(json.dumps(row) + "\n")
    return path


def test_pair_masks_cover_only_the_answer(tiny_tokenizer, tmp_path):
    path = write_pairs(tmp_path / "p.jsonl", 2)
    spec = recipe_mod.DataSpec(train=str(path), max_length=128)
    pairs = encode_pairs(load_rows(path), tiny_tokenizer, spec, path).pairs
    for pair in pairs:
        for enc, text in ((pair.chosen, "yes<|im_end|>"),
                          (pair.rejected, "no no no, this is a test<|im_end|>")):
            trained = [t for t, m in zip(enc.ids, enc.mask) if m]
            assert tiny_tokenizer.decode(trained) == text
        n = pair.chosen.mask.index(1)
        assert n == pair.rejected.mask.index(1)
        assert pair.chosen.ids[:n] == pair.rejected.ids[:n]   # the same prompt


def test_pair_errors_name_file_line_and_key(tiny_tokenizer, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"prompt": "a", "chosen": "b", "rejected": "c"}) + "\n"
                    + json.dumps({"prompt": "a", "chosen": "b"}) + "\n")
    spec = recipe_mod.DataSpec(train=str(path))
    with pytest.raises(MacftError, match=rf"^{path}:2: missing key 'rejected'$"):
        encode_pairs(load_rows(path), tiny_tokenizer, spec, path)


def test_pair_batches_put_chosen_then_rejected(tiny_tokenizer, tmp_path):
    path = write_pairs(tmp_path / "p.jsonl", 6)
    spec = recipe_mod.DataSpec(train=str(path), max_length=128)
    pairs = encode_pairs(load_rows(path), tiny_tokenizer, spec, path).pairs
    batcher = PairBatcher(pairs, 2, seed=1)
    pb = batcher.batch(0)
    assert pb.batch.inputs.shape[0] == 4
    for k, i in enumerate(pb.index):
        n = len(pairs[i].chosen.ids) - 1
        assert list(pb.batch.inputs[k, :n]) == pairs[i].chosen.ids[:-1]
        n = len(pairs[i].rejected.ids) - 1
        assert list(pb.batch.inputs[2 + k, :n]) == pairs[i].rejected.ids[:-1]
    assert (batcher.batch(0).index == pb.index).all()


# --- training -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def prefdir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("pref")
    write_tiny_model(d / "model")
    write_pairs(d / "train.jsonl", 16)
    write_pairs(d / "valid.jsonl", 8, seed=1)
    return d


def pref_recipe(d: Path, out: str, objective: str, **train_over) -> recipe_mod.Recipe:
    return recipe_mod.from_dict({
        "name": out, "model": str(d / "model"), "method": "lora", "objective": objective,
        "lora": {"rank": 4, "alpha": 8},
        "preference": {"beta": 0.5},
        "data": {"train": str(d / "train.jsonl"), "valid": str(d / "valid.jsonl"),
                 "max_length": 64},
        "train": {"steps": 15, "batch_size": 4, "learning_rate": 5e-3, "eval_every": 15,
                  "save_every": 5, **train_over},
        "output": str(d / out),
    })


@pytest.mark.parametrize("objective", ["dpo", "ipo", "orpo", "simpo"])
def test_preference_objectives_learn_the_preference(prefdir, objective):
    sink = Collect()
    train(pref_recipe(prefdir, f"run-{objective}", objective), [sink])
    steps = sink.of(Step)
    assert {"accuracy", "margin", "reward_chosen", "reward_rejected"} <= set(steps[0].metrics)
    first, last = steps[0].metrics["margin"], steps[-1].metrics["margin"]
    assert last > first
    val = sink.of(Eval)[-1]
    assert val.metrics["accuracy"] == 1.0
    logged = [e for e in read_metrics(prefdir / f"run-{objective}" / "metrics.jsonl")
              if e["event"] == "Step"]
    assert logged[-1]["metrics"]["margin"] == pytest.approx(last)
    has_ref = (prefdir / f"run-{objective}" / "reference_logps.safetensors").exists()
    assert has_ref == (objective in ("dpo", "ipo"))


def test_dpo_starts_at_zero_margin_against_its_own_reference(prefdir):
    """The reference is the model as the stage starts: the first step's rewards are zero."""
    sink = Collect()
    train(pref_recipe(prefdir, "run-zero", "dpo", steps=1), [sink])
    m = sink.of(Step)[0].metrics
    assert m["reward_chosen"] == pytest.approx(0.0, abs=1e-5)
    assert m["margin"] == pytest.approx(0.0, abs=1e-5)


def _cli(args, env=None):
    return subprocess.run([sys.executable, "-m", "macft", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=600,
                          env=dict(os.environ, HF_HUB_OFFLINE="1", **(env or {})))


@pytest.mark.slow
def test_sft_then_dpo_stages_and_resume_inside_dpo(prefdir, tiny_tokenizer):
    sft = prefdir / "sft.jsonl"
    sft.write_text("".join(json.dumps({"prompt": f"hello {i}", "completion": "yes"}) + "\n"
                           for i in range(8)))
    path = prefdir / "staged.yaml"
    path.write_text(f"""
name: staged
model: {prefdir / 'model'}
method: lora
lora: {{rank: 4, alpha: 8}}
data: {{max_length: 64}}
train: {{batch_size: 4, learning_rate: 0.005, eval_every: 0, save_every: 3}}
output: {prefdir / 'staged'}
stages:
  - objective: sft
    data: {{train: {sft}}}
    train: {{steps: 4}}
  - objective: dpo
    data: {{train: {prefdir / 'train.jsonl'}, valid: {prefdir / 'valid.jsonl'}}}
    train: {{steps: 8}}
""")
    killed = _cli(["run", str(path)], {"MACFT_DEBUG_KILL_AFTER_STEP": "5"})
    assert killed.returncode == -9
    run = prefdir / "staged"
    assert (run / "stage-1-sft" / "finished.json").exists()
    assert (run / "stage-2-dpo" / "checkpoints" / "latest").read_text() == "step-0000003"
    ref_before = (run / "stage-2-dpo" / "reference_logps.safetensors").read_bytes()

    resumed = _cli(["run", str(run)])
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming at step 3 of 8" in resumed.stderr
    assert "stage-1-sft" not in resumed.stderr        # the finished SFT stage is not re-run
    assert (run / "stage-2-dpo" / "finished.json").exists()
    assert (run / "stage-2-dpo" / "reference_logps.safetensors").read_bytes() == ref_before
    steps = [e["step"] for e in read_metrics(run / "stage-2-dpo" / "metrics.jsonl")
             if e["event"] == "Step"]
    assert steps == [1, 2, 3, 4, 5, 4, 5, 6, 7, 8]   # killed after 5, resumed from 3


def test_disabled_adapters_give_the_base_model(prefdir):
    from macft.models.adapters import disabled
    from macft.models.load import load_base, load_for_inference

    train(pref_recipe(prefdir, "run-off", "dpo", steps=3), [])
    tuned, _ = load_for_inference(str(prefdir / "run-off"))
    base = load_base(str(prefdir / "model")).model
    ids = mx.array([[1, 5, 9, 22, 41]])
    assert mx.abs(tuned.model(ids) - base(ids)).max().item() > 1e-3
    with disabled(tuned.model):
        assert mx.abs(tuned.model(ids) - base(ids)).max().item() < 1e-5
    assert mx.abs(tuned.model(ids) - base(ids)).max().item() > 1e-3   # switched back on


def test_eval_pairs_reports_accuracy_and_margin(prefdir, capsys):
    from macft.cli import main

    train(pref_recipe(prefdir, "run-evalpairs", "dpo"), [])
    assert main(["eval", str(prefdir / "run-evalpairs"), "--pairs",
                 str(prefdir / "valid.jsonl")]) == 0
    out = capsys.readouterr().out
    assert "pairs         8" in out
    assert "preference accuracy 100.0%  (margin > 0; log-ratio vs the base model)" in out
    margin = float(out.split("mean margin")[1].split()[0])
    assert margin > 0
    assert main(["eval", str(prefdir / "model"), "--pairs", str(prefdir / "valid.jsonl")]) == 0
    assert "no reference" in capsys.readouterr().out
