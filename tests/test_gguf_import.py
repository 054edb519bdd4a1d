"""GGUF import: tensors in llama.cpp's layout, quantized layers, the tokenizer, corrupt files.

Tiny random llamas are written with gguf-py's GGUFWriter exactly as llama.cpp's converter lays
them out (Q/K rows permuted, u32 counts, f32 epsilon and rope base), read back with ``load_gguf``
and compared with the model they came from. The real SmolLM2 checks pin token ids and logits.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import macft  # noqa: F401  (loads OpenBLAS before mlx)
import gguf
import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten
from mlx_lm.utils import _get_classes

from conftest import CHATML, TINY_LLAMA, make_tokenizer
from macft.errors import MacftError
from macft.gguf.reader import load_gguf, read_header, read_tensors
from macft.gguf.tokenizer import read_gguf_tokenizer

Q = gguf.GGMLQuantizationType
TOP = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}
BLOCK = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
         "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
         "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm",
         "post_attention_layernorm": "ffn_norm", "self_attn.q_norm": "attn_q_norm",
         "self_attn.k_norm": "attn_k_norm"}
IDS = [[5, 17, 200, 3, 99, 42, 7, 311, 64, 1]]


def gguf_name(hf: str) -> str:
    module, suffix = hf.rsplit(".", 1)
    if module in TOP:
        return f"{TOP[module]}.{suffix}"
    _, _, layer, rest = module.split(".", 3)
    return f"blk.{layer}.{BLOCK[rest]}.{suffix}"


def llama_cpp_permute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """What llama.cpp's convert_hf_to_gguf.py does to Q and K rows of the llama architecture."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2) \
        .reshape(w.shape)


def tiny_model(config: dict | None = None, seed: int = 0):
    cfg = dict(TINY_LLAMA, **(config or {}))
    mx.random.seed(seed)
    model_cls, args_cls = _get_classes(cfg)
    return model_cls(args_cls.from_dict(cfg)), cfg


def random_q4_k(rows: int, cols: int, seed: int = 0) -> np.ndarray:
    """Q4_K blocks with random codes and small valid scales (gguf-py cannot quantize K-quants)."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, size=(rows * cols // 256, 144), dtype=np.uint8)
    blocks[:, 0:2] = np.array([4e-4], np.float16).view(np.uint8)       # d
    blocks[:, 2:4] = np.array([3e-3], np.float16).view(np.uint8)       # dmin
    return blocks.reshape(rows, -1)


def add_tokenizer(writer: gguf.GGUFWriter, tok, pre: str = "gpt-2") -> None:
    spec = json.loads(tok.backend_tokenizer.to_str())
    tokens = [None] * len(tok.get_vocab())
    for text, i in tok.get_vocab().items():
        tokens[i] = text
    special = {a["id"] for a in spec["added_tokens"] if a["special"]}
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types([3 if i in special else 1 for i in range(len(tokens))])
    writer.add_token_merges([" ".join(m) for m in spec["model"]["merges"]])
    writer.add_eos_token_id(tok.eos_token_id)
    writer.add_pad_token_id(tok.pad_token_id)
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHATML)


def write_gguf(path, model, cfg, qtype=lambda name, arr: Q.F32, permute=True, extra=None):
    """Write ``model`` in llama.cpp's layout; return the weights llama.cpp would compute with.

    ``qtype(gguf_name, array)`` picks each tensor's type; ``extra`` adds F32 tensors. Returned
    weights use HF names, HF row order and the dequantized values, so a float model loaded with
    them is the reference. Only the llama architecture gets its Q/K rows permuted.
    """
    heads, kv_heads = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    head_dim = cfg.get("head_dim", cfg["hidden_size"] // heads)
    permute = permute and cfg["model_type"] == "llama"
    w = gguf.GGUFWriter(str(path), cfg["model_type"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_rope_freq_base(cfg["rope_theta"])
    w.add_rope_dimension_count(head_dim)
    if "head_dim" in cfg:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    w.add_vocab_size(cfg["vocab_size"])
    add_tokenizer(w, make_tokenizer(cfg["vocab_size"]))
    for name, arr in (extra or {}).items():
        w.add_tensor(name, arr.astype(np.float32))
    reference = {}
    for name, value in tree_flatten(model.parameters()):
        arr = np.array(value, dtype=np.float32)
        g = gguf_name(name)
        stored = arr
        if permute and ".attn_q." in g:
            stored = llama_cpp_permute(arr, heads)
        elif permute and ".attn_k." in g:
            stored = llama_cpp_permute(arr, kv_heads)
        kind = qtype(g, arr)
        if kind == Q.F32:
            w.add_tensor(g, stored)
            reference[name] = arr
        elif kind == Q.F16:
            w.add_tensor(g, stored.astype(np.float16))
            reference[name] = arr.astype(np.float16).astype(np.float32)
        else:
            data = random_q4_k(*arr.shape) if kind == Q.Q4_K else gguf.quants.quantize(stored, kind)
            w.add_tensor(g, data, raw_dtype=kind)
            # Quantization blocks lie along rows, so permuting rows commutes with it.
            deq = gguf.quants.dequantize(data, kind) if kind == Q.Q4_K else \
                gguf.quants.dequantize(gguf.quants.quantize(arr, kind), kind)
            reference[name] = deq.astype(np.float32)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return reference


def logits_of(model, ids=IDS) -> np.ndarray:
    out = model(mx.array(ids))
    return np.array(out.astype(mx.float32))


def reference_logits(cfg: dict, weights: dict, ids=IDS) -> np.ndarray:
    model, _ = tiny_model(cfg)
    model.load_weights([(k, mx.array(v)) for k, v in weights.items()], strict=True)
    return logits_of(model, ids)


def smollm_style(name: str, arr: np.ndarray):
    """SmolLM2's Q4_1 file: embeddings (and output) Q8_0, other matrices Q4_1, norms F32."""
    if arr.ndim == 1:
        return Q.F32
    return Q.Q8_0 if name.split(".")[0] in ("token_embd", "output") else Q.Q4_1


