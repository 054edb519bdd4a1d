"""The training engine on tiny random models: packing, methods, resume, events, adapters."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import macft  # noqa: F401
import mlx.core as mx
import numpy as np

from conftest import write_tiny_model
from macft import recipe as recipe_mod
from macft.data import Batcher, encode_rows, load_rows, make_sequences
from macft.events import Checkpoint, Collect, Eval, Finished, RunStarted, Step, read_metrics
from macft.models import patch
from macft.models.load import load_base, load_for_inference
from macft.train.loop import train
from macft.train.loss import token_losses, trained_positions

ROOT = Path(__file__).resolve().parents[1]


def write_chat_set(path: Path, n: int = 24, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    with path.open("w") as fh:
        for _ in range(n):
            a, b = rng.integers(0, 10, 2)
            row = {"messages": [
                {"role": "system", "content": "answer"},
                {"role": "user", "content": f"hello {a} world {b}"},
                {"role": "assistant", "content": f"the answer is {a}{b}"},
                {"role": "user", "content": "again"},
                {"role": "assistant", "content": f"{b}{a}"}]}
            fh.write(json.dumps(row) + "\n")
    return path


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("engine")
    write_tiny_model(d / "model")
    write_chat_set(d / "train.jsonl")
    write_chat_set(d / "valid.jsonl", n=8, seed=1)
    return d


def make_recipe(workdir: Path, out: str, **over) -> recipe_mod.Recipe:
    raw = {
        "name": "t", "model": str(workdir / "model"), "method": "lora",
        "lora": {"rank": 4, "alpha": 8},
        "quantize": {"bits": 4, "group_size": 32},
        "data": {"train": str(workdir / "train.jsonl"), "valid": str(workdir / "valid.jsonl"),
                 "max_length": 64},
        "train": {"steps": 12, "batch_size": 4, "learning_rate": 1e-2, "eval_every": 4,
                  "save_every": 3, "seed": 3},
        "output": str(workdir / out),
    }
    for key, value in over.items():
        section, _, leaf = key.partition("__")
        if leaf:
            raw.setdefault(section, {})[leaf] = value
        else:
            raw[section] = value
    return recipe_mod.from_dict(raw)


def test_packed_and_unpacked_batches_give_the_same_loss(workdir):
    loaded = load_base(str(workdir / "model"))
    spec = recipe_mod.DataSpec(train=str(workdir / "train.jsonl"), max_length=256)
    enc = encode_rows(load_rows(spec.train), loaded.tokenizer, spec, spec.train)
    examples = enc.examples[:8]

    def mean_loss(packing: bool) -> tuple[float, int, int]:
        seqs = make_sequences(examples, 256, packing)
        batcher = Batcher(seqs, batch_size=len(seqs), seed=0, shuffle=False)
        total, count = 0.0, 0
        for b in batcher.iter_eval():
            pos = trained_positions(b.mask)
            seg = mx.array(b.segments) if b.segments is not None else None
            with patch.segments(seg):
                losses = token_losses(loaded.model, mx.array(b.inputs), mx.array(b.targets), pos)
            total += losses.sum().item()
            count += pos.size
        return total / count, count, len(seqs)

    packed, n_packed, rows_packed = mean_loss(True)
    plain, n_plain, rows_plain = mean_loss(False)
    assert rows_packed < rows_plain == 8          # packing really put examples together
    assert n_packed == n_plain                    # the same trained tokens
    assert packed == pytest.approx(plain, abs=1e-5)


def test_without_segment_mask_packing_would_leak(workdir):
    """The segment mask matters: dropping it changes the packed loss."""
    loaded = load_base(str(workdir / "model"))
    spec = recipe_mod.DataSpec(train=str(workdir / "train.jsonl"), max_length=256)
    enc = encode_rows(load_rows(spec.train), loaded.tokenizer, spec, spec.train)
    seqs = make_sequences(enc.examples[:8], 256, True)
    b = Batcher(seqs, len(seqs), 0, shuffle=False).batch(0)
    pos = trained_positions(b.mask)
    args = (loaded.model, mx.array(b.inputs), mx.array(b.targets), pos)
    with patch.segments(mx.array(b.segments)):
        masked = token_losses(*args).mean().item()
    with patch.segments(None):
        leaky = token_losses(*args).mean().item()
    assert abs(masked - leaky) > 1e-3


def write_memorization_set(path: Path) -> Path:
    """Eight fixed question/answer pairs: learnable by heart, so the loss can go near zero."""
    words = ["quick brown fox", "lazy dog", "tiny tokenizer", "hello world",
             "the answer", "this is a test", "user assistant", "brown dog"]
    with path.open("w") as fh:
        for i, w in enumerate(words):
            row = {"messages": [{"role": "user", "content": f"fact {i}"},
                                {"role": "assistant", "content": w}]}
            fh.write(json.dumps(row) + "\n")
    return path


@pytest.mark.parametrize("method", ["lora", "dora", "qlora", "full"])
def test_each_method_lowers_the_loss(workdir, method):
    memo = write_memorization_set(workdir / "memo.jsonl")
    lr = 2e-3 if method == "full" else 4e-3
    recipe = make_recipe(workdir, f"run-{method}", method=method,
                         lora={"rank": 8, "alpha": 16},
                         data={"train": str(memo), "valid": str(memo), "max_length": 64},
                         train__learning_rate=lr, train__steps=40, train__eval_every=40,
                         train__save_every=0)
    sink = Collect()
    done = train(recipe, [sink])
    losses = [e.loss for e in sink.of(Step)]
    assert len(losses) == 40 and done.reason == "completed"
    assert np.mean(losses[-3:]) < 0.4 * np.mean(losses[:3]), losses
    start = sink.of(RunStarted)[0]
    assert start.method == method
    if method == "full":
        assert start.trainable_params == start.total_params
    else:
        assert 0 < start.trainable_params < start.total_params
    if method == "qlora":
        names = {type(m).__name__ for _, m in load_for_inference(recipe.output)[0].model
                 .named_modules()}
        assert "FastQuantizedLinear" in names and "QLoRALinear" in names


def test_events_and_metrics_file(workdir):
    recipe = make_recipe(workdir, "run-events", train__steps=8)
    sink = Collect()
    train(recipe, [sink])
    steps = sink.of(Step)
    assert [s.step for s in steps] == list(range(1, 9))
    assert [e.step for e in sink.of(Eval)] == [4, 8]
    assert {c.step for c in sink.of(Checkpoint) if not c.best} == {3, 6, 8}
    assert isinstance(sink.events[-1], Finished)
    logged = read_metrics(Path(recipe.output) / "metrics.jsonl")
    assert [e["event"] for e in logged].count("Step") == 8
    assert logged[0]["event"] == "RunStarted" and logged[-1]["event"] == "Finished"
    saved = recipe_mod.load(Path(recipe.output) / "recipe.yaml")
    assert saved == recipe


def test_early_stopping_keeps_the_best(workdir, monkeypatch):
    """Scripted validation losses: the best is 2.0 at step 4; two worse evaluations stop it."""
    from macft.train.objectives.sft import Sft

    scripted = iter([3.0, 2.0, 2.5, 2.6, 9.9, 9.9])
    monkeypatch.setattr(Sft, "validation_loss", lambda self: next(scripted))
    recipe = make_recipe(workdir, "run-early", train__steps=40, train__eval_every=2,
                         train__patience=2)
    sink = Collect()
    done = train(recipe, [sink])
    assert [(e.step, e.val_loss, e.improved) for e in sink.of(Eval)] == [
        (2, 3.0, True), (4, 2.0, True), (6, 2.5, False), (8, 2.6, False)]
    assert done.reason == "early_stopping" and done.step == 8
    assert done.best_val_loss == 2.0
    best = [c for c in sink.of(Checkpoint) if c.best]
    assert [c.step for c in best] == [2, 4]
    assert (Path(recipe.output) / "best" / "adapters.safetensors").exists()


def _run_cli(args, env_extra=None, cwd=None):
    env = dict(os.environ, HF_HUB_OFFLINE="1", **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "macft", *args], capture_output=True,
                          text=True, env=env, cwd=cwd or ROOT, timeout=600)


@pytest.mark.slow
def test_sigkill_and_resume_matches_an_uninterrupted_run(workdir):
    raw = yaml.safe_load(yaml.safe_dump(recipe_mod.to_dict(make_recipe(workdir, "unused"))))
    raw["lora"]["dropout"] = 0.1   # dropout randomness must be resumed too
    paths = {}
    for name in ("straight", "killed"):
        raw["output"] = str(workdir / f"resume-{name}")
        paths[name] = workdir / f"{name}.yaml"
        paths[name].write_text(yaml.safe_dump(raw))

    straight = _run_cli(["run", str(paths["straight"])])
    assert straight.returncode == 0, straight.stderr
    assert "device: cpu | dtype: float32 | BLAS: OpenBLAS" in straight.stderr

    killed = _run_cli(["run", str(paths["killed"])], {"MACFT_DEBUG_KILL_AFTER_STEP": "7"})
    assert killed.returncode == -9                       # SIGKILL, no clean-up ran
    run_dir = workdir / "resume-killed"
    assert (run_dir / "checkpoints" / "latest").read_text() == "step-0000006"
    resumed = _run_cli(["run", str(run_dir)])
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming at step 6 of 12" in resumed.stderr

    a = mx.load(str(workdir / "resume-straight" / "adapters.safetensors"))
    b = mx.load(str(run_dir / "adapters.safetensors"))
    assert a.keys() == b.keys() and len(a) > 0
    for key in a:
        assert mx.allclose(a[key], b[key], atol=1e-5).item(), key
    la = [e["loss"] for e in read_metrics(workdir / "resume-straight" / "metrics.jsonl")
          if e["event"] == "Step"]
    lb = {e["step"]: e["loss"] for e in read_metrics(run_dir / "metrics.jsonl")
          if e["event"] == "Step"}
    assert [lb[s] for s in range(1, 13)] == pytest.approx(la, abs=1e-5)


def test_adapters_load_in_mlx_lm(workdir):
    """The run folder is an mlx-lm adapter folder: mlx_lm.load(adapter_path=...) gives the same
    logits as macft's own model."""
    from mlx_lm import load as mlx_load

    recipe = make_recipe(workdir, "run-mlxlm", train__steps=4, train__eval_every=0)
    train(recipe, [])
    ours, _ = load_for_inference(recipe.output, adapter=recipe.output)
    theirs, _ = mlx_load(str(workdir / "model"), adapter_path=recipe.output)
    ids = mx.array([[1, 5, 9, 22, 41, 7]])
    diff = mx.abs(ours.model(ids) - theirs(ids)).max().item()
    assert diff < 1e-4


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_fuse_writes_a_folder_mlx_lm_opens(workdir, tmp_path, method):
    from mlx_lm import load as mlx_load

    from macft.cli import main

    recipe = make_recipe(workdir, f"run-fuse-{method}", method=method, train__steps=6,
                         train__eval_every=0)
    train(recipe, [])
    out = tmp_path / "fused"
    assert main(["fuse", recipe.output, "--out", str(out)]) == 0
    fused, _ = mlx_load(str(out))
    tuned, _ = load_for_inference(recipe.output)
    base = load_base(str(workdir / "model")).model
    ids = mx.array([[1, 5, 9, 22, 41, 7]])
    a, b, c = tuned.model(ids), fused(ids), base(ids)
    cfg = json.loads((out / "config.json").read_text())
    if method == "lora":
        assert mx.abs(a - b).max().item() < 1e-4
        assert "quantization" not in cfg
    else:
        # The 4-bit base is re-quantized with the update folded in: not exact, but the fused
        # model is much closer to the tuned one than the base is.
        assert cfg["quantization"]["bits"] == 4
        assert mx.abs(a - b).mean().item() < 0.5 * mx.abs(a - c).mean().item()


