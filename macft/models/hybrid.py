"""Hybrid linear-attention families (mlx-lm's gated-delta qwen3_next, qwen3_5, ...): what a run
may do with them.

Their linear-attention layers run a recurrence over the sequence. Right padding is harmless
(causal: no real position sees a pad), but packing is not: the recurrent state would flow from
one packed example into the next, which the block-diagonal attention mask cannot stop. Tracing
the recurrence for ``mx.compile`` unrolls it token by token (measured: 53 s for the first step
of a 4-layer tiny model against 0.7 s uncompiled), so ``train.compile: auto`` leaves them
uncompiled. GGUF export is refused by the writer's architecture table in one line.
"""

from __future__ import annotations

import mlx.nn as nn

from macft.errors import MacftError


def linear_attention_layers(model: nn.Module) -> int:
    """How many of ``model``'s blocks use linear (recurrent) attention."""
    return sum(1 for layer in model.layers
               if getattr(layer, "is_linear", False) or "linear_attn" in layer)


def check_recipe(recipe, model: nn.Module, model_type: str) -> None:
    """One-line refusals for what a hybrid model cannot train with."""
    if recipe.data.packing and linear_attention_layers(model):
        raise MacftError(f"recipe: key 'data.packing' is not supported for {model_type}: its "
                         "linear-attention layers would carry their state from one packed "
                         "example into the next")