# --------------------------------------------------------------------------------------------
# Tiny models


def test_f32_gguf_gives_the_original_logits(tmp_path):
    model, cfg = tiny_model()
    write_gguf(tmp_path / "tiny.gguf", model, cfg)
    loaded, _, config = load_gguf(tmp_path / "tiny.gguf")
    assert np.abs(logits_of(loaded) - logits_of(model)).max() < 1e-4
    q_orig = model.model.layers[1].self_attn.q_proj.weight
    assert mx.array_equal(loaded.model.layers[1].self_attn.q_proj.weight, q_orig)
    assert config["tie_word_embeddings"] is True and "lm_head" not in loaded
    assert "quantization" not in config
    assert {k: config[k] for k in TINY_LLAMA} == TINY_LLAMA


def test_without_unpermuting_the_logits_differ(tmp_path):
    # A file written in HF row order (no llama.cpp permutation) is read as if permuted.
    model, cfg = tiny_model()
    write_gguf(tmp_path / "hf-order.gguf", model, cfg, permute=False)
    loaded, _, _ = load_gguf(tmp_path / "hf-order.gguf")
    diff = np.abs(logits_of(loaded) - logits_of(model)).max()
    assert diff > 1e-2, diff
    assert not mx.array_equal(loaded.model.layers[0].self_attn.k_proj.weight,
                              model.model.layers[0].self_attn.k_proj.weight)


def test_quantized_gguf_keeps_layers_quantized(tmp_path):
    model, cfg = tiny_model({"tie_word_embeddings": False}, seed=1)
    ref = write_gguf(tmp_path / "q.gguf", model, cfg, qtype=smollm_style)
    loaded, _, config = load_gguf(tmp_path / "q.gguf")
    emb, q_proj = loaded.model.embed_tokens, loaded.model.layers[0].self_attn.q_proj
    assert isinstance(emb, nn.QuantizedEmbedding) and (emb.bits, emb.group_size) == (8, 32)
    assert isinstance(q_proj, nn.QuantizedLinear) and (q_proj.bits, q_proj.group_size) == (4, 32)
    assert isinstance(loaded.lm_head, nn.QuantizedLinear) and loaded.lm_head.bits == 8
    assert config["tie_word_embeddings"] is False
    assert config["quantization"] == {
        "group_size": 32, "bits": 4, "mode": "affine",
        "lm_head": {"group_size": 32, "bits": 8},
        "model.embed_tokens": {"group_size": 32, "bits": 8}}
    got, want = logits_of(loaded), reference_logits(cfg, ref)
    assert np.abs(got - want).max() < 1e-4
    assert np.abs(got - logits_of(model)).max() > 1e-3      # Q4_1 really lost something


