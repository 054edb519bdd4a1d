"""Rebuild a Hugging Face fast tokenizer from a GGUF file's ``tokenizer.*`` metadata.

No torch and no network: the vocabulary, merges and pre-tokenizer come from the metadata and are
assembled with the ``tokenizers`` library, then wrapped for transformers and mlx-lm.
``tokenizer.ggml.model`` ``gpt2`` is byte-level BPE (Llama 3, Qwen, SmolLM); ``llama`` is a
SentencePiece BPE vocabulary with scores (Llama 2, Mistral <= v0.3).
"""

from __future__ import annotations

import warnings
from functools import partial

from macft.errors import MacftError

# llama.cpp's token types (gguf.constants.TokenType).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# The regexes of the original Hugging Face tokenizer.json files that llama.cpp's names stand for.
LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
               r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

# tokenizer.ggml.pre -> pre-tokenizer family (names grouped as llama.cpp's llama-vocab.cpp does).
PRE_TOKENIZERS = {
    **dict.fromkeys(("default", "gpt-2", "gpt2", "phi-2", "mpt", "olmo", "jais", "trillion"),
                    "gpt2"),
    **dict.fromkeys(("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone",
                     "minerva-7b"), "digits"),
    **dict.fromkeys(("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral",
                     "smaug-bpe", "dbrx", "chatglm-bpe"), "llama3"),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen", "stablelm2", "megrez", "hunyuan",
                     "grok-2"), "qwen2"),
}


def _plain(value):
    """Metadata values as plain Python (accepts mx.array values from ``mx.load`` too)."""
    if hasattr(value, "tolist") and not isinstance(value, (list, str)):
        return value.tolist()
    return value


def _pre_tokenizer(pre: str | None, name: str):
    from tokenizers import Regex, pre_tokenizers

    family = PRE_TOKENIZERS.get(pre or "default")
    if family is None:
        warnings.warn(f"{name}: unknown tokenizer pre-tokenizer '{pre}', using GPT-2's; "
                      "tokenization may differ from llama.cpp's", stacklevel=3)
        family = "gpt2"
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=family != "llama3"
                                          and family != "qwen2")
    if family == "gpt2":
        return byte_level
    if family == "digits":
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    regex = LLAMA3_REGEX if family == "llama3" else QWEN2_REGEX
    split = pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False)
    return pre_tokenizers.Sequence([split, byte_level])


def _byte_level_bpe(tokens: list[str], merges: list[str], pre: str | None, name: str):
    from tokenizers import Tokenizer, decoders, models

    vocab = {tok: i for i, tok in enumerate(tokens)}
    pairs = [tuple(m.split(" ", 1)) for m in merges]
    # Llama 3 looks whole pre-tokenized words up in the vocabulary first (llama.cpp and its
    # tokenizer.json both set ignore_merges for it).
    tok = Tokenizer(models.BPE(vocab=vocab, merges=pairs, fuse_unk=False,
                               ignore_merges=PRE_TOKENIZERS.get(pre or "") == "llama3"))
    tok.pre_tokenizer = _pre_tokenizer(pre, name)
    tok.decoder = decoders.ByteLevel()
    return tok


def _sentencepiece_bpe(tokens: list[str], scores, types, unk: str | None, add_space: bool):
    """SentencePiece BPE as Hugging Face's converter builds it: merges ranked by piece score."""
    from tokenizers import Tokenizer, decoders, models, normalizers
    from transformers.tokenization_utils_base import generate_merges

    vocab = {tok: i for i, tok in enumerate(tokens)}
    skip = {tok for tok, t in zip(tokens, types) if t != NORMAL}
    ranked = {tok: float(s) for tok, s, t in zip(tokens, scores, types) if t == NORMAL}
    merges = generate_merges(vocab, ranked, skip_tokens=skip)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=unk, fuse_unk=True,
                               byte_fallback=True))
    steps = [normalizers.Prepend("▁")] if add_space else []
    tok.normalizer = normalizers.Sequence(steps + [normalizers.Replace(" ", "▁")])
    dec = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if add_space:
        dec.append(decoders.Strip(content=" ", left=1, right=0))
    tok.decoder = decoders.Sequence(dec)
    return tok


