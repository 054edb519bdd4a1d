"""Mixture-of-experts training: the router's balance loss, per-expert shares, frozen experts."""

from __future__ import annotations

import json

import numpy as np
import pytest

import macft  # noqa: F401  (loads OpenBLAS before mlx)
import mlx.core as mx
from safetensors.numpy import load_file

from conftest import TINY_LLAMA, write_tiny_model
from macft.cli import main
from macft.events import read_metrics
from macft.models import moe
from macft.models.load import load_base

MOE = dict(TINY_LLAMA, model_type="qwen3_moe", head_dim=16, tie_word_embeddings=False,
           num_experts=4, num_experts_per_tok=2, moe_intermediate_size=64,
           decoder_sparse_step=1, mlp_only_layers=[], norm_topk_prob=True)
ROWS = [{"messages": [{"role": "user", "content": q},
                      {"role": "assistant", "content": a}]}
        for q, a in [("what is the answer?", "the answer is 42."),
                     ("hello world", "hello, this is a tiny test."),
                     ("the quick brown fox", "jumps over the lazy dog 0123456789."),
                     ("name and age?", '{"name": "Ada", "age": 36, "city": "London"}')]]


def numpy_balance(logits: np.ndarray, k: int, real: np.ndarray) -> tuple[float, np.ndarray]:
    """The Switch balance loss in float64: n * sum_i f_i * P_i over the real positions."""
    x = logits.reshape(-1, logits.shape[-1]).astype(np.float64)
    w = real.reshape(-1).astype(np.float64)
    n = x.shape[1]
    p = np.exp(x - x.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    top = np.argsort(-x, axis=1)[:, :k]
    hits = np.zeros_like(p)
    np.put_along_axis(hits, top, 1.0, axis=1)
    f = (hits * w[:, None]).sum(0) / (k * w.sum())
    mean_p = (p * w[:, None]).sum(0) / w.sum()
    return float(n * (f * mean_p).sum()), f


def test_balance_equals_float64_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 11, 8)).astype(np.float32) * 2
    real = (np.arange(11)[None, :] < np.array([11, 7, 2])[:, None]).astype(np.float32)
    for k in (1, 2, 3):
        aux, share = moe.balance(mx.array(logits), k, mx.array(real))
        want, want_share = numpy_balance(logits, k, real)
        assert abs(aux.item() - want) < 1e-5, (k, aux.item(), want)
        np.testing.assert_allclose(np.array(share), want_share, atol=1e-6)
        assert abs(float(np.array(share).sum()) - 1.0) < 1e-6


def test_router_loss_on_a_model_equals_numpy_on_its_router_logits(tmp_path):
    loaded = load_base(str(write_tiny_model(tmp_path / "moe", MOE, seed=3)))
    model = loaded.model
    inputs = mx.array(np.random.default_rng(1).integers(0, 320, size=(2, 9)).astype(np.int32))
    real = np.ones((2, 9), np.float32)
    real[1, 5:] = 0
    fn = moe.with_router_loss(lambda m, x: m(x).sum() * 0, weight=0.5)
    total, (aux, shares) = fn(model, inputs, mx.array(real), mx.array(2.0))
    with moe.tapped(model) as tape:
        model(inputs)
    assert len(tape) == 2 and tape[0][1].shape == (2, 9, 4)
    per_layer = [numpy_balance(np.array(t[1]), 2, real) for t in tape]
    want = np.mean([a for a, _ in per_layer])
    assert abs(aux.item() - want) < 1e-5
    assert abs(total.item() - 0.5 * 2.0 * want) < 1e-5
    np.testing.assert_allclose(np.array(shares), [s for _, s in per_layer], atol=1e-6)
    assert type(model.layers[0].mlp.gate).__name__ == "Linear"    # the tap is gone again


def _recipe(tmp_path, name: str, base, extra: str) -> tuple:
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS * 2))
    run = tmp_path / name
    recipe = tmp_path / f"{name}.yaml"
    recipe.write_text(f"model: {base}\nmethod: lora\ndata:\n  train: {data}\n"
                      "lora:\n  rank: 4\n  alpha: 16\ntrain:\n  batch_size: 4\n"
                      "  learning_rate: 0.01\n  eval_every: 0\n  save_every: 0\n"
                      f"  schedule: constant\noutput: {run}\n{extra}")
    return recipe, run


def _routing(run) -> list[dict]:
    return [e["metrics"] for e in read_metrics(run / "metrics.jsonl") if e["event"] == "Step"]


def _tail(steps: list[dict], key: str, n: int = 10) -> float:
    return float(np.mean([m[key] for m in steps[-n:]]))


