"""RoPE scaling from the recipe: applied to the MLX model, trained, exported into GGUF's
rope.scaling metadata, and read the same way by llama.cpp past the native context."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import macft  # noqa: F401  (loads OpenBLAS before mlx)
import mlx.core as mx

from conftest import TINY_LLAMA, write_tiny_model
from macft import recipe as recipe_mod
from macft.cli import main
from macft.errors import MacftError
from macft.export import verify
from macft.gguf.reader import read_header
from macft.models import rope
from macft.models.load import load_base, load_for_inference

NATIVE = 64
LONG = 160                     # past the native context: where scaling changes the logits
LLAMA = dict(TINY_LLAMA, max_position_embeddings=NATIVE, head_dim=16)
ROWS = [{"text": "the quick brown fox jumps over the lazy dog 0123456789. " * 6}] * 4


def _spec(**kw):
    raw = {"model": {"path": "x", "rope_scaling": kw}}
    return recipe_mod.from_dict(raw).model.rope_scaling


def _ids(n: int) -> list[int]:
    return [int(i) for i in np.random.default_rng(0).integers(3, 320, size=n)]


def test_yarn_frequencies_and_temperature_are_llama_cpps(tmp_path):
    """The scaled model's rope against llama.cpp's formulas (ggml's rope_yarn), in float64."""
    loaded = load_base(str(write_tiny_model(tmp_path / "m", LLAMA)),
                       rope_scaling=_spec(type="yarn", factor=4.0))
    r = loaded.model.layers[0].self_attn.rope
    dims, base, s, orig = 16, 10000.0, 4.0, NATIVE

    def corr_dim(rot):
        return dims * math.log(orig / (rot * 2 * math.pi)) / (2 * math.log(base))

    lo, hi = max(0, math.floor(corr_dim(32))), min(dims - 1, math.ceil(corr_dim(1)))
    theta = base ** (-np.arange(0, dims, 2) / dims)
    ramp = 1 - np.clip((np.arange(dims // 2) - lo) / max(0.001, hi - lo), 0, 1)
    want = theta / s * (1 - ramp) + theta * ramp              # llama.cpp's mixed angle
    np.testing.assert_allclose(1 / np.array(r._freqs), want, rtol=1e-6)
    assert r.mscale == pytest.approx(1 + 0.1 * math.log(s))
    assert loaded.config["rope_scaling"]["original_max_position_embeddings"] == NATIVE
    assert loaded.config["max_position_embeddings"] == 4 * NATIVE


def test_attn_factor_round_trips_through_mlx_lms_mscale():
    cfg = rope.scaling_config(_spec(type="yarn", factor=8.0, attn_factor=0.7),
                              {"max_position_embeddings": 32})
    assert rope.yarn_attn_factor(cfg) == pytest.approx(0.7)
    assert rope.yarn_attn_factor({"factor": 8.0}) == pytest.approx(1.0)


def _train_export(tmp_path, scaling: str) -> tuple:
    folder = write_tiny_model(tmp_path / "hf", LLAMA, seed=2)
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    run = tmp_path / "run"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model:\n  path: {folder}\n  rope_scaling: {scaling}\nmethod: lora\n"
                      f"data:\n  train: {data}\n  max_length: {LONG + 40}\n"
                      "lora:\n  rank: 4\n  alpha: 16\ntrain:\n  steps: 2\n  batch_size: 2\n"
                      "  learning_rate: 0.01\n  eval_every: 0\n  save_every: 0\n"
                      f"output: {run}\n")
    assert main(["run", str(recipe)]) == 0
    out = tmp_path / "fused.gguf"
    assert main(["export", str(run), "--gguf", str(out), "--quant", "f32"]) == 0
    return folder, run, out


SCALINGS = {"yarn": "{type: yarn, factor: 4}", "linear": "{type: linear, factor: 4}",
            "yarn-betas": "{type: yarn, factor: 4, beta_fast: 16, beta_slow: 2}"}


@pytest.mark.parametrize("name", list(SCALINGS))
def test_scaled_llama_matches_llama_cpp_past_the_native_context(tmp_path, capsys, name):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not importable",
                        exc_type=ImportError)
    kind = name.split("-")[0]
    folder, run, out = _train_export(tmp_path, SCALINGS[name])
    capsys.readouterr()
    meta = read_header(out).metadata
    assert meta["llama.rope.scaling.type"] == kind
    assert meta["llama.rope.scaling.factor"] == pytest.approx(4.0)
    assert meta["llama.context_length"] == 4 * NATIVE
    if kind == "yarn":
        assert meta["llama.rope.scaling.original_context_length"] == NATIVE
        betas = (16.0, 2.0) if name == "yarn-betas" else (32.0, 1.0)
        assert (meta["llama.rope.scaling.yarn_beta_fast"],
                meta["llama.rope.scaling.yarn_beta_slow"]) == betas
    tuned, _ = load_for_inference(str(run))
    ids = _ids(LONG)
    ours = verify.mlx_logits(tuned.model, ids)
    llm = verify.llamacpp.open_gguf(out, n_ctx=LONG + 16, logits_all=True)
    theirs = verify.llama_logits(llm, ids)
    past = slice(NATIVE, LONG)
    assert np.abs(ours[past] - theirs[past]).max() < 2e-3, np.abs(ours - theirs).max()
    result = verify.compare_logits(ours, theirs, ids)
    assert result.top1 == 1.0 and result.kl < 1e-5, result.lines()
    # The scaling matters there: the same weights with plain rope differ far beyond that.
    plain = load_base(str(folder))
    from macft.models.adapters import apply_adapters, load_adapter_weights

    apply_adapters(plain.model, json.loads((run / "adapter_config.json").read_text()))
    load_adapter_weights(plain.model, run)
    unscaled = verify.mlx_logits(plain.model, ids)
    gap, off = np.abs(ours[past] - theirs[past]).max(), np.abs(unscaled[past] - theirs[past]).max()
    print(f"{name}: max |MLX - llama.cpp| at positions {NATIVE}-{LONG}: {gap:.2e}; "
          f"unscaled rope: {off:.2e}")
    assert off > 100 * gap
    # and the exported file imports with its scaling again
    back = load_base(str(out))
    assert back.config["rope_scaling"]["type"] == kind
    np.testing.assert_allclose(verify.mlx_logits(back.model, ids)[past], ours[past], atol=2e-3)


def test_rope_scaling_refusals(tmp_path):
    with pytest.raises(MacftError, match="'model.rope_scaling.factor' must be >= 1"):
        _spec(type="yarn", factor=0.5)
    with pytest.raises(MacftError, match="must be one of none, linear, yarn"):
        _spec(type="dynamic", factor=2)
    gemma = dict(TINY_LLAMA, model_type="gemma3_text", hidden_size=64, num_attention_heads=2,
                 num_key_value_heads=1, head_dim=32, query_pre_attn_scalar=32,
                 sliding_window=16, sliding_window_pattern=2)
    folder = write_tiny_model(tmp_path / "g", gemma)
    with pytest.raises(MacftError, match="not supported for gemma3_text"):
        load_base(str(folder), rope_scaling=_spec(type="linear", factor=2))


def test_export_refuses_a_yarn_attention_factor_in_one_line(tmp_path, capsys):
    with pytest.raises(AssertionError):
        _train_export(tmp_path, "{type: yarn, factor: 4, attn_factor: 0.8}")
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == ("macft: error: GGUF export: YaRN with an attention factor other than 1 (0.8) is "
                   "not supported: llama.cpp applies it differently from mlx-lm"), err
    assert not (tmp_path / "fused.gguf").exists()
