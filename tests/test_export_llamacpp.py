"""Exported GGUFs checked by llama.cpp itself (through llama-cpp-python).

Tiny random models of each architecture are exported and compared with MLX on a token
sequence sampled from the MLX model itself, so perplexities are moderate (2-4) rather than the
astronomic ones random weights give on English. Embeddings are scaled up and an untied output
matrix starts as a copy of them, so predictions are peaked: without that, near-ties between
random logits make top-1 agreement a coin toss (untied random heads gave 0.96-0.98 even for
q8_0). Float types must agree on the next token >= 99% with perplexity within 0.5%; the
4/5/6-bit types must land within 1% of the perplexity llama.cpp gets from its own quantizer
(``llama_model_quantize``) applied to the f16 export of the same weights.
"""

from __future__ import annotations

import ctypes

import pytest

import macft  # noqa: F401  (loads OpenBLAS before mlx)
import mlx.core as mx

llama_cpp = pytest.importorskip(
    "llama_cpp", reason="llama-cpp-python is not importable (pip install 'macft[gguf]'); "
    "the llama.cpp checks need it", exc_type=ImportError)

from conftest import make_tokenizer, write_tiny_model  # noqa: E402
from test_export_gguf import ALL_ARCHS as ARCHS, tiny  # noqa: E402
from macft.cli import main  # noqa: E402
from macft.errors import MacftError  # noqa: E402
from macft.export import llamacpp, verify  # noqa: E402
from macft.export.adapter import write_lora_gguf  # noqa: E402
from macft.export.quant_plan import QUANTS  # noqa: E402
from macft.export.writer import write_gguf  # noqa: E402

FLOATS = ["f32", "f16", "bf16", "q8_0"]
BLOCKS = ["q4_0", "q4_1", "q5_0", "q5_1", "q4_k", "q6_k", "q4_k_m"]
STRICT = verify.Thresholds(top1=0.99, kl=0.01, ppl=0.005)
# Chosen so the self-sampled perplexity lands around 2-4 (larger: the models repeat one token).
EMBED_SCALE = {"llama": 2.0, "mistral": 1.5, "qwen2": 1.5, "qwen3": 1.5, "qwen3_moe": 1.5,
               "gemma3": 1.4}


def peaked(arch: str, seed: int = 0):
    model, cfg = tiny(arch, seed=seed)
    emb = model.model.embed_tokens
    emb.weight = emb.weight * EMBED_SCALE[arch]
    if "lm_head" in model:
        model.lm_head.weight = mx.array(emb.weight)
    mx.eval(model.parameters())
    return model, cfg


def sample_ids(model, n: int = 400, seed: int = 0) -> list[int]:
    from mlx_lm.models.cache import make_prompt_cache

    mx.random.seed(seed)
    cache, ids = make_prompt_cache(model), [5]
    y = mx.array([ids])
    for _ in range(n - 1):
        y = mx.random.categorical(model(y, cache=cache)[:, -1])[None]
        ids.append(int(y.item()))
    return ids


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


@pytest.fixture(scope="module")
def models():
    out = {}
    for arch in ARCHS:
        model, cfg = peaked(arch)
        out[arch] = (model, cfg, sample_ids(model))
    return out


def perplexity(llm, ids) -> float:
    return verify.perplexity(verify.llama_logits(llm, ids), ids)


def types_of(path) -> dict[str, str]:
    import gguf

    return {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(path)).tensors}


def llama_cpp_quantize(src, dst, quant: str) -> None:
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = int(QUANTS[quant].file_type)
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(),
                                        ctypes.byref(params))
    assert rc == 0, f"llama_model_quantize failed for {quant}"


@pytest.mark.parametrize("quant", FLOATS)
@pytest.mark.parametrize("arch", list(ARCHS))
def test_float_exports_agree_with_mlx(tmp_path, models, tok, arch, quant):
    model, cfg, ids = models[arch]
    path = write_gguf(model, cfg, tok, tmp_path / f"{quant}.gguf", quant).path
    result = verify.verify_gguf(model, tok, path, STRICT, ids=ids)
    assert 1.5 < result.ppl_mlx < 5 and result.n_tokens == len(ids) - 1
    assert result.top1 >= 0.99 and result.ppl_diff <= 0.005, result.lines()


