"""The forgetting check: general text for perplexity and short questions with checkable answers.

Both files ship with macft (package data). ``macft eval MODEL --general`` reports them, the
training guard (macft.general.guard) watches the perplexity during a run, and
``macft compare`` shows the change between a base model and a run.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).parent
TEXT = HERE / "text.txt"
QUESTIONS = HERE / "questions.jsonl"
CHUNK = 128      # tokens per perplexity window


def questions() -> list[dict]:
    return [json.loads(line) for line in QUESTIONS.read_text().splitlines() if line.strip()]


def text_windows(tokenizer, length: int = CHUNK, limit: int = 0) -> list[list[int]]:
    """The general text as windows of ``length + 1`` tokens (inputs and shifted targets)."""
    from macft.data.encode import unwrap

    ids = list(unwrap(tokenizer).encode(TEXT.read_text()))
    step = length + 1
    windows = [ids[i:i + step] for i in range(0, len(ids) - step + 1, length)]
    return windows[:limit] if limit else windows


def perplexity(model, windows: list[list[int]], batch_size: int = 8) -> float:
    """exp of the mean next-token cross-entropy over every window (the model's mode is kept)."""
    import mlx.core as mx
    import mlx.nn as nn

    total, count = 0.0, 0
    for start in range(0, len(windows), batch_size):
        batch = mx.array(windows[start:start + batch_size])
        logits = model(batch[:, :-1])
        ce = nn.losses.cross_entropy(logits.astype(mx.float32), batch[:, 1:], reduction="sum")
        total += float(ce.item())
        count += int(batch[:, 1:].size)
    return math.exp(total / max(count, 1))


def correct(prediction: str, answer: str) -> bool:
    """The answer appears as whole words among the first twelve words of the prediction."""
    head = " ".join(prediction.split()[:12]).casefold()
    return re.search(r"(?<!\w)" + re.escape(answer.casefold()) + r"(?!\w)", head) is not None


@dataclass
class GeneralReport:
    perplexity: float
    accuracy: float
    questions: int
    by_kind: dict = field(default_factory=dict)     # kind -> accuracy
    records: list[dict] = field(default_factory=list)

    def lines(self) -> list[str]:
        kinds = " · ".join(f"{k} {v:.0%}" for k, v in sorted(self.by_kind.items()))
        return [f"general perplexity  {self.perplexity:.3f}  (macft/general/text.txt)",
                f"general questions   {self.accuracy:.1%} of {self.questions}  ({kinds})"]

    def as_dict(self) -> dict:
        return {"perplexity": self.perplexity, "accuracy": self.accuracy,
                "questions": self.questions, "by_kind": self.by_kind}


def evaluate_general(model, tokenizer, batch_size: int = 32, progress=None,
                     limit: int = 0) -> GeneralReport:
    from macft.data import Row, prompt_and_reference
    from macft.generation import greedy
    from macft.recipe import DataSpec

    model.eval()
    ppl = perplexity(model, text_windows(tokenizer))
    rows = questions()[:limit] if limit else questions()
    spec = DataSpec()
    prompts = [prompt_and_reference(Row(i + 1, r, str(QUESTIONS)), "chat", tokenizer, spec)[0]
               for i, r in enumerate(rows)]
    preds = greedy(model, tokenizer, prompts, 16, batch_size, progress)
    records, by_kind = [], {}
    for r, pred in zip(rows, preds):
        answer = r["messages"][-1]["content"]
        ok = correct(pred, answer)
        records.append({"kind": r["kind"], "question": r["messages"][0]["content"],
                        "answer": answer, "prediction": pred, "correct": ok})
        by_kind.setdefault(r["kind"], []).append(ok)
    share = {k: sum(v) / len(v) for k, v in by_kind.items()}
    acc = sum(x["correct"] for x in records) / len(records)
    return GeneralReport(ppl, acc, len(records), share, records)