def test_saved_quantized_model_reloads_with_mlx_lm(tmp_path):
    from mlx_lm.utils import load_model

    model, cfg = tiny_model(seed=2)
    write_gguf(tmp_path / "q.gguf", model, cfg, qtype=smollm_style)
    loaded, _, config = load_gguf(tmp_path / "q.gguf")
    folder = tmp_path / "saved"
    folder.mkdir()
    mx.save_safetensors(str(folder / "model.safetensors"), dict(tree_flatten(loaded.parameters())))
    (folder / "config.json").write_text(json.dumps(config))
    again, _ = load_model(folder)
    assert again.model.embed_tokens.bits == 8 and again.model.layers[1].mlp.up_proj.bits == 4
    assert np.array_equal(logits_of(again), logits_of(loaded))


def test_other_types_are_dequantized_with_gguf_py(tmp_path):
    # Q4_K (wrongly decoded by MLX 0.32) and Q5_0 (refused by MLX) -> float; Q4_0 stays quantized.
    types = {"ffn_down": Q.Q4_K, "ffn_gate": Q.Q5_0, "ffn_up": Q.F16, "attn_q": Q.Q4_0,
             "attn_k": Q.Q4_1, "token_embd": Q.Q8_0}
    model, cfg = tiny_model({"intermediate_size": 256}, seed=3)
    ref = write_gguf(tmp_path / "k.gguf", model, cfg,
                     qtype=lambda name, arr: types.get(name.split(".")[-2], Q.F32))
    loaded, _, config = load_gguf(tmp_path / "k.gguf")
    layer = loaded.model.layers[0]
    assert type(layer.mlp.down_proj) is nn.Linear and layer.mlp.down_proj.weight.dtype == mx.float32
    assert type(layer.mlp.gate_proj) is nn.Linear
    q_proj = layer.self_attn.q_proj
    assert isinstance(q_proj, nn.QuantizedLinear) and q_proj.bits == 4
    assert config["quantization"]["model.embed_tokens"] == {"group_size": 32, "bits": 8}
    assert np.abs(logits_of(loaded) - reference_logits(cfg, ref)).max() < 1e-4


def test_numpy_reader_matches_mlx_reader(tmp_path):
    types = {"attn_q": Q.Q4_0, "attn_k": Q.Q4_1, "token_embd": Q.Q8_0, "ffn_up": Q.F16}
    model, cfg = tiny_model(seed=4)
    write_gguf(tmp_path / "m.gguf", model, cfg,
               qtype=lambda name, arr: types.get(name.split(".")[-2], Q.F32))
    header = read_header(tmp_path / "m.gguf")
    a, b = read_tensors(header, use_mlx=True), read_tensors(header, use_mlx=False)
    assert sorted(a) == sorted(b)
    for key in a:
        assert a[key].dtype == b[key].dtype and mx.array_equal(a[key], b[key]), key


QWEN2 = dict(TINY_LLAMA, model_type="qwen2", rope_theta=1000000.0)
QWEN3 = dict(TINY_LLAMA, model_type="qwen3", head_dim=32, tie_word_embeddings=False)


@pytest.mark.parametrize("config", [QWEN2, QWEN3], ids=["qwen2", "qwen3"])
def test_qwen_architectures_are_not_permuted(tmp_path, config):
    model, cfg = tiny_model(config, seed=5)
    write_gguf(tmp_path / "qwen.gguf", model, cfg)
    loaded, _, config_out = load_gguf(tmp_path / "qwen.gguf")
    assert {k: config_out[k] for k in cfg} == cfg
    assert ("head_dim" in config_out) == (cfg["model_type"] == "qwen3")
    assert np.abs(logits_of(loaded) - logits_of(model)).max() < 1e-4


def llama3_rope_factors(head_dim, base, factor, orig=8192, low=1.0, high=4.0):
    """rope_freqs.weight as llama.cpp's converter computes it for Llama 3.1+."""
    out = []
    for freq in 1.0 / base ** (np.arange(0, head_dim, 2) / head_dim):
        wavelen = 2 * np.pi / freq
        if wavelen < orig / high:
            out.append(1.0)
        elif wavelen > orig / low:
            out.append(factor)
        else:
            smooth = (orig / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, np.float32)