@pytest.mark.parametrize("arch", list(ARCHS))
def test_held_out_text_tokenizes_the_same_in_llama_cpp(tmp_path, models, tok, arch):
    model, cfg, _ = models[arch]
    path = write_gguf(model, cfg, tok, tmp_path / "m.gguf", "f16").path
    result = verify.verify_gguf(model, tok, path, verify.FLOAT)
    assert result.tokens_match is True and result.n_tokens == 511


@pytest.mark.parametrize("quant", BLOCKS)
@pytest.mark.parametrize("arch", list(ARCHS))
def test_block_exports_match_llama_cpp_own_quantizer(tmp_path, models, tok, arch, quant):
    model, cfg, ids = models[arch]
    f16 = write_gguf(model, cfg, tok, tmp_path / "f16.gguf", "f16").path
    llama_cpp_quantize(f16, tmp_path / "theirs.gguf", quant)
    written = write_gguf(model, cfg, tok, tmp_path / "ours.gguf", quant)
    ctx = len(ids) + 16
    ours = perplexity(llamacpp.open_gguf(written.path, n_ctx=ctx, logits_all=True), ids)
    theirs = perplexity(llamacpp.open_gguf(tmp_path / "theirs.gguf", n_ctx=ctx,
                                           logits_all=True), ids)
    assert abs(ours - theirs) / theirs <= 0.01, (ours, theirs)
    # Same type for every tensor as llama-quantize picks (our q4_k is plain Q4_K, which
    # llama.cpp has no file type for; its nearest, Q4_K_S, gives a few layers Q5_K).
    if quant != "q4_k":
        assert types_of(written.path) == types_of(tmp_path / "theirs.gguf")
    # And the ordinary --verify tolerance against the MLX float model holds.
    verify.verify_gguf(model, tok, written.path,
                       verify.thresholds_for(written.types, written.rounded), ids=ids)


def test_lora_adapter_applies_in_llama_cpp(tmp_path, tok):
    from test_export_gguf import _with_lora

    model, cfg = _with_lora("llama")
    base_model, _ = tiny("llama", seed=6)           # the same base weights, no adapter
    base = write_gguf(base_model, cfg, tok, tmp_path / "base.gguf", "f32").path
    adapter = write_lora_gguf(model, cfg, tmp_path / "lora.gguf")
    ids = sample_ids(model)
    with_lora = verify.verify_gguf(model, tok, base, STRICT, lora=adapter, ids=ids)
    assert with_lora.top1 >= 0.99 and with_lora.kl < 1e-3, with_lora.lines()
    # Without the adapter llama.cpp's base must differ from the adapted MLX model.
    with pytest.raises(MacftError, match="disagrees"):
        verify.verify_gguf(model, tok, base, STRICT, ids=ids)


def test_verify_fails_loudly_on_a_mismatch(tmp_path, models, tok):
    other, cfg = peaked("qwen2", seed=9)
    path = write_gguf(other, cfg, tok, tmp_path / "other.gguf", "f16").path
    model, _, ids = models["qwen2"]
    with pytest.raises(MacftError) as exc:
        verify.verify_gguf(model, tok, path, verify.FLOAT, ids=ids)
    msg = str(exc.value)
    assert "llama.cpp disagrees with MLX" in msg and "top-1 agreement" in msg and "\n" not in msg


def test_verify_rejects_a_truncated_file_in_one_line(tmp_path, models, tok):
    model, cfg, _ = models["qwen2"]
    path = write_gguf(model, cfg, tok, tmp_path / "m.gguf", "f16").path
    data = path.read_bytes()
    (tmp_path / "cut.gguf").write_bytes(data[: len(data) - 4096])
    with pytest.raises(MacftError, match="cut.gguf: truncated or corrupt GGUF"):
        verify.verify_gguf(model, tok, tmp_path / "cut.gguf", verify.FLOAT)


