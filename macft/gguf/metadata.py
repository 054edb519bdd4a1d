"""Model hyper-parameters as the GGUF metadata llama.cpp reads, with the value types it demands.

Counts are u32 and epsilons/rope bases f32 (llama.cpp refuses an i32 ``block_count``), so every
value goes through gguf-py's typed ``add_*`` helpers.
"""

from __future__ import annotations

import math

import gguf

from macft.errors import MacftError
from macft.gguf.architectures import ARCHITECTURES


def gguf_architecture(config: dict) -> str:
    model_type = config.get("model_type", "")
    if model_type not in ARCHITECTURES:
        raise MacftError(f"GGUF export does not support model type '{model_type}' "
                         f"(supported: {', '.join(ARCHITECTURES)})")
    return ARCHITECTURES[model_type].gguf


def head_dim(config: dict) -> int:
    return int(config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"])


def _mscale(s: float, m: float) -> float:
    return 1.0 if s <= 1 else 0.1 * m * math.log(s) + 1.0


def yarn_attn_factor(scaling: dict) -> float:
    """llama.cpp's ``attn_factor`` for a Hugging Face / mlx-lm YaRN config."""
    s = float(scaling["factor"])
    eff = _mscale(s, float(scaling.get("mscale", 1.0))) / _mscale(
        s, float(scaling.get("mscale_all_dim", 0.0)))
    return eff / _mscale(s, 1.0)


def rope_scaling(config: dict) -> dict | None:
    """The rope scaling dict with its kind under ``"type"``, or None for plain rope."""
    scaling = config.get("rope_scaling")
    if not scaling:
        return None
    kind = scaling.get("rope_type") or scaling.get("type") or "default"
    return None if kind == "default" else dict(scaling, type=kind)


def add_model_metadata(w: gguf.GGUFWriter, config: dict, name: str, file_type: int,
                       quantized: bool) -> None:
    heads = int(config["num_attention_heads"])
    dim = head_dim(config)
    gemma = config["model_type"] == "gemma3_text"
    if gemma:
        from macft.gguf import gemma3

        gemma3.check_exportable(config)
    w.add_name(name)
    w.add_file_type(int(file_type))
    if quantized:
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_context_length(int(config.get("max_position_embeddings", 4096)))
    w.add_embedding_length(int(config["hidden_size"]))
    w.add_block_count(int(config["num_hidden_layers"]))
    w.add_feed_forward_length(int(config["intermediate_size"]))
    w.add_head_count(heads)
    w.add_head_count_kv(int(config.get("num_key_value_heads") or heads))
    w.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
    w.add_rope_freq_base(float(config.get("rope_theta", 10000.0)))
    w.add_rope_dimension_count(dim)
    if dim != config["hidden_size"] // heads or config["model_type"] in ("qwen3", "qwen3_moe",
                                                                       "gemma3_text"):
        # Without these llama.cpp derives the head size from hidden/heads and fails on shapes.
        w.add_key_length(dim)
        w.add_value_length(dim)
    w.add_vocab_size(int(config["vocab_size"]))
    _add_rope_scaling(w, config)
    if gemma:
        w.add_sliding_window(int(config.get("sliding_window", 512)))
    if config["model_type"] == "qwen3_moe":
        _add_experts(w, config)


def _add_experts(w: gguf.GGUFWriter, config: dict) -> None:
    # llama.cpp's qwen3moe always renormalizes the top-k router weights and has no dense layers.
    if not config.get("norm_topk_prob", True) or config.get("mlp_only_layers") \
            or int(config.get("decoder_sparse_step", 1)) != 1:
        raise MacftError("GGUF export: qwen3_moe with dense layers or unnormalized top-k "
                         "routing is not supported by llama.cpp's qwen3moe")
    w.add_expert_count(int(config["num_experts"]))
    w.add_expert_used_count(int(config["num_experts_per_tok"]))
    w.add_expert_feed_forward_length(int(config["moe_intermediate_size"]))


def _add_rope_scaling(w: gguf.GGUFWriter, config: dict) -> None:
    scaling = rope_scaling(config)
    if scaling is None or scaling["type"] == "llama3":
        return                       # llama3 scaling travels as the rope_freqs tensor
    kind = scaling["type"]
    if kind == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(float(scaling["factor"]))
    elif kind == "yarn":
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(float(scaling["factor"]))
        orig = scaling.get("original_max_position_embeddings")
        if orig:
            w.add_rope_scaling_orig_ctx_len(int(orig))

        if abs(yarn_attn_factor(scaling) - 1.0) > 1e-6:
            # Measured: llama.cpp's logits with a yarn_attn_factor key match no temperature
            # of mlx-lm's YarnRoPE, so such a file would not compute what was trained.
            raise MacftError("GGUF export: YaRN with an attention factor other than 1 "
                             f"({yarn_attn_factor(scaling):.4g}) is not supported: llama.cpp "
                             "applies it differently from mlx-lm")
        # llama.cpp's names; its defaults are Hugging Face's (32, 1).
        w.add_rope_scaling_yarn_beta_fast(float(scaling.get("beta_fast", 32.0)))
        w.add_rope_scaling_yarn_beta_slow(float(scaling.get("beta_slow", 1.0)))
    else:
        raise MacftError(f"GGUF export: rope scaling '{kind}' is not supported "
                         "(linear, yarn, llama3)")
