"""Preference training: the losses against plain implementations, pair data, DPO runs, stages."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
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


def plain_dpop(pc, pr, rc, rr, beta, lam, ls):
    """DPOP (Pal et al. 2024, eq. 3), written out pair by pair."""
    out = []
    for c, r, c0, r0 in zip(pc, pr, rc, rr):
        z = beta * ((c - c0) - (r - r0) - lam * max(0.0, c0 - c))
        out.append(-(1 - ls) * logsig(z) - ls * logsig(-z))
    return np.mean(out)


def plain_rpo(pc, pr, rc, rr, nc, nr, beta, w):
    """DPO plus w times the chosen answers' mean per-token NLL (RPO)."""
    return plain_dpo(pc, pr, rc, rr, beta, 0.0) + w * np.mean([-c / n for c, n in zip(pc, nc)])


def spec_of(**over):
    return recipe_mod.PreferenceSpec(**over)


CASES = {
    "dpo": (lambda pc, pr, rc, rr, nc, nr: obj.dpo_loss(pc, pr, rc, rr, 0.3, 0.1)[0],
            lambda pc, pr, rc, rr, nc, nr: plain_dpo(pc, pr, rc, rr, 0.3, 0.1)),
    "dpop": (lambda pc, pr, rc, rr, nc, nr: obj.pair_loss(
                 "dpo", pc, pr, nc, nr, (rc, rr),
                 spec_of(beta=0.3, dpop_lambda=5.0, label_smoothing=0.1))[0],
             lambda pc, pr, rc, rr, nc, nr: plain_dpop(pc, pr, rc, rr, 0.3, 5.0, 0.1)),
    "rpo": (lambda pc, pr, rc, rr, nc, nr: obj.pair_loss(
                "dpo", pc, pr, nc, nr, (rc, rr), spec_of(beta=0.3, nll_weight=0.7))[0],
            lambda pc, pr, rc, rr, nc, nr: plain_rpo(pc, pr, rc, rr, nc, nr, 0.3, 0.7)),
    "simpo_nll": (lambda pc, pr, rc, rr, nc, nr: obj.pair_loss(
                      "simpo", pc, pr, nc, nr, None,
                      spec_of(beta=2.0, simpo_gamma=0.5, nll_weight=1.5))[0],
                  lambda pc, pr, rc, rr, nc, nr: plain_simpo(pc, pr, nc, nr, 2.0, 0.5, 0.0)
                  + 1.5 * np.mean(-pc / nc)),
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


def test_dpop_penalty_acts_only_when_the_chosen_log_prob_falls(logps):
    """The fixture has pairs on both sides of the reference: the penalty term is the only
    difference from DPO, and it is zero where the chosen log-prob rose."""
    pc, pr, rc, rr, nc, nr = logps
    rose = pc >= rc
    assert rose.any() and (~rose).any()
    args = [mx.array(a.astype(np.float32)) for a in logps]
    dpo_each = [obj.dpo_loss(*[a[i:i + 1] for a in args[:4]], 0.3)[0].item()
                for i in range(len(pc))]
    dpop_each = [obj.dpo_loss(*[a[i:i + 1] for a in args[:4]], 0.3, 0.0, 5.0)[0].item()
                 for i in range(len(pc))]
    assert np.allclose(np.array(dpop_each)[rose], np.array(dpo_each)[rose], atol=1e-6)
    assert (np.array(dpop_each)[~rose] > np.array(dpo_each)[~rose] + 1e-3).all()
    _, m = obj.dpo_loss(*args[:4], 0.3, 0.0, 5.0)
    assert m["dpop_penalty"].item() == pytest.approx(np.maximum(rc - pc, 0).mean(), rel=1e-5)


def test_nll_term_is_reported_and_off_by_default(logps):
    pc, pr, rc, rr, nc, nr = [mx.array(a.astype(np.float32)) for a in logps]
    plain, m0 = obj.pair_loss("dpo", pc, pr, nc, nr, (rc, rr), spec_of(beta=0.3))
    assert "chosen_nll" not in m0
    loss, m = obj.pair_loss("dpo", pc, pr, nc, nr, (rc, rr), spec_of(beta=0.3, nll_weight=2.0))
    nll = np.mean(-logps[0] / logps[4])
    assert m["chosen_nll"].item() == pytest.approx(nll, rel=1e-5)
    assert loss.item() == pytest.approx(plain.item() + 2.0 * nll, rel=1e-5)


@pytest.mark.parametrize("key, value, message", [
    ("nll_weight", -0.1, r"key 'preference.nll_weight' must be >= 0, got -0.1"),
    ("dpop_lambda", -1, r"key 'preference.dpop_lambda' must be >= 0, got -1"),
    ("beta", 0, r"key 'preference.beta' must be > 0, got 0"),
    ("label_smoothing", 0.5, r"key 'preference.label_smoothing' must be in \[0, 0.5\), got 0.5"),
    ("kto_undesirable_weight", 0, r"key 'preference.kto_undesirable_weight' must be > 0, got 0"),
])
def test_preference_options_out_of_bounds_are_refused(key, value, message):
    with pytest.raises(MacftError, match=rf"^r.yaml: {message}"):
        recipe_mod.from_dict({"preference": {key: value}}, "r.yaml")


# --- KTO ----------------------------------------------------------------------------------------

def plain_kto(p, r, pk, rk, good, beta, wd, wu):
    """KTO (Ethayarajh et al. 2024, eq. 8) in float64: lambda_y - v(x, y), z0 from the
    mismatched pairs, clamped at zero."""
    z0 = max(0.0, float(np.mean(pk - rk)))
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    out = [wd - wd * sig(beta * ((a - b) - z0)) if g else wu - wu * sig(beta * (z0 - (a - b)))
           for a, b, g in zip(p, r, good)]
    return float(np.mean(out)), z0


@pytest.mark.parametrize("kl_shift", [0.8, -0.8])
def test_kto_loss_and_gradients_match_a_plain_implementation(kl_shift):
    from macft.train.objectives.kto import kto_loss

    rng = np.random.default_rng(3)
    n = 8
    p = -rng.uniform(5, 40, n)
    r = p + rng.normal(0, 1.5, n)
    pk = -rng.uniform(20, 60, n)
    rk = pk - kl_shift + rng.normal(0, 0.1, n)     # +0.8: z0 > 0; -0.8: clamped to 0
    good = np.array([1, 0, 1, 1, 0, 0, 1, 0], dtype=bool)
    beta, wd, wu = 0.5, 1.0, 1.33
    f32 = lambda a: mx.array(a.astype(np.float32))  # noqa: E731
    loss, m = kto_loss(f32(p), f32(r), f32(pk), f32(rk), mx.array(good), beta, wd, wu)
    want, z0 = plain_kto(p, r, pk, rk, good, beta, wd, wu)
    assert loss.item() == pytest.approx(want, rel=1e-5, abs=1e-6)
    assert m["kl"].item() == pytest.approx(z0, abs=1e-4)
    assert (z0 > 0) == (kl_shift > 0)
    assert m["reward_desirable"].item() == pytest.approx(beta * (p - r)[good].mean(), rel=1e-4)
    assert m["reward_undesirable"].item() == pytest.approx(beta * (p - r)[~good].mean(),
                                                           rel=1e-4)

    g_p, g_pk = mx.grad(lambda a, b: kto_loss(a, f32(r), b, f32(rk), mx.array(good), beta, wd,
                                              wu)[0], argnums=(0, 1))(f32(p), f32(pk))
    # z0 is not back-propagated: the plain gradient holds it fixed.
    want_p = numeric_grad(lambda x: plain_kto(x, r, pk, rk, good, beta, wd, wu)[0], p)
    assert np.allclose(np.array(g_p), want_p, atol=1e-5)
    assert np.array(g_pk).tolist() == [0.0] * n


def write_unpaired(path: Path, n: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    with path.open("w") as fh:
        for i in range(n):
            a = int(rng.integers(0, 100))
            good = i % 2 == 0
            fh.write(json.dumps({"prompt": f"hello {a}",
                                 "completion": "yes" if good else "no no no, this is a test",
                                 "label": good}) + "\n")
    return path


def test_unpaired_rows_pair_each_prompt_with_another_completion(tiny_tokenizer, tmp_path):
    from macft.data.preference import encode_unpaired, mismatch_order

    partner = mismatch_order(7, seed=5)
    assert sorted(partner.tolist()) == list(range(7))
    assert all(partner[i] != i for i in range(7))
    assert np.array_equal(partner, mismatch_order(7, seed=5))
    path = write_unpaired(tmp_path / "k.jsonl", 6)
    spec = recipe_mod.DataSpec(train=str(path), max_length=128)
    rows = encode_unpaired(load_rows(path), tiny_tokenizer, spec, path, seed=2)
    assert rows.desirable.tolist() == [True, False] * 3
    partner = mismatch_order(6, seed=2)
    for i, pair in enumerate(rows.pairs):
        own = tiny_tokenizer.decode([t for t, m in zip(pair.chosen.ids, pair.chosen.mask) if m])
        other = tiny_tokenizer.decode([t for t, m in zip(pair.rejected.ids,
                                                         pair.rejected.mask) if m])
        assert own == ("yes" if i % 2 == 0 else "no no no, this is a test") + "<|im_end|>"
        assert other == ("yes" if partner[i] % 2 == 0 else "no no no, this is a test") \
            + "<|im_end|>"
        n = pair.chosen.mask.index(1)
        assert pair.chosen.ids[:n] == pair.rejected.ids[:n]   # the same prompt


def test_unpaired_row_errors_name_file_line_and_key(tiny_tokenizer, tmp_path):
    from macft.data.preference import encode_unpaired

    spec = recipe_mod.DataSpec(max_length=128)
    path = tmp_path / "bad.jsonl"
    for row, message in [({"prompt": "a", "completion": "b"}, "missing key 'label'"),
                         ({"prompt": "a", "completion": "b", "label": "yes"},
                          "key 'label' must be true or false, got 'yes'"),
                         ({"prompt": "a", "label": True}, "missing key 'completion'")]:
        path.write_text(json.dumps({"prompt": "x", "completion": "y", "label": True}) + "\n"
                        + json.dumps(row) + "\n")
        with pytest.raises(MacftError, match=rf"^{path}:2: {message}"):
            encode_unpaired(load_rows(path), tiny_tokenizer, spec, path, 0)


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


def test_kto_learns_the_labels(prefdir):
    write_unpaired(prefdir / "kto-train.jsonl", 16)
    write_unpaired(prefdir / "kto-valid.jsonl", 8, seed=1)
    recipe = recipe_mod.from_dict({
        "name": "kto", "model": str(prefdir / "model"), "method": "lora", "objective": "kto",
        "lora": {"rank": 4, "alpha": 8}, "preference": {"beta": 0.5},
        "data": {"train": str(prefdir / "kto-train.jsonl"),
                 "valid": str(prefdir / "kto-valid.jsonl"), "max_length": 64},
        "train": {"steps": 15, "batch_size": 4, "learning_rate": 5e-3, "eval_every": 15},
        "output": str(prefdir / "run-kto")})
    sink = Collect()
    train(recipe, [sink])
    steps = sink.of(Step)
    assert set(steps[0].metrics) == {"reward_desirable", "reward_undesirable", "kl", "accuracy"}
    assert steps[0].metrics["reward_desirable"] == pytest.approx(0.0, abs=1e-5)  # own reference
    assert steps[0].metrics["accuracy"] == pytest.approx(0.5)                     # all ties
    last = steps[-1].metrics
    assert last["reward_desirable"] > 0 > last["reward_undesirable"]
    assert steps[-1].loss < steps[0].loss
    assert sink.of(Eval)[-1].metrics["accuracy"] == 1.0
    assert (prefdir / "run-kto" / "reference_logps.safetensors").exists()


def test_nll_weight_raises_the_chosen_answers_likelihood(prefdir):
    """The same DPO run with and without the NLL term: with it, the chosen answers end up
    more likely under the policy than under the reference (reward_chosen > 0)."""
    ends = {}
    for w in (0.0, 1.0):
        sink = Collect()
        recipe = pref_recipe(prefdir, f"run-nll-{w}", "dpo", steps=8)
        recipe = dataclasses.replace(recipe, preference=dataclasses.replace(
            recipe.preference, nll_weight=w))
        train(recipe, [sink])
        ends[w] = sink.of(Step)[-1].metrics
    assert "chosen_nll" in ends[1.0] and "chosen_nll" not in ends[0.0]
    assert ends[1.0]["reward_chosen"] > ends[0.0]["reward_chosen"]
    assert ends[1.0]["reward_chosen"] > 0


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


def test_eval_pairs_reports_the_chosen_style_of_greedy_answers(prefdir, capsys, tmp_path):
    """The style line counts greedy answers; --out keeps each with its verdict."""
    from macft.cli import main

    run = prefdir / "run-evalpairs"
    if not run.exists():
        train(pref_recipe(prefdir, "run-evalpairs", "dpo"), [])
    out_file = tmp_path / "answers.jsonl"
    assert main(["eval", str(run), "--pairs", str(prefdir / "valid.jsonl"), "--max-tokens", "6",
                 "--style", ".", "--out", str(out_file)]) == 0
    out = capsys.readouterr().out
    records = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert len(records) == 8 and all(r["chosen"] == "yes" for r in records)
    nonempty = sum(bool(r["prediction"].strip()) for r in records)
    assert [r["style"] for r in records] == [bool(r["prediction"].strip()) for r in records]
    assert f"chosen style  {nonempty / 8:.1%}  (greedy answers; matches /./)" in out
    exact = sum(r["prediction"].strip() == "yes" for r in records)
    assert f"= chosen      {exact / 8:.1%}" in out
    assert main(["eval", str(run), "--pairs", str(prefdir / "valid.jsonl"),
                 "--style", "("]) == 2
    assert "macft: error: --style: not a regular expression" in capsys.readouterr().err


def test_style_match_rules():
    from macft.evaluation import style_match

    rx = re.compile(r"^Answer: -?\d+\.$")
    assert style_match(" Answer: 42.\n", "Answer: 41.", rx)
    assert not style_match("Answer: 42. Because", "Answer: 42.", rx)
    # default: the first three words of the pair's chosen answer
    assert style_match("The capital of Chile is Santiago, a city", "The capital of Peru", None)
    assert not style_match("Great question! The capital", "The capital of Chile", None)
    assert not style_match("", "The capital of Chile", None)
