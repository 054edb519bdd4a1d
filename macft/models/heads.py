"""Split an mlx-lm causal LM into its body (tokens -> final hidden states) and its output head.

The loss needs logits only where a token is trained; with the split, the trainer gathers those
hidden states first and projects only them (a third of the positions in a typical chat set),
which saves most of the head's matmul and the exp over the vocabulary on the CPU.
"""

from __future__ import annotations

from typing import Callable

import mlx.nn as nn

# Architectures whose Model.__call__ is exactly: h = self.model(x); logits = head(h).
SPLITTABLE = {"llama", "mistral", "qwen2", "qwen3", "smollm3", "phi3", "starcoder2", "olmo2",
              "granite", "cohere", "internlm3"}


def split(model: nn.Module) -> tuple[Callable, Callable] | None:
    """(body, head) or None when the architecture post-processes logits in its own way."""
    if getattr(model, "model_type", None) not in SPLITTABLE or not hasattr(model, "model"):
        return None
    if getattr(model.args, "logits_scaling", None) or getattr(model.args, "final_logit_softcapping",
                                                                    None):
        return None

    def body(inputs):
        return model.model(inputs)

    if hasattr(model, "lm_head"):
        return body, model.lm_head
    return body, model.model.embed_tokens.as_linear
