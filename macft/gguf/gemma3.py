"""Gemma 3 (text) between llama.cpp's ``gemma3`` GGUF layout and mlx-lm's ``gemma3_text`` model.

What differs from the llama family, and why:
- Four norms per block: llama.cpp's ``attn_norm``, ``post_attention_norm``, ``ffn_norm`` and
  ``post_ffw_norm`` are mlx-lm's input, post-attention, pre- and post-feed-forward norms.
- Norm weights: llama.cpp's converter stores ``1 + w`` (every ``*norm.weight``, the Q/K norms
  included) and multiplies by it; mlx-lm keeps ``w`` and adds 1 at run time. Import subtracts 1,
  export adds it back.
- The local/global pattern is not in the file: llama.cpp fixes it at five sliding-window layers
  then one global (pattern 6), the local rope base at 10000, and the query scale at
  1/sqrt(head_dim) except for the 62-layer 27B (1/sqrt(hidden/heads)); so does this import.
- No rotary permutation (llama.cpp uses the NEOX rotation for Gemma) and no Q/K biases.
- Embeddings are scaled by sqrt(hidden) inside the model (both sides); they are tied to the
  output when the file has no ``output.weight``.
"""

from __future__ import annotations

import numpy as np

from macft.errors import MacftError
from macft.gguf.architectures import ARCHITECTURES

MODEL_TYPE = "gemma3_text"          # mlx-lm's text-only Gemma 3
SLIDING_WINDOW_PATTERN = 6          # llama.cpp: hparams.set_swa_pattern(6) for gemma3
LOCAL_ROPE_BASE = 10000.0           # llama.cpp: rope_freq_base_train_swa for gemma3

# GGUF block tensor -> mlx-lm module (relative to model.layers.N), where Gemma differs.
BLOCK_NAMES = {
    "attn_norm": "input_layernorm",
    "post_attention_norm": "post_attention_layernorm",
    "ffn_norm": "pre_feedforward_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
}
_HF_TO_GGUF = {v: k for k, v in BLOCK_NAMES.items()}


def query_scalar(hidden: int, heads: int, head_dim: int, n_layers: int) -> float:
    """mlx-lm's ``query_pre_attn_scalar`` as llama.cpp derives the query scale."""
    return int(hidden // heads if n_layers == 62 else head_dim)


def hf_config(header, get) -> dict:
    """The config.json dict for mlx-lm's gemma3_text from the file's metadata."""
    name = header.path.name
    hidden, heads = int(get("embedding_length")), int(get("attention.head_count"))
    head_dim = int(get("attention.key_length", 256, required=False))
    if int(get("attention.value_length", head_dim, required=False)) != head_dim:
        raise MacftError(f"{name}: different key and value head sizes are not supported")
    n_layers = int(get("block_count"))
    embd = header.tensors.get("token_embd.weight")
    if embd is None:
        raise MacftError(f"{name}: tensor 'token_embd.weight' is missing")
    if get("rope.scaling.type", "none", required=False) not in ("none", None):
        raise MacftError(f"{name}: rope scaling on gemma3 is not supported")
    md = header.metadata
    cfg = {
        "model_type": MODEL_TYPE,
        "architectures": [ARCHITECTURES[MODEL_TYPE].hf_class],
        "hidden_size": hidden,
        "num_hidden_layers": n_layers,
        "intermediate_size": int(get("feed_forward_length")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(get("attention.head_count_kv", heads, required=False)),
        "head_dim": head_dim,
        "rms_norm_eps": float(str(np.float32(get("attention.layer_norm_rms_epsilon")))),
        "vocab_size": int(embd.shape[0]),
        "rope_theta": float(get("rope.freq_base", 1000000.0, required=False)),
        "rope_local_base_freq": LOCAL_ROPE_BASE,
        "query_pre_attn_scalar": query_scalar(hidden, heads, head_dim, n_layers),
        "sliding_window": int(get("attention.sliding_window", 512, required=False)),
        "sliding_window_pattern": SLIDING_WINDOW_PATTERN,
        "max_position_embeddings": int(get("context_length", 32768, required=False)),
        "tie_word_embeddings": "output.weight" not in header.tensors,
    }
    for key in ("bos_token_id", "eos_token_id"):
        if f"tokenizer.ggml.{key}" in md:
            cfg[key] = int(md[f"tokenizer.ggml.{key}"])
    return cfg


def hf_block_name(gguf_part: str) -> str | None:
    return BLOCK_NAMES.get(gguf_part)


def gguf_block_name(hf_module: str) -> str | None:
    return _HF_TO_GGUF.get(hf_module)


def check_exportable(config: dict) -> None:
    """llama.cpp's gemma3 fixes what the GGUF cannot say: refuse a model that differs."""
    hidden, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
    head_dim = int(config.get("head_dim") or hidden // heads)
    n_layers = int(config["num_hidden_layers"])
    fixed = {
        "sliding_window_pattern": (int(config.get("sliding_window_pattern", 6)),
                                   SLIDING_WINDOW_PATTERN),
        "rope_local_base_freq": (float(config.get("rope_local_base_freq", LOCAL_ROPE_BASE)),
                                 LOCAL_ROPE_BASE),
        "query_pre_attn_scalar": (float(config.get("query_pre_attn_scalar", head_dim)),
                                  query_scalar(hidden, heads, head_dim, n_layers)),
    }
    for key, (have, want) in fixed.items():
        if have != want:
            raise MacftError(f"GGUF export: gemma3 with {key} {have:g} cannot be written "
                             f"(llama.cpp's gemma3 assumes {want:g})")
    if config.get("rope_scaling"):
        raise MacftError("GGUF export: gemma3 with rope scaling is not supported")
    if config.get("final_logit_softcapping") or config.get("attn_logit_softcapping"):
        raise MacftError("GGUF export: gemma3 with logit soft-capping is not supported")