@pytest.mark.slow
def test_aux_loss_keeps_routing_balanced_where_plain_training_collapses(tmp_path, capsys):
    """A tiny random MoE fitting a few rows: plain SFT piles the tokens onto two of the four
    experts (top-2), the balance loss keeps them spread (measured over the last 10 steps)."""
    base = write_tiny_model(tmp_path / "moe", MOE, seed=5)
    runs = {}
    for weight in (0.0, 0.1):
        recipe, run = _recipe(tmp_path, f"aux{weight}", base,
                              f"moe:\n  aux_loss_weight: {weight}\n")
        assert main(["run", str(recipe), "train.steps=30"]) == 0
        runs[weight] = _routing(run)
        assert len(runs[weight]) == 30
    capsys.readouterr()
    off, on = runs[0.0], runs[0.1]
    start = off[0]
    assert on[0]["moe_share"] == start["moe_share"]          # the same first forward pass
    said = {w: {k: _tail(r, k) for k in ("moe_entropy", "moe_max_share", "moe_aux_loss")}
            for w, r in runs.items()}
    print(f"start: entropy {start['moe_entropy']:.3f}, max share {start['moe_max_share']:.3f}; "
          + "; ".join(f"aux {w}: entropy {m['moe_entropy']:.3f}, max share "
                      f"{m['moe_max_share']:.3f}, balance loss {m['moe_aux_loss']:.3f}"
                      for w, m in said.items()))
    # Off: collapsed toward the two-expert floor (entropy 0.5, max share 0.5).
    assert said[0.0]["moe_entropy"] < start["moe_entropy"] - 0.2
    assert said[0.1]["moe_entropy"] > said[0.0]["moe_entropy"] + 0.2
    assert said[0.1]["moe_max_share"] < said[0.0]["moe_max_share"] - 0.05
    assert said[0.1]["moe_aux_loss"] < said[0.0]["moe_aux_loss"] - 0.3


def test_shares_are_logged_without_the_aux_loss(tmp_path, capsys):
    base = write_tiny_model(tmp_path / "moe", MOE, seed=3)
    firsts = []
    for mode in ("on", "off"):              # the compiled step and the plain one
        recipe, run = _recipe(tmp_path, f"plain-{mode}", base, "")
        assert main(["run", str(recipe), "train.steps=2", f"train.compile={mode}"]) == 0
        line = next(x for x in capsys.readouterr().err.splitlines() if "2/2 loss" in x)
        steps = _routing(run)
        step = steps[-1]
        shares = np.array(step["moe_share"])
        assert shares.shape == (2, 4) and np.allclose(shares.sum(axis=1), 1.0, atol=1e-3)
        assert step["moe_max_share"] == pytest.approx(shares.max(), abs=1e-3)
        assert 0 < step["moe_entropy"] <= 1
        assert f"expert max share {step['moe_max_share']:.2f}" in line, line
        firsts.append(steps[0])
    np.testing.assert_allclose(firsts[0]["moe_share"], firsts[1]["moe_share"], atol=1e-3)
    assert firsts[0]["moe_aux_loss"] == pytest.approx(firsts[1]["moe_aux_loss"], abs=1e-4)


@pytest.mark.parametrize("method", ["lora", "full"])
def test_frozen_experts_stay_bitwise_unchanged(tmp_path, method):
    base = write_tiny_model(tmp_path / "moe", MOE, seed=3)
    if method == "lora":
        # First train every expert, so that the frozen experts' LoRA B is not all zeros.
        recipe, warm = _recipe(tmp_path, "warm", base, "")
        assert main(["run", str(recipe), "train.steps=3"]) == 0
        start = load_file(str(warm / "adapters.safetensors"))
        extra = f"init_adapter: {warm}\n"
    else:
        start = load_file(str(base / "model.safetensors"))
        extra = ""
    recipe, run = _recipe(tmp_path, "frozen", base, extra + "moe:\n  train_experts: [0, 3]\n")
    assert main(["run", str(recipe), "train.steps=4", f"method={method}",
                 "train.weight_decay=0.1"]) == 0
    end = load_file(str(run / "adapters.safetensors"))
    experts = [k for k in end if ".switch_mlp." in k]
    assert len(experts) == (12 if method == "lora" else 6), experts
    for key in experts:
        assert np.array_equal(end[key][[1, 2]], start[key][[1, 2]]), key
        assert not np.array_equal(end[key][[0, 3]], start[key][[0, 3]]), key
    moved = [k for k in end if ".switch_mlp." not in k and k in start
             and not np.array_equal(end[k], start[k])]
    assert any(".self_attn." in k for k in moved) and any(".mlp.gate." in k for k in moved)


def test_moe_options_refused_in_one_line(tmp_path, capsys):
    llama = write_tiny_model(tmp_path / "llama")
    recipe, _ = _recipe(tmp_path, "r", llama, "moe:\n  train_experts: [1]\n")
    assert main(["run", str(recipe), "train.steps=1"]) == 2
    assert "key 'moe.train_experts' is set but the model has no mixture-of-experts" \
        in capsys.readouterr().err
    moe_base = write_tiny_model(tmp_path / "moe", MOE)
    recipe, _ = _recipe(tmp_path, "r2", moe_base, "moe:\n  train_experts: [0, 4]\n")
    assert main(["run", str(recipe), "train.steps=1"]) == 2
    assert "expert 4 does not exist (the model has experts 0 to 3)" in capsys.readouterr().err
    recipe, _ = _recipe(tmp_path, "r3", moe_base, "moe:\n  aux_loss_weight: -1\n")
    assert main(["run", str(recipe), "train.steps=1"]) == 2
    assert "key 'moe.aux_loss_weight' must be >= 0" in capsys.readouterr().err