def test_llama3_rope_scaling_is_recovered_from_rope_freqs(tmp_path):
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    model, cfg = tiny_model({"rope_theta": 500000.0, "rope_scaling": scaling}, seed=6)
    factors = llama3_rope_factors(16, 500000.0, 8.0)
    assert factors.min() == 1.0 and factors.max() == 8.0 and len(set(factors.tolist())) > 2
    write_gguf(tmp_path / "l3.gguf", model, cfg, extra={"rope_freqs.weight": factors})
    loaded, _, config = load_gguf(tmp_path / "l3.gguf")
    assert config["rope_scaling"] == scaling
    assert np.abs(logits_of(loaded) - logits_of(model)).max() < 1e-4


# --------------------------------------------------------------------------------------------
# Tokenizer


def test_tokenizer_from_tiny_gguf_matches_its_source(tmp_path, tiny_tokenizer):
    from transformers import AutoTokenizer

    model, cfg = tiny_model()
    write_gguf(tmp_path / "t.gguf", model, cfg)
    _, tok, _ = load_gguf(tmp_path / "t.gguf")
    texts = ["hello world, this is a test.", "The answer is 42 and 0123456789!",
             '{"name": "Ada"}  two  spaces', "<|im_start|>user\nhi<|im_end|>\n"]
    for text in texts:
        assert tok.encode(text) == tiny_tokenizer.encode(text), text
        assert tok.decode(tok.encode(text)) == text
    specials = ("<|im_start|>", "<|im_end|>", "<|endoftext|>")
    assert [tok.encode(s) for s in specials] == [[1], [2], [0]]
    assert (tok.eos_token_id, tok.pad_token_id, tok.bos_token_id) == (2, 0, None)
    chat = [{"role": "user", "content": "what is the answer?"}]
    text = tiny_tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    assert tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=False) == text
    assert tok.apply_chat_template(chat, add_generation_prompt=True) == tiny_tokenizer.encode(text)
    tok.save_pretrained(str(tmp_path / "tok"))
    again = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    assert [again.encode(t) for t in texts] == [tiny_tokenizer.encode(t) for t in texts]


@pytest.mark.parametrize("pre, pieces", [
    ("smollm", ["I", "'m", "Ġ", "2", "0", "2", "4", "Ġok"]),
    ("llama-bpe", ["I", "'m", "Ġ", "202", "4", "Ġok"]),
    ("qwen2", ["I", "'m", "Ġ", "2", "0", "2", "4", "Ġok"]),
    ("gpt-2", ["I", "'m", "Ġ2024", "Ġok"]),
])
def test_pre_tokenizer_follows_tokenizer_ggml_pre(pre, pieces, tiny_tokenizer):
    spec = json.loads(tiny_tokenizer.backend_tokenizer.to_str())
    metadata = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": pre,
                "tokenizer.ggml.tokens": sorted(tiny_tokenizer.get_vocab(),
                                                key=tiny_tokenizer.get_vocab().get),
                "tokenizer.ggml.merges": [" ".join(m) for m in spec["model"]["merges"]]}
    tok = read_gguf_tokenizer(metadata)
    split = tok._tokenizer.backend_tokenizer.pre_tokenizer.pre_tokenize_str("I'm 2024 ok")
    assert [piece for piece, _ in split] == pieces


def test_sentencepiece_vocabulary_with_byte_fallback():
    pieces = [("▁", -1.0), ("h", -2.0), ("e", -2.0), ("l", -2.0), ("o", -2.0), ("▁h", -3.0),
              ("ll", -4.0), ("▁he", -5.0), ("llo", -6.0), ("▁hello", -7.0)]
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    tokens = ["<unk>", "<s>", "</s>"] + byte_tokens + [p for p, _ in pieces]
    metadata = {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": np.array([0.0] * 259 + [s for _, s in pieces], np.float32),
        "tokenizer.ggml.token_type": np.array([2, 3, 3] + [6] * 256 + [1] * len(pieces), np.int32),
        "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.unknown_token_id": 0,
    }
    tok = read_gguf_tokenizer(metadata)
    hello, bang = tokens.index("▁hello"), tokens.index("<0x21>")
    assert tok.encode("hello!") == [1, hello, bang]          # add_bos defaults to on for SPM
    assert tok.decode([hello, bang]) == "hello!"
    assert tok.decode(tok.encode("hello hello")[1:]) == "hello hello"


# --------------------------------------------------------------------------------------------
# Corrupt input


def _one_line_naming(exc: pytest.ExceptionInfo, name: str) -> str:
    msg = str(exc.value)
    assert name in msg and "\n" not in msg, msg
    return msg