@pytest.mark.slow
def test_real_smollm2_qlora_steps_lower_validation_loss(smollm2_path, tmp_path):
    """A few QLoRA steps on the real 4-bit SmolLM2 (the GGUF base stays quantized)."""
    from macft.train.loop import Trainer

    recipe = recipe_mod.from_dict({
        "model": str(smollm2_path), "method": "qlora",
        "data": {"train": str(ROOT / "data/quickstart/train.jsonl"),
                 "valid": str(ROOT / "data/quickstart/valid.jsonl"), "max_length": 160},
        "train": {"steps": 4, "batch_size": 4, "learning_rate": 5e-4, "eval_batches": 2,
                  "save_every": 0},
        "output": str(tmp_path / "run"),
    })
    trainer = Trainer(recipe, [Collect()])
    trainer.setup()
    before = trainer.objective.validation_loss()
    for step in range(4):
        trainer.train_step(step)
    after = trainer.objective.validation_loss()
    trainer.close()
    assert before > 0.2            # the base model does not know the format
    assert after < 0.6 * before, (before, after)
    names = {type(m).__name__ for _, m in trainer.model.named_modules()}
    assert {"FastQuantizedLinear", "FastQuantizedEmbedding", "QLoRALinear"} <= names


def _first_update(workdir, out, **over):
    recipe = make_recipe(workdir, out, train__steps=1, train__eval_every=0,
                         train__save_every=0, **over)
    sink = Collect()
    train(recipe, [sink])
    return sink.of(Step)[0].loss, mx.load(str(Path(recipe.output) / "adapters.safetensors"))


