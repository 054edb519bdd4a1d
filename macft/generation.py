"""Greedy generation for many prompts at once (eval, training samples, compare).

Per-prompt generation is dominated by per-op overhead on the CPU (~13 tokens/s for SmolLM2
here), so prompts are generated together with mlx-lm's batched generator.
"""

from __future__ import annotations

import contextlib
from typing import Callable

# The longest answer of `macft generate` and `macft chat` (eval and training samples take
# theirs from the recipe: eval.max_tokens, train.sample_max_tokens).
MAX_TOKENS = 256


@contextlib.contextmanager
def decoding():
    """The BLAS setting of every generation (rollouts, eval, samples): OpenBLAS on
    ``MACFT_DECODE_THREADS`` threads (default 1).

    A decode step multiplies one new token per sequence by each weight, products of a few rows
    where a second thread gains little, while OpenBLAS's workers busy-wait for their share: on
    a CPU shared with other processes a descheduled worker holds up every product. Measured on
    the 2-core machine with other jobs running: a decode step of SmolLM2 for 8 sequences took
    0.85-1.1 s on one thread and 3.9-5.3 s on two.
    """
    from macft import blas, env

    with blas.threads(int(env.get("MACFT_DECODE_THREADS"))):
        yield


def greedy(model, tokenizer, prompts: list[list[int]], max_tokens: int, batch_size: int = 32,
           progress: Callable[[int, int], None] | None = None) -> list[str]:
    from mlx_lm.generate import batch_generate

    texts: list[str] = []
    was_training = model.training
    model.eval()
    try:
        with decoding():
            for start in range(0, len(prompts), batch_size):
                chunk = prompts[start:start + batch_size]
                result = batch_generate(model, tokenizer, chunk, max_tokens=max_tokens,
                                        completion_batch_size=len(chunk),
                                        prefill_batch_size=len(chunk))
                texts += result.texts
                if progress:
                    progress(len(texts), len(prompts))
    finally:
        model.train(was_training)
    return texts


def chat_prompt(tokenizer, text: str, system: str | None = None) -> list[int]:
    """Token ids of a single user turn rendered with the chat template (if any)."""
    if getattr(tokenizer, "has_chat_template", False) or getattr(tokenizer, "chat_template", None):
        from jinja2.exceptions import TemplateError

        from macft.errors import MacftError
        from macft.data.template_guard import guard

        messages = ([{"role": "system", "content": system}] if system else [])
        messages.append({"role": "user", "content": text})
        guard(tokenizer)
        try:
            return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                      tokenize=True))
        except TemplateError as exc:
            detail = " ".join(str(exc).split()) or type(exc).__name__
            raise MacftError(f"the chat template failed: {detail}") from None
    return list(tokenizer.encode(text))
