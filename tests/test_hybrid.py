"""Hybrid linear-attention families (gated-delta qwen3_next, qwen3_5): LoRA trains, the
adapter saves and loads back to the same model, and what is unsupported is refused in one line."""

from __future__ import annotations

import json

import numpy as np
import pytest

import macft  # noqa: F401  (loads OpenBLAS before mlx)
import mlx.core as mx
from safetensors.numpy import load_file

from conftest import TINY_LLAMA, write_tiny_model
from macft import recipe as recipe_mod
from macft.cli import main
from macft.models import hybrid
from macft.models.load import load_base, load_for_inference
from macft.train.loop import Trainer

HYBRID = dict(TINY_LLAMA, hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
              num_key_value_heads=2, head_dim=16, linear_num_value_heads=4,
              linear_num_key_heads=2, linear_key_head_dim=16, linear_value_head_dim=16,
              linear_conv_kernel_dim=4, full_attention_interval=4, partial_rotary_factor=0.25,
              tie_word_embeddings=False)
FAMILIES = {
    "qwen3_next": dict(HYBRID, model_type="qwen3_next", num_experts=4, num_experts_per_tok=2,
                       decoder_sparse_step=1, shared_expert_intermediate_size=64,
                       mlp_only_layers=[], moe_intermediate_size=32),
    "qwen3_5": dict(HYBRID, model_type="qwen3_5"),
}
ROWS = [{"messages": [{"role": "user", "content": "what is the answer?"},
                      {"role": "assistant", "content": "the answer is 42."}]},
        {"messages": [{"role": "user", "content": "hello world"},
                      {"role": "assistant", "content": "hello, this is a tiny test."}]}]
IDS = [[5, 17, 200, 3, 99, 42, 7, 311, 64, 1, 8, 250]]


def _recipe(tmp_path, folder, extra: str = "") -> recipe_mod.Recipe:
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS * 4))
    raw = recipe_mod.parse_yaml(
        f"model: {folder}\nmethod: lora\ndata:\n  train: {data}\nlora:\n  rank: 4\n"
        "train:\n  steps: 3\n  batch_size: 2\n  learning_rate: 0.01\n  eval_every: 0\n"
        f"  save_every: 0\noutput: {tmp_path / 'run'}\n{extra}")
    return recipe_mod.from_dict(raw)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_lora_trains_saves_and_loads_back(tmp_path, family):
    folder = write_tiny_model(tmp_path / "hf", FAMILIES[family], seed=1)
    recipe = _recipe(tmp_path, folder)
    trainer = Trainer(recipe, [])
    done = trainer.run()
    assert done.reason == "completed" and done.step == 3
    assert hybrid.linear_attention_layers(trainer.model) == 3      # 3 of 4 layers recurrent
    assert not trainer.objective.compiles(3)                       # auto: left uncompiled
    saved = load_file(str(recipe.run_dir / "adapters.safetensors"))
    assert any(".linear_attn." in k for k in saved), sorted(saved)
    assert any(".lora_b" in k and np.abs(v).max() > 0 for k, v in saved.items()
               if ".linear_attn." in k)                          # the recurrent layers learned
    trainer.model.eval()
    tuned_logits = np.array(trainer.model(mx.array(IDS)))
    back, _ = load_for_inference(str(recipe.run_dir))
    np.testing.assert_allclose(np.array(back.model(mx.array(IDS))), tuned_logits, atol=1e-5)
    base = np.array(load_base(str(folder)).model(mx.array(IDS)))
    assert np.abs(base - tuned_logits).max() > 1e-3                # the adapter is in use


def test_packing_and_gguf_export_are_refused_in_one_line(tmp_path, capsys):
    folder = write_tiny_model(tmp_path / "hf", FAMILIES["qwen3_5"], seed=1)
    recipe = tmp_path / "r.yaml"
    recipe_mod.dump(_recipe(tmp_path, folder), recipe)
    assert main(["run", str(recipe), "data.packing=true"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == ("macft: error: recipe: key 'data.packing' is not supported for qwen3_5: "
                       "its linear-attention layers would carry their state from one packed "
                       "example into the next"), err
    assert main(["run", str(recipe)]) == 0
    capsys.readouterr()
    assert main(["export", str(tmp_path / "run"), "--gguf", str(tmp_path / "x.gguf")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        "macft: error: GGUF export does not support model type 'qwen3_5' (supported: llama"), err
    assert not (tmp_path / "x.gguf").exists()
