"""Check a written GGUF against the MLX model it came from, with llama.cpp doing the reading.

Both see the same token ids of a held-out text; per position we compare llama.cpp's logits
with MLX's: next-token top-1 agreement, mean KL(MLX || llama.cpp) and each side's perplexity.
Tolerances depend on how much the export rounded (``thresholds_for``); a permutation or
metadata bug lands far outside all of them (top-1 near chance, KL of several nats).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import numpy as np

from macft.errors import MacftError
from macft.export import llamacpp

# Held-out English prose (written for macft; in no training set of ours).
HELD_OUT = """\
The lighthouse keeper kept two logs. The first recorded the weather every four hours: wind,
pressure, the height of the swell and the colour of the sky at dusk. The second was private,
and in it he wrote about the ships. Some passed so close that he could read their names;
others were only lights that crossed the dark water and were gone before the kettle boiled.
In winter the supply boat came once a month, if the sea allowed it, bringing flour, lamp oil,
letters and newspapers that were already three weeks old. He read the newspapers slowly, one
page each evening, so that they would last until the next boat.

To measure a river's flow, hydrologists divide its cross-section into narrow vertical strips.
In each strip they record the depth and the average speed of the water, usually with a current
meter held at six tenths of the depth. Multiplying the width, depth and speed of every strip
and adding the results gives the discharge in cubic metres per second. Repeating the survey at
different water levels produces a rating curve, which later lets a single gauge reading stand
in for the whole laborious procedure.
"""


@dataclass(frozen=True)
class Thresholds:
    top1: float          # minimum next-token agreement
    kl: float            # maximum mean KL divergence (nats)
    ppl: float           # maximum relative perplexity difference

    def describe(self) -> str:
        return f"top-1 >= {self.top1:.2f}, KL <= {self.kl:g}, perplexity within {self.ppl:.1%}"


# Measured on SmolLM2-135M and held-out prose (perplexity ~41, so many near-ties): f16 top-1
# 1.00, KL 4e-6; q8_0 0.955, 4e-3; q4_1 copied exactly 0.98, 3e-3 (llama.cpp's dot products
# round activations to 8 bits). A Q/K permutation bug gives top-1 ~0.25 and KL of nats.
FLOAT = Thresholds(0.98, 0.01, 0.01)          # f32/f16/bf16
EXACT_BLOCKS = Thresholds(0.90, 0.02, 0.02)   # q8_0, or quantized blocks copied exactly
FIVE_SIX_BITS = Thresholds(0.80, 0.05, 0.05)
FOUR_BITS = Thresholds(0.65, 0.15, 0.15)

_FOUR = {"Q4_0", "Q4_1", "Q4_K", "Q3_K", "Q2_K"}
_FIVE_SIX = {"Q5_0", "Q5_1", "Q5_K", "Q6_K"}


def thresholds_for(types: dict, rounded: set) -> Thresholds:
    """The tolerance for a file with these tensor ``types``, ``rounded`` = types that rounded."""
    names = {t.name for t in rounded}
    if names & _FOUR:
        return FOUR_BITS
    if names & _FIVE_SIX:
        return FIVE_SIX_BITS
    if any(t.name not in ("F32", "F16", "BF16") for t in types.values()):
        return EXACT_BLOCKS
    return FLOAT


@dataclass(frozen=True)
class Comparison:
    n_tokens: int
    top1: float
    kl: float
    ppl_mlx: float
    ppl_llama: float
    tokens_match: bool | None       # llama.cpp's tokenization of the text equals macft's

    @property
    def ppl_diff(self) -> float:
        return abs(self.ppl_llama - self.ppl_mlx) / self.ppl_mlx

    def lines(self) -> list[str]:
        tok = {None: "not checked", True: "identical", False: "DIFFERENT"}[self.tokens_match]
        return [f"tokens compared: {self.n_tokens}  (tokenization by llama.cpp: {tok})",
                f"top-1 agreement: {self.top1:.4f}",
                f"KL(MLX || llama.cpp): {self.kl:.3g} nats/token",
                f"perplexity: MLX {self.ppl_mlx:.4f}  llama.cpp {self.ppl_llama:.4f}  "
                f"({self.ppl_diff:.2%} apart)"]

    def failures(self, limit: Thresholds) -> list[str]:
        out = []
        if self.tokens_match is False:
            out.append("llama.cpp tokenizes the text differently")
        if self.top1 < limit.top1:
            out.append(f"top-1 agreement {self.top1:.3f} < {limit.top1}")
        if not self.kl <= limit.kl:
            out.append(f"KL {self.kl:.3g} > {limit.kl:g}")
        if not self.ppl_diff <= limit.ppl:
            out.append(f"perplexity {self.ppl_diff:.2%} apart > {limit.ppl:.1%}")
        return out


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _where(mask, n: int) -> np.ndarray:
    """Positions 0..n-2 whose next token counts (all of them without a mask)."""
    if mask is None:
        return np.arange(n - 1)
    return np.flatnonzero(np.asarray(mask[1:n]) > 0)


def perplexity(logits: np.ndarray, ids: list[int], mask=None) -> float:
    """exp(mean NLL) of ids[1:] under the logits at positions 0..n-2.

    ``mask`` (one flag per id) keeps only the predictions of the ids it marks, e.g. the
    answer tokens of a chat.
    """
    at = _where(mask, len(ids))
    logp = _log_softmax(logits[at])
    return float(np.exp(-logp[np.arange(len(at)), np.asarray(ids)[at + 1]].mean()))


def compare_logits(mlx_logits: np.ndarray, llama_logits: np.ndarray, ids: list[int],
                   tokens_match: bool | None = None, mask=None) -> Comparison:
    """Metrics over positions 0..n-2 (each predicts the next id), or those ``mask`` marks."""
    at = _where(mask, len(ids))
    p, q = _log_softmax(mlx_logits[at]), _log_softmax(llama_logits[at])
    top1 = float((p.argmax(-1) == q.argmax(-1)).mean())
    kl = float((np.exp(p) * (p - q)).sum(-1).mean())
    return Comparison(len(at), top1, kl, perplexity(mlx_logits, ids, mask),
                      perplexity(llama_logits, ids, mask), tokens_match)


def mlx_logits(model, ids: list[int]) -> np.ndarray:
    out = model(mx.array([ids]))
    return np.array(out[0].astype(mx.float32))


def llama_logits(llm, ids: list[int]) -> np.ndarray:
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float32)


def held_out_ids(tokenizer, text: str, max_tokens: int) -> list[int]:
    ids = list(tokenizer.encode(text))[:max_tokens]
    if len(ids) < 8:
        raise MacftError(f"--verify: the held-out text has only {len(ids)} tokens")
    return ids


def verify_gguf(model, tokenizer, path: str | Path, limit: Thresholds,
                text: str = HELD_OUT, max_tokens: int = 512, lora: str | Path | None = None,
                ids: list[int] | None = None, mask=None) -> Comparison:
    """Compare ``path`` in llama.cpp with ``model`` in MLX; raise MacftError beyond ``limit``.

    ``ids`` replaces the tokenized ``text`` (then the tokenizers are not compared); ``mask``
    (one flag per id) restricts the metrics to the predictions of the ids it marks.
    """
    from_text = ids is None
    if from_text:
        ids = held_out_ids(tokenizer, text, max_tokens)
    llm = llamacpp.open_gguf(path, n_ctx=max(len(ids) + 16, 64), logits_all=True, lora=lora)
    tokens_match = None
    if from_text:
        theirs = llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)[:max_tokens]
        tokens_match = list(theirs) == ids
    result = compare_logits(mlx_logits(model, ids), llama_logits(llm, ids), ids, tokens_match,
                            mask)
    failed = result.failures(limit)
    if failed:
        raise MacftError(f"{Path(path).name}: llama.cpp disagrees with MLX: {'; '.join(failed)} "
                         f"(expected {limit.describe()})")
    return result