def test_gradient_accumulation_equals_the_larger_batch(workdir):
    """Two micro-batches of 2 make the same step as one batch of 4 (same data order)."""
    loss_a, w_a = _first_update(workdir, "accum-1x4", train__batch_size=4)
    loss_b, w_b = _first_update(workdir, "accum-2x2", train__batch_size=2, train__grad_accum=2)
    assert loss_a == pytest.approx(loss_b, abs=1e-5)
    # Adam's first step is about lr * sign(grad), so a gradient entry near zero turns float32
    # summation-order noise into ~1e-4 of the update: 1e-5 absolute against updates of ~3e-2.
    for key in w_a:
        assert mx.allclose(w_a[key], w_b[key], atol=1e-5).item(), key


@pytest.mark.parametrize("method,packing", [("lora", False), ("lora", True), ("qlora", False)])
def test_compiled_step_matches_the_uncompiled_one(workdir, monkeypatch, method, packing):
    """train.compile: the compiled SFT step (fast exp inside) makes the same updates as the
    plain one, traces once per batch shape and really runs the fast exp."""
    from macft.kernels import fastexp
    from macft.train.loop import Trainer

    traced = []
    real = fastexp._exp
    monkeypatch.setattr(fastexp, "_exp", lambda *a: traced.append(1) or real(*a))

    def run(out, compile_):
        recipe = make_recipe(workdir, out, method=method, train__steps=3, train__eval_every=0,
                             train__save_every=0, train__compile=compile_,
                             data__packing=packing)
        trainer = Trainer(recipe, [])
        trainer.setup()
        shapes, losses, calls = [], [], []
        for step in range(3):
            shapes.append(trainer.micro_batches(step)[0].inputs.shape)
            losses.append(trainer.train_step(step)[0])
            calls.append(len(traced))
        trainer.close()
        return trainer, shapes, losses, calls

    plain, _, want, calls_off = run(f"cmp-off-{method}-{packing}", "off")
    assert plain.objective.compiled_step is None and calls_off == [0, 0, 0]
    traced.clear()
    comp, shapes, got, calls = run(f"cmp-on-{method}-{packing}", "auto")
    assert comp.objective.compiled_step is not None               # auto compiles on the CPU in float32
    assert got == pytest.approx(want, abs=1e-5)
    assert calls[0] > 0                                 # the fast exp is in the traced graph
    for k in (1, 2):                                    # a known shape runs without tracing
        if shapes[k] in shapes[:k]:
            assert calls[k] == calls[k - 1], (shapes, calls)
    for name, value in comp.model.trainable_parameters()["model"]["layers"][0].items():
        other = plain.model.trainable_parameters()["model"]["layers"][0][name]
        assert all(mx.allclose(a, b, atol=1e-5).item() for a, b in zip(
            _leaves(value), _leaves(other))), name


