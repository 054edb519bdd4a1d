"""The one architecture table: each mlx-lm model type, its GGUF name, and which way it goes."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Architecture:
    gguf: str               # llama.cpp's general.architecture
    hf_class: str           # config.json "architectures" of a model imported from GGUF
    imports: bool           # macft reads this GGUF architecture back into MLX (export: all)


# mlx-lm model_type -> its GGUF form. Mistral (<= v0.3) is a llama in GGUF.
ARCHITECTURES = {
    "llama": Architecture("llama", "LlamaForCausalLM", imports=True),
    "mistral": Architecture("llama", "MistralForCausalLM", imports=False),
    "qwen2": Architecture("qwen2", "Qwen2ForCausalLM", imports=True),
    "qwen3": Architecture("qwen3", "Qwen3ForCausalLM", imports=True),
    "qwen3_moe": Architecture("qwen3moe", "Qwen3MoeForCausalLM", imports=False),
}

# GGUF architecture -> the entry macft imports it as
IMPORTED = {a.gguf: a for a in ARCHITECTURES.values() if a.imports}
