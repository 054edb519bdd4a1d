"""Every family macft supports, end to end: import (HF folder and GGUF) -> LoRA -> llama.cpp.

Per family a tiny random model is written as a Hugging Face folder; the GGUF source is that
folder exported at f32 by macft (whose layout tests/test_export_llamacpp.py checks against
llama.cpp). A few LoRA steps with ``macft run``, then ``macft export`` of the run: llama.cpp's
logits on the fused GGUF (and, on a GGUF base, on the base plus the adapter GGUF) must match
MLX's logits of the tuned model.
"""

from __future__ import annotations

import json

import pytest

import macft  # noqa: F401  (loads OpenBLAS before mlx)

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not importable (pip install "
                    "'macft[gguf]')", exc_type=ImportError)

from conftest import write_tiny_model  # noqa: E402
from test_export_gguf import ARCHS  # noqa: E402
from macft.cli import main  # noqa: E402
from macft.export import verify  # noqa: E402
from macft.models.load import load_for_inference  # noqa: E402
from mlx.utils import tree_flatten  # noqa: E402

FAMILIES = ["llama", "mistral", "qwen2", "qwen3", "qwen3_moe", "gemma3"]
ROWS = [{"messages": [{"role": "user", "content": "what is the answer?"},
                      {"role": "assistant", "content": "the answer is 42."}]},
        {"messages": [{"role": "user", "content": "hello world"},
                      {"role": "assistant", "content": "hello, this is a tiny test."}]}]
# MLX against llama.cpp on the same f32 weights: only float rounding should differ.
SAME = verify.Thresholds(top1=0.98, kl=1e-3, ppl=0.01)


def _train(tmp_path, base: str) -> tuple:
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS * 4))
    run = tmp_path / "run"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"model: {base}\nmethod: lora\ndata:\n  train: {data}\n"
                      "lora:\n  rank: 4\n  alpha: 16\ntrain:\n  steps: 3\n  batch_size: 2\n"
                      "  learning_rate: 0.01\n  eval_every: 0\n  save_every: 0\n"
                      f"output: {run}\n")
    assert main(["run", str(recipe)]) == 0
    return run


@pytest.mark.parametrize("source", ["hf", "gguf"])
@pytest.mark.parametrize("family", FAMILIES)
def test_import_train_export_matches_llama_cpp(tmp_path, capsys, family, source):
    from safetensors import safe_open

    folder = write_tiny_model(tmp_path / "hf", ARCHS[family], seed=1)
    base = str(folder)
    if source == "gguf":
        base = str(tmp_path / "base.gguf")
        assert main(["export", str(folder), "--gguf", base, "--quant", "f32"]) == 0
    run = _train(tmp_path, base)
    said = "".join(capsys.readouterr())
    with safe_open(str(run / "adapters.safetensors"), "np") as f:
        saved = {k: f.get_tensor(k).size for k in f.keys()}
    tuned, _ = load_for_inference(str(run))
    trainable = {k: v.size for k, v in tree_flatten(tuned.model.trainable_parameters())}
    assert trainable == saved
    assert f"trainable params: {sum(saved.values()):,} of" in said, said
    experts = sum(n for k, n in saved.items() if ".mlp.switch_mlp." in k)
    if family == "qwen3_moe":
        # "all" reaches the stacked experts (mlx-lm's LoRASwitchLinear): gate, up and down
        # of every layer, rank 4 for each of the 4 experts.
        cfg = ARCHS[family]
        per_layer = 4 * 4 * (2 * (256 + 256) + (256 + 256))
        assert experts == cfg["num_hidden_layers"] * per_layer, experts
    else:
        assert experts == 0
    fused = tmp_path / "fused.gguf"
    args = ["export", str(run), "--gguf", str(fused), "--quant", "f32"]
    adapter = tmp_path / "lora.gguf"
    if source == "gguf" and family != "qwen3_moe":
        args += ["--gguf-adapter", str(adapter)]
    assert main(args) == 0
    result = verify.verify_gguf(tuned.model, tuned.tokenizer, fused, SAME)
    assert result.tokens_match and result.kl < 1e-3, result.lines()
    if adapter.exists():
        with_lora = verify.verify_gguf(tuned.model, tuned.tokenizer, base, SAME, lora=adapter)
        assert with_lora.kl < 1e-3, with_lora.lines()
