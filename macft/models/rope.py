"""RoPE scaling from the recipe (``model.rope_scaling``): train and run past the native context.

The loaded model's rotary embeddings are replaced with mlx-lm's scaled ones
(``rope_utils.initialize_rope``: linear, or YaRN's NTK-by-parts frequencies with the attention
temperature ``mscale``), and the model's config records the scaling in Hugging Face form, which
is what the GGUF writer turns into llama.cpp's ``{arch}.rope.scaling.*`` keys.

YaRN's temperature: mlx-lm multiplies queries and keys by
``(1 + 0.1 mscale ln s) / (1 + 0.1 mscale_all_dim ln s)``, llama.cpp by
``attn_factor * (1 + 0.1 ln s)``; ``yarn_attn_factor`` converts between the two.
"""

from __future__ import annotations

import math

import mlx.nn as nn

from macft.errors import MacftError
from macft.gguf.metadata import yarn_attn_factor  # noqa: F401  (the GGUF side owns it)

# Families whose every layer has one plain ``rope`` (Gemma 3 scales only its global layers).
SUPPORTED = ("llama", "mistral", "qwen2", "qwen3", "qwen3_moe")


def mlx_mscale(attn_factor: float, s: float) -> float:
    """mlx-lm's YaRN ``mscale`` m for llama.cpp's ``attn_factor``:
    1 + 0.1 m ln s = attn_factor * (1 + 0.1 ln s)."""
    ln = math.log(s)
    return (attn_factor * (1 + 0.1 * ln) - 1) / (0.1 * ln)


def scaling_config(spec, config: dict) -> dict | None:
    """The Hugging Face ``rope_scaling`` dict for a recipe's ``model.rope_scaling``."""
    if spec is None or spec.type == "none":
        return None
    orig = spec.original_max_position_embeddings or int(config.get("max_position_embeddings")
                                                        or 0)
    if orig <= 0:
        raise MacftError("recipe: key 'model.rope_scaling.original_max_position_embeddings' "
                         "is needed: the model does not say its native context")
    out = {"type": spec.type, "rope_type": spec.type, "factor": float(spec.factor),
           "original_max_position_embeddings": orig}
    if spec.type == "yarn":
        out.update(beta_fast=float(spec.beta_fast), beta_slow=float(spec.beta_slow))
        if spec.attn_factor != 1.0 and spec.factor > 1:
            out["mscale"] = mlx_mscale(spec.attn_factor, spec.factor)
    return out


def apply(model: nn.Module, config: dict, spec) -> dict | None:
    """Scale ``model``'s rotary embeddings as ``spec`` says and record it in ``config``."""
    scaling = scaling_config(spec, config)
    if scaling is None:
        return None
    from mlx_lm.models.rope_utils import initialize_rope

    kind = config.get("model_type", "")
    if kind not in SUPPORTED:
        raise MacftError(f"recipe: key 'model.rope_scaling' is not supported for {kind} "
                         f"(macft scales the rope of {', '.join(SUPPORTED)})")
    ropes = [(path, m) for path, m in model.named_modules() if path.endswith(".rope")]
    for path, old in ropes:
        if type(old) is not nn.RoPE or old.scale != 1.0:
            raise MacftError(f"recipe: key 'model.rope_scaling': the model's rope is already "
                             f"scaled ({config.get('rope_scaling')}); remove the key")
    longest = int(scaling["original_max_position_embeddings"] * scaling["factor"])
    modules = dict(model.named_modules())
    for path, old in ropes:
        parent, _, name = path.rpartition(".")
        setattr(modules[parent], name,
                initialize_rope(old.dims, old.base, old.traditional, scaling, longest))
    config["rope_scaling"] = scaling
    config["max_position_embeddings"] = longest
    return scaling
