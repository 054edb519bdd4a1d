"""`macft eval`: greedy answers on a data set's prompts, exact match, JSON validity, loss."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Callable

from macft.recipe import DataSpec


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except (json.JSONDecodeError, TypeError):
        return False
    return True


@dataclass
class Report:
    examples: int
    exact_match: float
    json_references: int = 0
    valid_json: float | None = None
    json_equal: float | None = None
    loss: float | None = None
    records: list[dict] = field(default_factory=list)
    task: dict | None = None        # macft.metrics: the family chosen from the references

    def lines(self) -> list[str]:
        out = [f"examples      {self.examples}",
               f"exact match   {self.exact_match:.1%}"]
        if self.valid_json is not None:
            out.append(f"valid JSON    {self.valid_json:.1%}  (references that are JSON: "
                       f"{self.json_references})")
            out.append(f"JSON equal    {self.json_equal:.1%}  (parsed values equal)")
        if self.loss is not None:
            out.append(f"loss          {self.loss:.4f}")
        from macft.metrics import lines

        return out + lines(self.task)


def score(predictions: list[str], references: list[str]) -> tuple[float, int, float | None,
                                                                 float | None]:
    """Exact match (after trimming whitespace), and JSON validity/equality where refs are JSON."""
    n = len(references)
    exact = sum(p.strip() == r.strip() for p, r in zip(predictions, references))
    json_refs = [(p, r) for p, r in zip(predictions, references) if _is_json(r.strip())]
    valid = equal = None
    if json_refs:
        valid = sum(_is_json(p.strip()) for p, _ in json_refs) / len(json_refs)
        equal = sum(_is_json(p.strip()) and json.loads(p.strip()) == json.loads(r.strip())
                    for p, r in json_refs) / len(json_refs)
    return (exact / n if n else 0.0), len(json_refs), valid, equal


def data_loss(model, tokenizer, rows, spec: DataSpec, path: str, batch_size: int) -> float | None:
    """Mean cross-entropy over the trained tokens of the data set (as in validation)."""
    from macft.data import Batcher, encode_rows, make_sequences, pad_id
    from macft.train.loss import mean_loss

    encoded = encode_rows(rows, tokenizer, spec, path)
    if not encoded.examples:
        return None
    batcher = Batcher(make_sequences(encoded.examples, spec.max_length, False), batch_size, 0,
                      shuffle=False, pad_id=pad_id(tokenizer))
    return mean_loss(model, batcher.iter_eval())


def evaluate(model, tokenizer, path: str, spec: DataSpec, max_tokens: int, batch_size: int,
             limit: int = 0, with_loss: bool = True,
             progress: Callable[[int, int], None] | None = None,
             schema: dict | None = None) -> Report:
    from macft.data import detect_format, load_rows, prompt_and_reference
    from macft.generation import greedy

    rows = load_rows(path)
    if limit:
        rows = rows[:limit]
    fmt = spec.format if spec.format != "auto" else detect_format(rows, path)
    pairs = [prompt_and_reference(row, fmt, tokenizer, spec) for row in rows]
    prompts = [p for p, _ in pairs]
    references = [r for _, r in pairs]
    model.eval()
    predictions = greedy(model, tokenizer, prompts, max_tokens, batch_size, progress)
    exact, n_json, valid, equal = score(predictions, references)
    loss = data_loss(model, tokenizer, rows, spec, path, 8) if with_loss else None
    records = [{"prompt": tokenizer.decode(p), "reference": r, "prediction": pred,
                "exact": pred.strip() == r.strip()}
               for p, r, pred in zip(prompts, references, predictions)]
    from macft.metrics import task_metrics

    return Report(len(rows), exact, n_json, valid, equal, loss, records,
                  task_metrics(predictions, references, schema))


@dataclass
class PairReport:
    pairs: int
    accuracy: float          # share of pairs whose margin prefers chosen (ties count half)
    mean_margin: float
    against: str             # what the log-probs are compared with

    def lines(self) -> list[str]:
        return [f"pairs         {self.pairs}",
                f"preference accuracy {self.accuracy:.1%}  (margin > 0; {self.against})",
                f"mean margin   {self.mean_margin:.4f}"]


def evaluate_pairs(model, tokenizer, path: str, spec: DataSpec, batch_size: int,
                   has_adapters: bool) -> PairReport:
    """Preference accuracy and mean margin on held-out pairs.

    With adapters, the margin is DPO's implicit reward difference: the policy's log-ratio
    against the base (the same model with its adapters switched off), chosen minus rejected.
    Without adapters there is no reference; the margin is then the difference of the mean
    per-token log-probabilities (length-normalised, so a shorter answer is not favoured just
    for having fewer tokens).
    """
    import numpy as np

    from macft.data import load_rows, pad_id
    from macft.data.preference import PairBatcher, encode_pairs
    from macft.models.adapters import disabled
    from macft.train.objectives.preference import reference_logps

    pairs = encode_pairs(load_rows(path), tokenizer, spec, path).pairs
    batcher = PairBatcher(pairs, batch_size, 0, shuffle=False, pad_id=pad_id(tokenizer))
    pc, pr = reference_logps(model, batcher)
    nc = np.array([max(sum(p.chosen.mask), 1) for p in pairs], dtype=np.float32)
    nr = np.array([max(sum(p.rejected.mask), 1) for p in pairs], dtype=np.float32)
    margin = pc / nc - pr / nr
    against = "mean per-token log-probs, no reference"
    if has_adapters:
        margin = pc - pr
        with disabled(model):
            rc, rr = reference_logps(model, batcher)
        margin = margin - (rc - rr)
        against = "log-ratio vs the base model"
    accuracy = float(np.mean((margin > 0) + 0.5 * (margin == 0)))
    return PairReport(len(pairs), accuracy, float(np.mean(margin)), against)
