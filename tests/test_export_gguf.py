"""GGUF export without llama.cpp: golden files, importer round trips, quantizer numbers, adapters.

Golden files (tests/golden/export-*.txt) pin every tensor's name, shape and type at every
``--quant`` and the metadata with its value types; regenerate them after a reviewed change with
``MACFT_UPDATE_SNAPSHOTS=1 pytest tests/test_export_gguf.py``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

import macft  # noqa: F401  (loads OpenBLAS before mlx)
import gguf
import mlx.core as mx
import mlx.nn as nn
from mlx_lm.utils import _get_classes

from conftest import TINY_LLAMA, make_tokenizer, write_tiny_model
from macft.cli import main
from macft.errors import MacftError
from macft.export import quants
from macft.export.adapter import write_lora_gguf
from macft.export.quant_plan import QUANTS, use_more_bits
from macft.export.writer import write_gguf
from macft.gguf.reader import load_gguf, permute_rows, read_header, unpermute_rows

Q = gguf.GGMLQuantizationType
GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("MACFT_UPDATE_SNAPSHOTS") == "1"
IDS = [[5, 17, 200, 3, 99, 42, 7, 311, 64, 1]]

# Tiny models whose rows split into 256-element K-quant blocks (llama, qwen3) or do not
# (qwen2: every K type falls back), so both paths are pinned.
ARCHS = {
    "llama": dict(TINY_LLAMA, hidden_size=256, intermediate_size=512, num_hidden_layers=8),
    "mistral": dict(TINY_LLAMA, model_type="mistral", hidden_size=256, intermediate_size=512,
                    tie_word_embeddings=False),
    "qwen2": dict(TINY_LLAMA, model_type="qwen2", rope_theta=1000000.0),
    "qwen3": dict(TINY_LLAMA, model_type="qwen3", hidden_size=256, intermediate_size=512,
                  head_dim=32, tie_word_embeddings=False),
}
ARCHS.update({
    "qwen3_moe": dict(TINY_LLAMA, model_type="qwen3_moe", hidden_size=256, intermediate_size=512,
                      head_dim=64, tie_word_embeddings=False, num_experts=4,
                      num_experts_per_tok=2, moe_intermediate_size=256, decoder_sparse_step=1,
                      mlp_only_layers=[], norm_topk_prob=True),
    # Six layers: five sliding-window (16 tokens) and one global, as llama.cpp's pattern 6.
    "gemma3": dict(TINY_LLAMA, model_type="gemma3_text", hidden_size=256, intermediate_size=512,
                   num_hidden_layers=6, num_attention_heads=2, num_key_value_heads=1,
                   head_dim=128, query_pre_attn_scalar=128, rms_norm_eps=1e-6,
                   rope_theta=1000000.0, rope_local_base_freq=10000.0, sliding_window=16,
                   sliding_window_pattern=6),
})
ALL_ARCHS = ARCHS


def tiny(arch: str, seed: int = 0, **extra):
    cfg = dict(ALL_ARCHS[arch], **extra)
    mx.random.seed(seed)
    model_cls, args_cls = _get_classes(cfg)
    model = model_cls(args_cls.from_dict(cfg))
    if cfg["model_type"] == "gemma3_text" and cfg["tie_word_embeddings"]:
        model.sanitize({})                             # mlx-lm ties Gemma by dropping lm_head
    mx.eval(model.parameters())
    return model, cfg


def logits_of(model, ids=IDS) -> np.ndarray:
    return np.array(model(mx.array(ids)).astype(mx.float32))


# --------------------------------------------------------------------------------------------
# Golden files


def _value(field) -> str:
    vtype = field.types[0]
    value = field.contents()
    if vtype == gguf.GGUFValueType.ARRAY:
        items = list(value)
        digest = hashlib.sha256(repr(items).encode()).hexdigest()[:12]
        return (f"{field.types[-1].name}[{len(items)}] first {items[:4]!r} "
                f"sha256 {digest}")
    if vtype == gguf.GGUFValueType.FLOAT32:
        return str(np.float32(value))
    return repr(value)


def describe(path: Path) -> tuple[list[str], dict[str, str]]:
    """(metadata lines 'key: TYPE = value', {tensor name: 'shape TYPE'}) of a GGUF file."""
    reader = gguf.GGUFReader(str(path))
    meta = [f"{key}: {field.types[0].name} = {_value(field)}"
            for key, field in reader.fields.items() if not key.startswith("GGUF.")]
    tensors = {t.name: f"{list(reversed(t.shape.tolist()))} {t.tensor_type.name}"
               for t in reader.tensors}
    return meta, tensors


def golden_text(arch: str, files: dict[str, Path]) -> str:
    metas = {q: describe(p) for q, p in files.items()}
    base_meta, base_tensors = metas["f16"]
    lines = [f"# macft GGUF export of the tiny random {arch} (tests/test_export_gguf.py)",
             "# regenerate: MACFT_UPDATE_SNAPSHOTS=1 pytest tests/test_export_gguf.py", "",
             "## metadata at f16 (key: GGUF type = value)"] + base_meta
    lines += ["", "## metadata that differs from f16"]
    base_keys = {m.split(":", 1)[0] for m in base_meta}
    for q, (meta, _) in metas.items():
        keys = {m.split(":", 1)[0] for m in meta}
        lines += [f"{q}: {m}" for m in meta if m not in base_meta]
        lines += [f"{q}: no {k}" for k in sorted(base_keys - keys)]
    lines += ["", "## tensors (numpy shape) and their type per --quant",
              "name shape " + " ".join(files)]
    for name, spec in base_tensors.items():
        shape = spec.rsplit(" ", 1)[0]
        types = [metas[q][1][name].rsplit(" ", 1)[1] for q in files]
        lines.append(f"{name} {shape.replace(' ', '')} " + " ".join(types))
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("arch", list(ALL_ARCHS))
def test_golden_tensor_table_and_metadata(tmp_path, arch):
    model, cfg = tiny(arch)
    tok = make_tokenizer(cfg["vocab_size"])
    files = {}
    for quant in QUANTS:
        files[quant] = write_gguf(model, cfg, tok, tmp_path / f"{quant}.gguf", quant,
                                  name=f"tiny-{arch}").path
    text = golden_text(arch, files)
    golden = GOLDEN / f"export-{arch}.txt"
    if UPDATE or not golden.exists():
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(text)
        if not UPDATE:
            pytest.fail(f"{golden} was missing and has been written: review it and rerun")
    assert text == golden.read_text(), f"{golden} differs (MACFT_UPDATE_SNAPSHOTS=1 to rewrite)"


def test_llama_rows_are_permuted_and_qwen_rows_are_not(tmp_path):
    for arch in ("llama", "qwen2"):
        model, cfg = tiny(arch, seed=1)
        path = write_gguf(model, cfg, make_tokenizer(), tmp_path / f"{arch}.gguf", "f32").path
        stored = {t.name: t for t in gguf.GGUFReader(str(path)).tensors}
        q = np.array(model.model.layers[0].self_attn.q_proj.weight)
        k = np.array(model.model.layers[0].self_attn.k_proj.weight)
        got_q = np.array(stored["blk.0.attn_q.weight"].data)
        got_k = np.array(stored["blk.0.attn_k.weight"].data)
        if arch == "llama":
            assert np.array_equal(got_q, permute_rows(q, cfg["num_attention_heads"]))
            assert np.array_equal(got_k, permute_rows(k, cfg["num_key_value_heads"]))
            assert not np.array_equal(got_q, q)
        else:
            assert np.array_equal(got_q, q) and np.array_equal(got_k, k)
            bias = np.array(stored["blk.0.attn_q.bias"].data)
            assert np.array_equal(bias, np.array(model.model.layers[0].self_attn.q_proj.bias))


def test_q4_k_m_gives_more_bits_where_llama_cpp_does():
    # llama.cpp's use_more_bits for 8 layers: the first, the last, and every third from 2.
    assert [i for i in range(8) if use_more_bits(i, 8)] == [0, 3, 6, 7]
    assert [i for i in range(30) if use_more_bits(i, 30)][:6] == [0, 1, 2, 5, 8, 11]


# --------------------------------------------------------------------------------------------
# Round trips through macft's importer (which is checked against llama.cpp's layout)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_f32_export_reimports_to_the_same_logits(tmp_path, arch):
    model, cfg = tiny(arch, seed=2)
    path = write_gguf(model, cfg, make_tokenizer(), tmp_path / "m.gguf", "f32").path
    loaded, tok, config = load_gguf(path)
    assert np.abs(logits_of(loaded) - logits_of(model)).max() < 1e-4
    assert config["model_type"] == ("llama" if arch == "mistral" else cfg["model_type"])
    assert config["tie_word_embeddings"] == cfg["tie_word_embeddings"]
    assert tok.encode("hello world, <|im_start|>user") == \
        make_tokenizer().encode("hello world, <|im_start|>user")


@pytest.mark.parametrize("quant", ["q8_0", "q4_0", "q4_1"])
def test_block_exports_reimport_to_their_dequantized_values(tmp_path, quant):
    # The importer reads these types exactly (MLX affine), so every weight must equal
    # gguf-py's dequantization of what was written, in Hugging Face row order.
    model, cfg = tiny("llama", seed=3)
    written = write_gguf(model, cfg, make_tokenizer(), tmp_path / "m.gguf", quant)
    reader = {t.name: t for t in gguf.GGUFReader(str(written.path)).tensors}
    loaded, _, _ = load_gguf(written.path)
    layer = loaded.model.layers[1].self_attn.k_proj
    want = gguf.quants.dequantize(np.array(reader["blk.1.attn_k.weight"].data), Q[quant.upper()])
    got = mx.dequantize(layer.weight, layer.scales, layer.biases, 32, layer.bits)
    assert np.array_equal(np.array(got), unpermute_rows(want, cfg["num_key_value_heads"]))


def test_llama3_rope_scaling_travels_as_rope_freqs(tmp_path):
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    model, cfg = tiny("llama", seed=4, rope_theta=500000.0, rope_scaling=scaling)
    path = write_gguf(model, cfg, make_tokenizer(), tmp_path / "l3.gguf", "f32").path
    assert read_header(path).tensors["rope_freqs.weight"].shape == (32,)
    loaded, _, config = load_gguf(path)
    assert config["rope_scaling"] == scaling
    assert np.abs(logits_of(loaded) - logits_of(model)).max() < 1e-4


def test_linear_rope_scaling_is_written_as_metadata(tmp_path):
    model, cfg = tiny("qwen2", rope_scaling={"type": "linear", "factor": 2.0})
    path = write_gguf(model, cfg, make_tokenizer(), tmp_path / "m.gguf", "f16").path
    md = read_header(path).metadata
    assert md["qwen2.rope.scaling.type"] == "linear" and md["qwen2.rope.scaling.factor"] == 2.0


# --------------------------------------------------------------------------------------------
# The real SmolLM2 Q4_1 file: re-export without training is byte-identical


def test_smollm2_q4_1_reexport_is_byte_identical(tmp_path, smollm2_path):
    from macft.models.load import load_for_inference

    loaded, _ = load_for_inference(str(smollm2_path))
    written = write_gguf(loaded.model, loaded.config, loaded.tokenizer, tmp_path / "again.gguf",
                         "q4_1", tokenizer_gguf=smollm2_path)
    assert written.rounded == set()
    src, out = read_header(smollm2_path), read_header(written.path)
    assert sorted(out.tensors) == sorted(src.tensors)
    with open(smollm2_path, "rb") as a, open(written.path, "rb") as b:
        for name, info in src.tensors.items():
            mine = out.tensors[name]
            assert (mine.shape, mine.ggml_type) == (info.shape, info.ggml_type), name
            a.seek(info.offset)
            b.seek(mine.offset)
            assert a.read(info.nbytes) == b.read(mine.nbytes), name
    for key, value in src.metadata.items():
        if key.startswith("tokenizer."):
            assert np.array_equal(out.metadata[key], value) if isinstance(value, np.ndarray) \
                else out.metadata[key] == value, key
    for key in ("llama.block_count", "llama.attention.head_count_kv", "llama.rope.freq_base",
                "llama.attention.layer_norm_rms_epsilon", "llama.context_length"):
        assert out.metadata[key] == src.metadata[key], key


# --------------------------------------------------------------------------------------------
# Quantizer numbers (dequantized with gguf-py, the format's reference reader)


def _rmse(x: np.ndarray, qtype) -> float:
    y = gguf.quants.dequantize(quants.quantize(x, qtype), qtype)
    return float(np.sqrt(((x - y) ** 2).mean()))


def test_k_quant_errors_are_in_the_expected_range():
    x = np.random.default_rng(0).standard_normal((256, 1024)).astype(np.float32)
    err = {t: _rmse(x, t) for t in (Q.Q4_0, Q.Q4_1, Q.Q4_K, Q.Q5_1, Q.Q6_K, Q.Q8_0)}
    # Same 4.5 bits per weight as Q4_0 (4.5) but searched scales and minima: clearly better.
    assert err[Q.Q4_K] < 0.86 * err[Q.Q4_0], err
    assert err[Q.Q4_K] < err[Q.Q4_1]
    assert 0.065 < err[Q.Q4_K] < 0.075, err           # unit Gaussian: measured 0.0713
    assert 0.015 < err[Q.Q6_K] < 0.019, err           # measured 0.0171, half of Q5_1's
    assert err[Q.Q6_K] < 0.5 * err[Q.Q5_1]
    assert err[Q.Q8_0] < 0.006


@pytest.mark.parametrize("qtype", [Q.Q4_K, Q.Q6_K])
def test_k_quants_handle_awkward_blocks(qtype):
    rng = np.random.default_rng(1)
    rows = np.stack([np.zeros(512), np.full(512, 0.25), np.abs(rng.standard_normal(512)),
                     -np.abs(rng.standard_normal(512)), rng.standard_normal(512) * 1e-3,
                     np.where(np.arange(512) == 7, 40.0, rng.standard_normal(512) * 0.01)])
    x = rows.astype(np.float32)
    y = gguf.quants.dequantize(quants.quantize(x, qtype), qtype)
    assert np.isfinite(y).all()
    assert np.abs(y[0]).max() == 0
    scale = np.abs(x).max(-1, keepdims=True)
    tol = 0.07 if qtype == Q.Q4_K else 0.02
    assert (np.abs(x - y) <= tol * scale + 1e-9).all(), np.abs(x - y).max(-1)
    # Below fp16's range the block scale underflows to zero: values vanish, nothing explodes.
    tiny = np.random.default_rng(2).standard_normal((1, 256)).astype(np.float32) * 1e-7
    z = gguf.quants.dequantize(quants.quantize(tiny, qtype), qtype)
    assert np.isfinite(z).all() and (np.abs(z) <= np.abs(tiny).max()).all()


def test_float_and_q8_0_are_near_exact():
    x = np.random.default_rng(2).standard_normal((64, 256)).astype(np.float32)
    f16 = gguf.quants.dequantize(quants.quantize(x, Q.F16), Q.F16)
    assert np.abs(f16 - x).max() <= np.abs(x).max() * 2 ** -11
    bf16 = gguf.quants.dequantize(quants.quantize(x, Q.BF16), Q.BF16)
    assert np.abs(bf16 - x).max() <= np.abs(x).max() * 2 ** -8
    q8 = gguf.quants.dequantize(quants.quantize(x, Q.Q8_0), Q.Q8_0)
    blocks = np.abs(x).reshape(-1, 32).max(-1, keepdims=True)
    # Half a step, plus the fp16 rounding of the step itself (127 * 2**-11 of a step).
    assert (np.abs(q8 - x).reshape(-1, 32) <= blocks / 127 * 0.57).all()


@pytest.mark.parametrize("group", [32, 64, 128])
def test_mlx_4bit_maps_exactly_onto_q4_1(group):
    w = mx.random.normal((48, 256), key=mx.random.key(group))
    packed, scales, biases = mx.quantize(w.astype(mx.float16), group_size=group, bits=4)
    blocks = quants.affine_exact(np.array(packed), np.array(scales.astype(mx.float32)),
                                 np.array(biases.astype(mx.float32)), 4, group, Q.Q4_1)
    assert blocks is not None and blocks.shape == (48, 256 // 32 * 20)
    want = np.array(mx.dequantize(packed, scales.astype(mx.float32), biases.astype(mx.float32),
                                  group, 4))
    assert np.array_equal(gguf.quants.dequantize(blocks, Q.Q4_1), want)
    # float32 scales that fp16 cannot hold are not "exact": the writer quantizes again.
    p32, s32, b32 = mx.quantize(w, group_size=group, bits=4)
    assert quants.affine_exact(np.array(p32), np.array(s32), np.array(b32), 4, group,
                               Q.Q4_1) is None


def test_quantized_base_is_requantized_when_not_exact(tmp_path):
    model, cfg = tiny("qwen2", seed=5)
    nn.quantize(model, group_size=64, bits=4)           # float32 scales: not fp16-exact
    written = write_gguf(model, cfg, make_tokenizer(), tmp_path / "q.gguf", "q4_1")
    assert Q.Q4_1 in written.rounded
    loaded, _, _ = load_gguf(written.path)
    assert np.abs(logits_of(loaded) - logits_of(model)).max() < 0.5


# --------------------------------------------------------------------------------------------
# LoRA adapter GGUF


def _with_lora(arch: str, seed: int = 6):
    from macft.models.adapters import apply_adapters

    model, cfg = tiny(arch, seed=seed)
    keys = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.down_proj"]
    apply_adapters(model, {"fine_tune_type": "lora", "num_layers": cfg["num_hidden_layers"],
                           "lora_parameters": {"rank": 4, "scale": 2.5, "dropout": 0.0,
                                               "keys": keys}})
    for _, m in model.named_modules():
        if hasattr(m, "lora_b"):
            m.lora_b = mx.random.normal(m.lora_b.shape) * 0.05
    mx.eval(model.parameters())
    return model, cfg


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_lora_adapter_gguf_reproduces_the_fused_weights(tmp_path, arch):
    from macft.models.fuse import fuse_in_place

    model, cfg = _with_lora(arch)
    path = write_lora_gguf(model, cfg, tmp_path / "lora.gguf")
    reader = gguf.GGUFReader(str(path))
    assert reader.fields["general.type"].contents() == "adapter"
    assert reader.fields["adapter.type"].contents() == "lora"
    alpha = float(reader.fields["adapter.lora.alpha"].contents())
    assert alpha == 10.0                                  # scale 2.5 * rank 4
    stored = {t.name: np.array(t.data) for t in reader.tensors}
    assert len(stored) == 2 * 4 * cfg["num_hidden_layers"]
    a, b = stored["blk.1.attn_q.weight.lora_a"], stored["blk.1.attn_q.weight.lora_b"]
    q_out = model.model.layers[1].self_attn.q_proj.linear.weight.shape[0]
    assert a.shape == (4, cfg["hidden_size"]) and b.shape == (q_out, 4)
    base = {f"blk.{i}.{n}": np.array(getattr(getattr(layer, part), proj).linear.weight)
            for i, layer in enumerate(model.model.layers)
            for n, part, proj in (("attn_q", "self_attn", "q_proj"),
                                  ("attn_k", "self_attn", "k_proj"),
                                  ("ffn_down", "mlp", "down_proj"))}
    fuse_in_place(model)
    heads = {"attn_q": cfg["num_attention_heads"], "attn_k": cfg["num_key_value_heads"]}
    for key, w in base.items():
        i, n = int(key.split(".")[1]), key.split(".")[2]
        part, proj = {"attn_q": ("self_attn", "q_proj"), "attn_k": ("self_attn", "k_proj"),
                      "ffn_down": ("mlp", "down_proj")}[n]
        fused = np.array(getattr(getattr(model.model.layers[i], part), proj).weight)
        delta = alpha / 4 * stored[f"{key}.weight.lora_b"] @ stored[f"{key}.weight.lora_a"]
        if arch == "llama" and n in heads:
            fused, w = permute_rows(fused, heads[n]), permute_rows(w, heads[n])
        assert np.allclose(w + delta, fused, atol=1e-5), key


def test_dora_cannot_be_a_llama_cpp_adapter(tmp_path):
    from macft.models.adapters import apply_adapters

    model, cfg = tiny("qwen2")
    apply_adapters(model, {"fine_tune_type": "dora", "num_layers": 2,
                           "lora_parameters": {"rank": 4, "scale": 1.0, "dropout": 0.0,
                                               "keys": ["self_attn.q_proj"]}})
    with pytest.raises(MacftError, match="DoRA"):
        write_lora_gguf(model, cfg, tmp_path / "x.gguf")


# --------------------------------------------------------------------------------------------
# Command line


def test_cli_export_writes_a_file_and_names_it(tmp_path, capsys):
    folder = write_tiny_model(tmp_path / "tiny", {"model_type": "qwen2"})
    out = tmp_path / "out" / "tiny.gguf"
    assert main(["export", str(folder), "--gguf", str(out), "--quant", "q8_0"]) == 0
    assert f"wrote {out} (q8_0" in capsys.readouterr().out
    header = read_header(out)
    assert header.architecture == "qwen2" and header.metadata["general.file_type"] == 7
    assert not list(out.parent.glob(".*tmp*"))            # no temp file left behind


def test_cli_export_errors_are_one_line(tmp_path, capsys):
    folder = write_tiny_model(tmp_path / "tiny")
    assert main(["export", str(folder), "--gguf", str(tmp_path / "x.gguf"),
                 "--quant", "q3_k"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown --quant 'q3_k'" in err
    assert main(["export", str(folder)]) == 2
    assert "--gguf OUT.gguf" in capsys.readouterr().err
    assert main(["export", str(folder), "--gguf-adapter", str(tmp_path / "a.gguf")]) == 2
    assert "needs a run folder" in capsys.readouterr().err


def test_cli_quant_help_lists_every_quant_type():
    from macft.cli import _parser

    sub = next(a for a in _parser()._actions if a.dest == "command")
    action = next(a for a in sub.choices["export"]._actions if a.dest == "quant")
    helptext = action.help % vars(action)        # how argparse expands it (made lazily)
    assert [q for q in QUANTS if q in helptext.replace(",", " ").split()] == list(QUANTS)


def test_chat_and_verify_reject_broken_files_in_one_line(tmp_path, capsys):
    model, cfg = tiny("qwen2")
    path = write_gguf(model, cfg, make_tokenizer(), tmp_path / "m.gguf", "f16").path
    data = path.read_bytes()
    (tmp_path / "cut.gguf").write_bytes(data[: len(data) // 2])
    (tmp_path / "noise.gguf").write_bytes(np.random.default_rng(0).bytes(2048))
    for name, words in (("cut.gguf", "truncated or corrupt GGUF"), ("noise.gguf", "bad magic")):
        assert main(["chat", str(tmp_path / name), "--prompt", "hi"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and words in err and name in err, err


# --------------------------------------------------------------------------------------------
# SentencePiece-style vocabularies (Llama 2, Mistral <= v0.3)


def make_spm_tokenizer():
    """A byte-fallback BPE with the ▁ word marker, as HF stores Llama 2/Mistral tokenizers."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from conftest import CHATML, CORPUS

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"),
                                           normalizers.Replace(" ", "▁")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                     decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    specials = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    tok.train_from_iterator(CORPUS * 20, trainer=trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", add_bos_token=True, chat_template=CHATML)


def test_sentencepiece_vocabulary_round_trips_through_the_importer(tmp_path):
    from macft.gguf.tokenizer import read_gguf_tokenizer

    spm = make_spm_tokenizer()
    model, cfg = tiny("mistral", vocab_size=400)
    path = write_gguf(model, cfg, spm, tmp_path / "spm.gguf", "f16").path
    md = read_header(path).metadata
    assert md["tokenizer.ggml.model"] == "llama" and md["tokenizer.ggml.add_bos_token"]
    types = md["tokenizer.ggml.token_type"]
    assert types[0] == 2 and list(types[1:3]) == [3, 3] and set(types[3:259]) == {6}
    again = read_gguf_tokenizer(md)
    for text in ["hello world!", "The quick brown fox jumps over the lazy dog 42.",
                 "what is the answer? é ü 😀", '{"name": "Ada"}']:
        assert again.encode(text) == spm.encode(text), text


# --------------------------------------------------------------------------------------------
# A run folder: adapters fused into the exported model, or exported alone


def make_run(tmp_path: Path, config: dict | None = None, method: str = "lora") -> Path:
    """A run folder as training leaves it: recipe.yaml plus adapters with non-zero B."""
    from macft import recipe as recipe_mod
    from macft.models import adapters
    from macft.models.load import load_base

    folder = write_tiny_model(tmp_path / "base", config)
    data = tmp_path / "train.jsonl"
    data.write_text('{"text": "hello world"}\n')
    run = tmp_path / "run"
    run.mkdir()
    (run / "recipe.yaml").write_text(
        f"model: {folder}\nmethod: {method}\ndata:\n  train: {data}\n"
        f"lora:\n  rank: 4\n  alpha: 8\n  targets: [q_proj, k_proj, down_proj]\n"
        f"output: {run}\n")
    recipe = recipe_mod.load(run / "recipe.yaml")
    loaded = load_base(str(folder))
    config_out = adapters.prepare(loaded.model, recipe, recipe.train.seed)
    for _, m in loaded.model.named_modules():
        if hasattr(m, "lora_b"):
            m.lora_b = mx.random.normal(m.lora_b.shape) * 0.05
    adapters.save_adapters(loaded.model, run, config_out)
    return run


def test_run_export_fuses_adapters_and_writes_the_adapter_alone(tmp_path, capsys):
    from macft.models.load import load_for_inference

    run = make_run(tmp_path)
    out, lora = tmp_path / "fused.gguf", tmp_path / "lora.gguf"
    assert main(["export", str(run), "--gguf", str(out), "--quant", "f32",
                 "--gguf-adapter", str(lora)]) == 0
    said = capsys.readouterr().out
    assert "6 adapter layers fused" in said and "wrote LoRA adapter" in said
    tuned, _ = load_for_inference(str(run))
    reloaded, _, _ = load_gguf(out)
    assert np.abs(logits_of(reloaded) - logits_of(tuned.model)).max() < 1e-4
    md = read_header(lora).metadata
    assert md["adapter.lora.alpha"] == 8.0 and md["general.type"] == "adapter"
    assert len(read_header(lora).tensors) == 2 * 3 * 2


def test_export_targets_and_quants_come_from_their_tables(tmp_path, capsys):
    """`export --hf` is the fuse flow (same folder as `macft fuse`); --help lists each target
    and each quant of the tables."""
    from macft.export.quant_plan import QUANTS
    from macft.export.targets import TARGETS

    run = make_run(tmp_path)
    assert main(["export", str(run), "--hf", str(tmp_path / "hf")]) == 0
    assert main(["fuse", str(run), "--out", str(tmp_path / "fused")]) == 0
    said = capsys.readouterr().out.splitlines()
    assert said == [f"fused 6 adapter layers into {tmp_path / 'hf'}",
                    f"fused 6 adapter layers into {tmp_path / 'fused'}"]
    for name in ("model.safetensors", "config.json"):
        assert (tmp_path / "hf" / name).read_bytes() == (tmp_path / "fused" / name).read_bytes()
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert all(t.flag in shown for t in TARGETS.values())
    assert f"{', '.join(QUANTS)} (default f16)" in shown


def test_run_export_of_a_dora_adapter_alone_is_refused(tmp_path, capsys):
    run = make_run(tmp_path, method="dora")
    assert main(["export", str(run), "--gguf-adapter", str(tmp_path / "a.gguf")]) == 2
    assert "DoRA adapters have no llama.cpp LoRA equivalent" in capsys.readouterr().err


def test_chat_repl_keeps_history_and_resets(monkeypatch, tmp_path):
    from macft.export import chat as chat_mod

    seen = []

    class FakeLlama:                     # stands in for llama_cpp.Llama: records each request
        def create_chat_completion(self, messages, max_tokens, temperature, stream):
            seen.append([m["content"] for m in messages])
            yield {"choices": [{"delta": {"role": "assistant"}}]}
            yield {"choices": [{"delta": {"content": f"reply{len(seen)}"}}]}

    monkeypatch.setattr(chat_mod.llamacpp, "open_gguf", lambda *a, **k: FakeLlama())
    lines, shown = iter(["hi", "more", "/reset", "again", "/exit"]), []
    assert chat_mod.chat(tmp_path / "m.gguf", system="be brief", read=lambda _: next(lines),
                         emit=shown.append) == 0
    assert seen == [["be brief", "hi"], ["be brief", "hi", "reply1", "more"],
                    ["be brief", "again"]]
    assert "".join(shown[1:]) == "reply1\nreply2\nreply3\n"
    shown.clear()
    assert chat_mod.chat(tmp_path / "m.gguf", prompt="one shot", emit=shown.append) == 0
    assert seen[-1] == ["one shot"] and "".join(shown) == "reply4\n"
