"""The one architecture table: each mlx-lm model type, its GGUF name, and which way it goes."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Architecture:
    model_type: str         # mlx-lm's model_type (config.json)
    gguf: str               # llama.cpp's general.architecture
    hf_class: str           # config.json "architectures" of a model imported from GGUF
    imports: bool           # macft reads this GGUF architecture back into MLX (export: all)


# Mistral (<= v0.3) is a llama in GGUF, so a GGUF "llama" comes back as a llama.
_TABLE = (
    Architecture("llama", "llama", "LlamaForCausalLM", imports=True),
    Architecture("mistral", "llama", "MistralForCausalLM", imports=False),
    Architecture("qwen2", "qwen2", "Qwen2ForCausalLM", imports=True),
    Architecture("qwen3", "qwen3", "Qwen3ForCausalLM", imports=True),
    Architecture("qwen3_moe", "qwen3moe", "Qwen3MoeForCausalLM", imports=True),
    Architecture("gemma3_text", "gemma3", "Gemma3ForCausalLM", imports=True),
)
ARCHITECTURES = {a.model_type: a for a in _TABLE}        # mlx-lm model_type -> entry

# GGUF architecture -> the entry macft imports it as
IMPORTED = {a.gguf: a for a in _TABLE if a.imports}
