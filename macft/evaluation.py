"""`macft eval`: greedy answers on a data set's prompts, exact match, JSON validity, loss."""

from __future__ import annotations

import json
import re
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


def style_match(answer: str, chosen: str, style: re.Pattern | None = None) -> bool:
    """Whether a generated answer takes the chosen answers' style.

    With ``style`` (a regular expression): it matches somewhere in the stripped answer
    (``re.search``; anchor it with ``^``/``$``). Without: the answer opens with the same first
    three words as the pair's chosen answer, the check the README's DPO table makes.
    """
    if style is not None:
        return style.search(answer.strip()) is not None
    return answer.split()[:3] == chosen.split()[:3]


def compile_style(pattern: str | None) -> re.Pattern | None:
    from macft.errors import MacftError

    if pattern is None:
        return None
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise MacftError(f"--style: not a regular expression: {exc}") from None


@dataclass
class PairReport:
    pairs: int
    accuracy: float          # share of pairs whose margin prefers chosen (ties count half)
    mean_margin: float
    against: str             # what the log-probs are compared with
    style: float | None = None          # share of greedy answers in the chosen style
    style_rule: str = ""
    exact_chosen: float | None = None   # share of greedy answers equal to the chosen one
    records: list[dict] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"pairs         {self.pairs}",
               f"preference accuracy {self.accuracy:.1%}  (margin > 0; {self.against})",
               f"mean margin   {self.mean_margin:.4f}"]
        if self.style is not None:
            out += [f"chosen style  {self.style:.1%}  (greedy answers; {self.style_rule})",
                    f"= chosen      {self.exact_chosen:.1%}  (greedy answer is the chosen one)"]
        return out


def evaluate_pairs(model, tokenizer, path: str, spec: DataSpec, batch_size: int,
                   has_adapters: bool, max_tokens: int = 0, style: re.Pattern | None = None,
                   generate_batch: int = 32) -> PairReport:
    """Preference accuracy and mean margin on held-out pairs, and with ``max_tokens`` > 0 how
    often the greedy answer to each pair's prompt takes the chosen style (``style_match``).

    With adapters, the margin is DPO's implicit reward difference: the policy's log-ratio
    against the base (the same model with its adapters switched off), chosen minus rejected.
    Without adapters there is no reference; the margin is then the difference of the mean
    per-token log-probabilities (length-normalised, so a shorter answer is not favoured just
    for having fewer tokens). The margin says nothing about what the model generates: a run
    can reach 100% accuracy by pushing the rejected answers down while its answers never take
    the chosen form, which is why the generations are checked too.
    """
    import numpy as np

    from macft.data import load_rows, pad_id
    from macft.data.preference import PairBatcher, encode_pairs
    from macft.models.adapters import disabled
    from macft.train.objectives.preference import reference_logps

    rows = load_rows(path)
    pairs = encode_pairs(rows, tokenizer, spec, path).pairs
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
    report = PairReport(len(pairs), accuracy, float(np.mean(margin)), against)
    if max_tokens > 0:
        _pair_generations(report, model, tokenizer, rows, spec, max_tokens, style,
                          generate_batch)
    return report


def _pair_generations(report, model, tokenizer, rows, spec, max_tokens, style, batch) -> None:
    from macft.data.preference import pair_prompt
    from macft.generation import greedy

    prompts, chosen = zip(*(pair_prompt(row, tokenizer, spec) for row in rows))
    answers = greedy(model, tokenizer, list(prompts), max_tokens, batch)
    hits = [style_match(a, c, style) for a, c in zip(answers, chosen)]
    report.style = sum(hits) / len(hits)
    report.style_rule = (f"matches /{style.pattern}/" if style is not None
                         else "opens with the chosen answer's first three words")
    report.exact_chosen = sum(a.strip() == c.strip() for a, c in zip(answers, chosen)) / len(hits)
    report.records = [{"prompt": tokenizer.decode(p), "chosen": c, "prediction": a,
                       "style": h} for p, c, a, h in zip(prompts, chosen, answers, hits)]


# ----- a run's base vs tuned on its recipe's test split (the TUI's Evaluate) --------------------
@dataclass
class RunScore:
    test: str                 # the recipe's data.test
    max_tokens: int
    base: Report
    tuned: Report

    def record(self) -> dict:
        """What ``score.json`` keeps (the records stay out: they are in the screen)."""
        def side(r: Report) -> dict:
            return {"examples": r.examples, "exact_match": r.exact_match,
                    "json_references": r.json_references, "valid_json": r.valid_json,
                    "json_equal": r.json_equal, "task": r.task}

        return {"test": self.test, "max_tokens": self.max_tokens,
                "base": side(self.base), "tuned": side(self.tuned)}


def evaluate_run(run_dir, progress: Callable[[str, int, int], None] | None = None,
                 say: Callable[[str], None] | None = None) -> RunScore:
    """The run's base model and the tuned run, each scored by ``evaluate`` on the recipe's
    ``data.test`` with the recipe's data and eval settings (the prompts ``macft eval RUN`` builds),
    one model in memory at a time; the result is stored in the run folder (``runs.SCORE``)."""
    from pathlib import Path

    from macft import recipe as recipe_mod, runs
    from macft.errors import MacftError
    from macft.models.load import load_for_inference, load_spec

    run_dir = Path(run_dir)
    recipe_file = runs.recipe_path(run_dir)
    recipe = recipe_mod.load(recipe_file, [f"output={run_dir}"])
    test = recipe.data.test
    if not test:
        raise MacftError(f"{recipe_file}: data.test is not set; add a test split to evaluate")
    if not Path(test).exists():
        raise MacftError(f"{recipe_file}: data.test: {test}: file not found")
    say = say or (lambda text: None)
    reports = {}
    for side in ("base", "tuned"):
        say(f"loading the {side} model…")
        if side == "base":
            loaded = load_spec(recipe.model, local_only=True)
            loaded.model.eval()
            spec, ev = recipe.data, recipe.eval
        else:
            loaded, tuned_recipe = load_for_inference(str(run_dir))
            spec, ev = tuned_recipe.data, tuned_recipe.eval
        reports[side] = evaluate(loaded.model, loaded.tokenizer, test, spec, ev.max_tokens,
                                 ev.batch_size, 0, False,
                                 (lambda d, t, s=side: progress(s, d, t)) if progress else None)
        del loaded
    score = RunScore(test, recipe.eval.max_tokens, reports["base"], reports["tuned"])
    runs.write_score(run_dir, score.record())
    return score