def build_tokenizer(metadata: dict, name: str = "model.gguf"):
    """A ``transformers`` fast tokenizer from GGUF metadata (no torch, no network)."""
    from tokenizers import AddedToken
    from transformers import PreTrainedTokenizerFast

    md = {k: _plain(v) for k, v in metadata.items() if k.startswith("tokenizer.")}
    kind = md.get("tokenizer.ggml.model")
    tokens = md.get("tokenizer.ggml.tokens")
    if not kind or not tokens:
        raise MacftError(f"{name}: the GGUF holds no tokenizer (tokenizer.ggml.tokens)")
    types = list(md.get("tokenizer.ggml.token_type") or [NORMAL] * len(tokens))
    if len(types) != len(tokens):
        raise MacftError(f"{name}: {len(types)} token types for {len(tokens)} tokens")

    def token(key):
        i = md.get(f"tokenizer.ggml.{key}_token_id")
        return tokens[int(i)] if i is not None and 0 <= int(i) < len(tokens) else None

    if kind == "gpt2":
        merges = md.get("tokenizer.ggml.merges")
        if not merges:
            raise MacftError(f"{name}: byte-level BPE tokenizer without tokenizer.ggml.merges")
        pre = md.get("tokenizer.ggml.pre")
        try:
            backend = _byte_level_bpe(tokens, merges, pre, name)
        except Exception as exc:  # tokenizers raises a bare Exception for a merge of no token
            detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise MacftError(f"{name}: corrupt tokenizer metadata ({detail})") from None
        default_bos = PRE_TOKENIZERS.get(pre or "") == "llama3"      # as llama.cpp defaults
    elif kind == "llama":
        scores = md.get("tokenizer.ggml.scores")
        if scores is None:
            raise MacftError(f"{name}: SentencePiece tokenizer without tokenizer.ggml.scores")
        add_space = bool(md.get("tokenizer.ggml.add_space_prefix", True))
        backend = _sentencepiece_bpe(tokens, scores, types, token("unknown"), add_space)
        default_bos = True
    else:
        raise MacftError(f"{name}: tokenizer model '{kind}' is not supported (gpt2, llama)")

    # Control and user-defined tokens are matched whole, before pre-tokenization.
    added = [AddedToken(tokens[i], special=types[i] == CONTROL, normalized=False)
             for i in range(len(tokens)) if types[i] in (CONTROL, USER_DEFINED)]
    backend.add_special_tokens([a for a in added if a.special])
    backend.add_tokens([a for a in added if not a.special])

    specials = {f"{k}_token": token(key) for k, key in
                (("bos", "bos"), ("eos", "eos"), ("unk", "unknown"), ("pad", "padding"))}
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        chat_template=md.get("tokenizer.chat_template"),
        add_bos_token=bool(md.get("tokenizer.ggml.add_bos_token", default_bos)),
        add_eos_token=bool(md.get("tokenizer.ggml.add_eos_token", False)),
        clean_up_tokenization_spaces=False,
        **{k: v for k, v in specials.items() if v is not None},
    )


def read_gguf_tokenizer(metadata: dict, name: str = "model.gguf"):
    """The tokenizer as mlx-lm's ``TokenizerWrapper`` with the matching streaming detokenizer."""
    from mlx_lm.tokenizer_utils import (BPEStreamingDetokenizer, SPMStreamingDetokenizer,
                                        TokenizerWrapper)

    tok = build_tokenizer(metadata, name)
    kind = _plain(metadata.get("tokenizer.ggml.model"))
    if kind == "gpt2":
        detok = BPEStreamingDetokenizer
    else:
        add_space = bool(_plain(metadata.get("tokenizer.ggml.add_space_prefix", True)))
        detok = partial(SPMStreamingDetokenizer, trim_space=add_space)
    eos = _plain(metadata.get("tokenizer.ggml.eos_token_id"))
    eot = _plain(metadata.get("tokenizer.ggml.eot_token_id"))
    ids = sorted({int(i) for i in (eos, eot) if i is not None})
    return TokenizerWrapper(tok, detokenizer_class=detok, eos_token_ids=ids or None)