def test_cli_export_verify_and_chat(tmp_path, capsys, tok):
    from mlx_lm import generate

    from macft.models.load import load_for_inference

    folder = write_tiny_model(tmp_path / "tiny", {"model_type": "qwen2"})
    out = tmp_path / "tiny.gguf"
    assert main(["export", str(folder), "--gguf", str(out), "--quant", "q8_0", "--verify"]) == 0
    text = capsys.readouterr().out
    assert "verified with llama.cpp" in text and "tokenization by llama.cpp: identical" in text
    # Chat renders the file's template in llama.cpp: greedy, it answers what MLX answers.
    # The file exists: a second export refuses without --force, and overwrites with it.
    assert main(["export", str(folder), "--gguf", str(out), "--quant", "f32"]) == 2
    assert main(["export", str(folder), "--gguf", str(out), "--quant", "f32", "--force"]) == 0
    capsys.readouterr()
    assert main(["chat", str(out), "--prompt", "what is the answer?", "--max-tokens", "8"]) == 0
    said = capsys.readouterr().out
    loaded, _ = load_for_inference(str(folder))
    prompt = loaded.tokenizer.apply_chat_template(
        [{"role": "user", "content": "what is the answer?"}], add_generation_prompt=True)
    want = generate(loaded.model, loaded.tokenizer, prompt=prompt, max_tokens=8, verbose=False)
    assert said == want.split("<|im_end|>")[0] + "\n", (said, want)


# --------------------------------------------------------------------------------------------
# The real SmolLM2 (slow: 135M parameters on 2 cores)


@pytest.mark.slow
@pytest.mark.parametrize("quant", ["f16", "q4_1", "q4_k_m"])
def test_smollm2_exports_verify(tmp_path, smollm2_path, quant):
    from macft.models.load import load_for_inference

    loaded, _ = load_for_inference(str(smollm2_path))
    written = write_gguf(loaded.model, loaded.config, loaded.tokenizer, tmp_path / "s.gguf",
                         quant, tokenizer_gguf=smollm2_path)
    limit = verify.thresholds_for(written.types, written.rounded)
    result = verify.verify_gguf(loaded.model, loaded.tokenizer, written.path, limit,
                                max_tokens=256)
    assert result.tokens_match, result.lines()
    if quant == "f16":
        assert result.top1 >= 0.97 and result.ppl_diff <= 0.01 and result.kl < 1e-3, \
            result.lines()
    if quant == "q4_1":
        # The very blocks of the input file; what remains is llama.cpp rounding activations
        # to 8 bits in its Q4_1 dot products (measured: top-1 0.98, KL 3e-3, 1.1% perplexity).
        assert written.rounded == set()
        assert result.top1 >= 0.95 and result.kl < 0.01, result.lines()


@pytest.mark.slow
def test_smollm2_chat_answers_paris(smollm2_path, capsys):
    # (For "What is the capital of France?" MLX's top two first tokens are 0.08 apart and
    # llama.cpp's 8-bit activations flip them: both answers are fine, only one says Paris.)
    assert main(["chat", str(smollm2_path), "--prompt", "Which city is the capital of France?",
                 "--max-tokens", "16"]) == 0
    assert "Paris" in capsys.readouterr().out


def test_sentencepiece_vocabulary_tokenizes_like_hf_in_llama_cpp(tmp_path):
    from test_export_gguf import make_spm_tokenizer

    spm = make_spm_tokenizer()
    model, cfg = tiny("mistral", vocab_size=400)
    path = write_gguf(model, cfg, spm, tmp_path / "spm.gguf", "f16").path
    llm = llamacpp.open_gguf(path, n_ctx=256)
    for text in ["hello world!", "The quick brown fox jumps over the lazy dog 42.",
                 "what is the answer? é ü 😀", verify.HELD_OUT[:300]]:
        assert llm.tokenize(text.encode(), add_bos=True) == spm.encode(text), text