def _leaves(tree):
    from mlx.utils import tree_flatten
    return [v for _, v in tree_flatten(tree)]


def test_compile_auto_stays_off_with_stock_kernels(workdir):
    from macft.train.loop import Trainer

    recipe = make_recipe(workdir, "cmp-stock", kernels="stock", train__steps=1,
                         train__eval_every=0, train__save_every=0)
    trainer = Trainer(recipe, [])
    trainer.setup()
    trainer.close()                 # kernels: stock ends with the run
    assert trainer.objective.compiled_step is None


def test_schedules():
    from macft.recipe import TrainSpec
    from macft.train.loop import build_schedule

    cos = build_schedule(TrainSpec(learning_rate=1.0, warmup_steps=4, schedule="cosine",
                                   min_lr_ratio=0.1), 14)
    values = [cos(mx.array(s)).item() for s in (0, 3, 4, 9, 14)]
    assert values == pytest.approx([0.25, 1.0, 1.0, 0.55, 0.1], abs=1e-6)
    lin = build_schedule(TrainSpec(learning_rate=2.0, schedule="linear"), 10)
    assert [lin(mx.array(s)).item() for s in (0, 5, 10)] == pytest.approx([2.0, 1.0, 0.0])


def test_generate_command_prints_the_greedy_answer(workdir, capsys):
    from macft.cli import main
    from macft.generation import chat_prompt, greedy

    assert main(["generate", str(workdir / "model"), "--prompt", "hello", "--max-tokens",
                 "6"]) == 0
    printed = capsys.readouterr().out
    loaded = load_base(str(workdir / "model"))
    expected = greedy(loaded.model, loaded.tokenizer, [chat_prompt(loaded.tokenizer, "hello")],
                      6)[0]
    assert printed == expected + "\n"


def test_reference_attention_matches_mlx_sdpa():
    """kernels.attention.reference (plain ops, grouped heads) against MLX's fused attention."""
    from macft.kernels import attention as attn

    mx.random.seed(0)
    q = mx.random.normal((2, 6, 11, 16))
    k, v = mx.random.normal((2, 2, 11, 16)), mx.random.normal((2, 2, 11, 16))
    seg = mx.array([[0] * 4 + [1] * 7, [0] * 9 + [-1] * 2])
    for mask in ("causal", attn.segment_mask(seg)):
        want = mx.fast.scaled_dot_product_attention(q, k, v, scale=0.25, mask=mask)
        got = attn.reference(q, k, v, 0.25, mask)
        assert mx.abs(got - want).max().item() < 1e-5
    # A packed example alone gives the same output as inside the pack.
    alone = attn.reference(q[:1, :, 4:], k[:1, :, 4:], v[:1, :, 4:], 0.25, "causal")
    packed = attn.reference(q, k, v, 0.25, attn.segment_mask(seg))[:1, :, 4:]
    assert mx.abs(alone - packed).max().item() < 1e-5