def test_truncated_and_random_files_raise_one_line_errors(tmp_path):
    model, cfg = tiny_model()
    write_gguf(tmp_path / "good.gguf", model, cfg)
    data = (tmp_path / "good.gguf").read_bytes()
    (tmp_path / "cut-header.gguf").write_bytes(data[:3000])
    (tmp_path / "cut-data.gguf").write_bytes(data[: len(data) - 1000])
    (tmp_path / "noise.gguf").write_bytes(np.random.default_rng(0).bytes(4096))
    for name in ("cut-header.gguf", "cut-data.gguf"):
        with pytest.raises(MacftError) as exc:
            load_gguf(tmp_path / name)
        assert "truncated or corrupt GGUF" in _one_line_naming(exc, name)
    with pytest.raises(MacftError) as exc:
        load_gguf(tmp_path / "noise.gguf")
    assert "bad magic" in _one_line_naming(exc, "noise.gguf")
    with pytest.raises(MacftError) as exc:
        load_gguf(tmp_path / "missing.gguf")
    assert "not found" in _one_line_naming(exc, "missing.gguf")


def test_unsupported_architecture_is_named(tmp_path):
    w = gguf.GGUFWriter(str(tmp_path / "phi.gguf"), "phi2")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 32), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(MacftError) as exc:
        load_gguf(tmp_path / "phi.gguf")
    assert "architecture 'phi2' is not supported" in _one_line_naming(exc, "phi.gguf")


# --------------------------------------------------------------------------------------------
# The real SmolLM2-135M-Instruct Q4_1 file


@pytest.fixture(scope="module")
def smollm2(smollm2_path):
    return load_gguf(smollm2_path)


def test_smollm2_config(smollm2):
    _, _, config = smollm2
    assert config == {
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 576,
        "num_hidden_layers": 30, "intermediate_size": 1536, "num_attention_heads": 9,
        "num_key_value_heads": 3, "rms_norm_eps": 1e-05, "vocab_size": 49152,
        "rope_theta": 100000.0, "max_position_embeddings": 8192, "tie_word_embeddings": True,
        "attention_bias": False, "mlp_bias": False, "bos_token_id": 1, "eos_token_id": 2,
        "quantization": {"group_size": 32, "bits": 4, "mode": "affine",
                         "model.embed_tokens": {"group_size": 32, "bits": 8}},
    }


def test_smollm2_token_ids(smollm2):
    _, tok, _ = smollm2
    # Same ids as llama.cpp: digits one by one, <|im_start|> = 1, <|im_end|> = 2, no BOS.
    assert tok.encode("Hello, world!") == [19556, 28, 905, 17]
    assert tok.encode("The year 2024 has 366 days.") == \
        [504, 713, 216, 34, 32, 34, 36, 553, 216, 35, 38, 38, 2009, 30]
    assert tok.encode("<|im_start|>user\nHi<|im_end|>\n") == [1, 4093, 198, 26843, 2, 198]


CHAT = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.mark.slow
def test_smollm2_logits_are_pinned(smollm2):
    model, tok, _ = smollm2
    ids = tok.apply_chat_template(CHAT, add_generation_prompt=True)
    last = logits_of(model, [ids])[0, -1]
    top = np.argsort(-last)[:5]
    assert top.tolist() == TOP5_IDS
    assert np.allclose(last[top], TOP5_LOGITS, atol=1e-2), last[top]


@pytest.mark.slow
def test_smollm2_answers_paris(smollm2):
    from mlx_lm import generate

    model, tok, _ = smollm2
    ids = tok.apply_chat_template(CHAT, add_generation_prompt=True)
    text = generate(model, tok, prompt=ids, max_tokens=12, verbose=False)
    assert "Paris" in text, text


@pytest.mark.slow
def test_smollm2_numpy_reader_matches_mlx_reader(smollm2_path):
    header = read_header(smollm2_path)
    a, b = read_tensors(header, use_mlx=True), read_tensors(header, use_mlx=False)
    assert sorted(a) == sorted(b)
    assert all(mx.array_equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)


# Computed once with this importer (float32 on CPU); top-1 'The', then 'L', 'La', 'Al', 'Le'.
TOP5_IDS = [504, 60, 15319, 2219, 7026]
TOP5_LOGITS = [25.3254, 25.2433, 24.9424, 24.4017, 24.3146]
