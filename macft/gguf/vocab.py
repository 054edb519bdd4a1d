"""The tokenizer as GGUF ``tokenizer.*`` metadata: copied from a GGUF base, derived from HF.

A model imported from a GGUF gets its base's tokenizer keys back verbatim, with their value
types (same tokens, merges, pre-tokenizer name, special ids and template). A Hugging Face
tokenizer becomes ``gpt2`` (byte-level BPE with merges and a ``pre`` name derived from its
pre-tokenizer) or ``llama`` (SentencePiece-style BPE with byte fallback; scores rank merges).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import gguf

from macft.errors import MacftError
from macft.gguf.tokenizer import (BYTE, CONTROL, LLAMA3_REGEX, NORMAL, QWEN2_REGEX,
                                         UNKNOWN, UNUSED, USER_DEFINED)


def copy_gguf_tokenizer(w: gguf.GGUFWriter, source: Path, n_vocab: int,
                        chat_template: str | None = None) -> None:
    """Copy every ``tokenizer.*`` key of ``source`` with its exact value type; a base file
    without ``tokenizer.chat_template`` (Gemma 3 270M) gets ``chat_template``, the one the
    model was trained with, so llama.cpp front ends render the same turns."""
    reader = gguf.GGUFReader(str(source))
    if chat_template and "tokenizer.chat_template" not in reader.fields:
        w.add_chat_template(chat_template)
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    if tokens is not None and len(tokens.data) != n_vocab:
        raise MacftError(f"{source.name}: {len(tokens.data)} tokens but the model has "
                         f"{n_vocab} embedding rows")
    for key, field in reader.fields.items():
        if not key.startswith("tokenizer."):
            continue
        vtype = field.types[0]
        if vtype == gguf.GGUFValueType.ARRAY:
            w.add_key_value(key, list(field.contents()), vtype, sub_type=field.types[-1])
        else:
            w.add_key_value(key, field.contents(), vtype)


def add_hf_tokenizer(w: gguf.GGUFWriter, tokenizer, n_vocab: int) -> None:
    """Write a ``transformers`` fast tokenizer (or mlx-lm's wrapper of one) as GGUF metadata."""
    tok = tokenizer
    if not hasattr(tok, "backend_tokenizer"):                 # mlx-lm's TokenizerWrapper
        tok = getattr(tok, "_tokenizer", tok)
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        raise MacftError("GGUF export needs a fast (tokenizer.json) tokenizer")
    spec = json.loads(backend.to_str())
    model = spec.get("model", {})
    if model.get("type") != "BPE":
        raise MacftError(f"GGUF export: tokenizer model '{model.get('type')}' is not supported "
                         "(byte-level or SentencePiece-style BPE)")
    tokens, types = _token_table(tok, spec, n_vocab)
    if _is_byte_level(spec):
        w.add_tokenizer_model("gpt2")
        pre = pre_tokenizer_name(spec.get("pre_tokenizer"))
        if pre:
            w.add_tokenizer_pre(pre)
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_merges(_merges(model))
    elif model.get("byte_fallback"):
        w.add_tokenizer_model("llama")
        w.add_tokenizer_pre("default")
        for i, t in enumerate(tokens):
            if len(t) == 6 and t.startswith("<0x") and t.endswith(">"):
                types[i] = BYTE                      # byte-fallback pieces, added or not
        w.add_token_list(tokens)
        w.add_token_scores(_scores(tokens, types, _merges(model)))
        w.add_token_types(types)
        w.add_add_space_prefix(_adds_space_prefix(spec))
    else:
        raise MacftError("GGUF export: BPE tokenizer is neither byte-level nor byte-fallback "
                         "SentencePiece (not supported)")
    _add_specials(w, tok)


def _token_table(tok, spec: dict, n_vocab: int) -> tuple[list[str], list[int]]:
    vocab = tok.get_vocab()
    if max(vocab.values()) >= n_vocab:
        raise MacftError(f"GGUF export: the tokenizer has ids up to {max(vocab.values())} but "
                         f"the model only {n_vocab} embedding rows")
    # Rows without a token (vocabularies padded to a round size) become unused placeholders,
    # as llama.cpp's converter writes them.
    tokens = [f"[PAD{i}]" for i in range(n_vocab)]
    types = [UNUSED] * n_vocab
    for text, i in vocab.items():
        tokens[i], types[i] = text, NORMAL
    for added in spec.get("added_tokens", []):
        i = added["id"]
        if i < n_vocab:
            types[i] = CONTROL if added.get("special") else USER_DEFINED
    unk = spec["model"].get("unk_token")
    if unk in vocab:
        types[vocab[unk]] = UNKNOWN
    return tokens, types


def _merges(model: dict) -> list[str]:
    return [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]


def _walk(node):
    """Every pre-tokenizer/decoder step of a (possibly nested) Sequence spec."""
    if not node:
        return []
    if node.get("type") == "Sequence":
        steps = node.get("pretokenizers") or node.get("decoders") or node.get("normalizers") or []
        return [s for child in steps for s in _walk(child)]
    return [node]


def _is_byte_level(spec: dict) -> bool:
    steps = _walk(spec.get("pre_tokenizer")) + _walk(spec.get("decoder"))
    return any(s.get("type") == "ByteLevel" for s in steps)


def pre_tokenizer_name(pre: dict | None) -> str | None:
    """llama.cpp's ``tokenizer.ggml.pre`` for a byte-level pre-tokenizer spec, or None.

    The names are the ones macft's importer maps back (``gguf.tokenizer.PRE_TOKENIZERS``):
    GPT-2's regex alone is ``gpt-2``; single digits before it is ``smollm``; the Llama 3 and
    Qwen2 split regexes are ``llama-bpe`` and ``qwen2``.
    """
    steps = _walk(pre)
    kinds = [s.get("type") for s in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") \
            and steps[1].get("use_regex", True):
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        regex = steps[0].get("pattern", {}).get("Regex")
        if regex == LLAMA3_REGEX:
            return "llama-bpe"
        if regex == QWEN2_REGEX:
            return "qwen2"
    warnings.warn("GGUF export: no llama.cpp pre-tokenizer name is known for this tokenizer's "
                  f"pre-tokenizer ({' + '.join(map(str, kinds))}); llama.cpp will use its "
                  "default and may tokenize differently", stacklevel=2)
    return None


def _scores(tokens: list[str], types: list[int], merges: list[str]) -> list[float]:
    """SentencePiece-style scores: a token made by merge number r scores -r (earlier = higher).

    llama.cpp's SentencePiece tokenizer merges the adjacent pair whose joined piece scores
    highest, which then follows the merge order of the BPE model.
    """
    rank = {}
    for r, merge in enumerate(merges):
        rank.setdefault(merge.replace(" ", ""), r)
    return [-float(rank[t]) - 1.0 if types[i] == NORMAL and t in rank else 0.0
            for i, t in enumerate(tokens)]


def _adds_space_prefix(spec: dict) -> bool:
    steps = _walk(spec.get("normalizer")) + _walk(spec.get("pre_tokenizer"))
    for s in steps:
        if s.get("type") == "Prepend":
            return True
        if s.get("type") == "Metaspace":
            return s.get("prepend_scheme", "always") != "never"
    return False


def _add_specials(w: gguf.GGUFWriter, tok) -> None:
    ids = {"bos": tok.bos_token_id, "eos": tok.eos_token_id, "unk": tok.unk_token_id,
           "pad": tok.pad_token_id}
    setters = {"bos": w.add_bos_token_id, "eos": w.add_eos_token_id,
               "unk": w.add_unk_token_id, "pad": w.add_pad_token_id}
    for key, value in ids.items():
        if value is not None:
            setters[key](int(value))
    # What the tokenizer really does, rather than a flag it may or may not carry.
    probe = tok.encode("a")
    w.add_add_bos_token(bool(ids["bos"] is not None and probe[:1] == [ids["bos"]]))
    w.add_add_eos_token(bool(ids["eos"] is not None and probe[-1:] == [ids["eos"]]))
    template = chat_template_of(tok)
    if template:
        w.add_chat_template(template)


def chat_template_of(tokenizer) -> str | None:
    """The chat template text of a tokenizer (or mlx-lm's wrapper of one), if it has one."""
    tok = tokenizer
    if getattr(tok, "chat_template", None) is None:
        tok = getattr(tok, "_tokenizer", tok)
    template = getattr(tok, "chat_template", None)
    if isinstance(template, dict):
        template = template.get("default") or next(iter(template.values()), None)
    return template or None
