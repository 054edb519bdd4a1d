"""The forgetting check: the shipped general set, `macft eval --general` and the training guard."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
from test_train import make_recipe, workdir  # noqa: F401  (the fixture)

from macft.cli import main
from macft.events import Collect, Eval
from macft.general import QUESTIONS, correct, questions, text_windows
from macft.train.loop import train

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_questions_are_what_the_generator_writes_and_checkable():
    spec = importlib.util.spec_from_file_location("gen", ROOT / "scripts" /
                                                  "make_general_set.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    expected = [(k, q, a) for k, q, a in gen.questions()]
    rows = questions()
    assert [(r["kind"], r["messages"][0]["content"], r["messages"][1]["content"])
            for r in rows] == expected
    assert len(rows) >= 200
    assert all(correct(r["messages"][1]["content"], r["messages"][1]["content"]) for r in rows)


def test_correct_needs_the_answer_as_whole_words_near_the_start():
    assert correct("The capital of France is Paris.", "Paris")
    assert correct("12", "12") and not correct("112", "12") and not correct("1 2", "12")
    assert correct("buenos aires, of course", "Buenos Aires")
    assert not correct(" ".join(["word"] * 12) + " Paris", "Paris")
    assert not correct("", "Paris")


def test_eval_general_prints_perplexity_and_accuracy(tiny_model_dir, capsys):
    assert main(["eval", str(tiny_model_dir), "--general", "--batch-size", "64"]) == 0
    out = capsys.readouterr().out
    ppl = float(out.split("general perplexity")[1].split()[0])
    assert 1 < ppl < 10_000 and math.isfinite(ppl)
    assert f"of {len(questions())}" in out and "capital" in out


def test_guard_stops_a_run_whose_learning_rate_is_far_too_high(workdir):  # noqa: F811
    recipe = make_recipe(workdir, "run-forget", method="full", train__steps=30,
                         train__learning_rate=0.5, train__eval_every=2, train__save_every=0,
                         train__general_max_rise=0.2)
    sink = Collect()
    done = train(recipe, [sink])
    evals = sink.of(Eval)
    assert done.reason == "early_stopping" and done.step < 30
    last = evals[-1].metrics
    assert last["general_over"] is True
    assert last["general_perplexity"] > 1.2 * last["general_baseline"]
    assert all(not e.metrics["general_over"] for e in evals[:-1])
    assert all(not e.improved for e in evals if e.metrics["general_over"])


def test_guard_stays_quiet_on_a_gentle_run_and_keep_best_trains_on(workdir):  # noqa: F811
    gentle = make_recipe(workdir, "run-gentle", train__steps=4, train__learning_rate=1e-4,
                         train__eval_every=2, train__save_every=0, train__general_max_rise=0.2)
    sink = Collect()
    assert train(gentle, [sink]).reason == "completed"
    assert [e.metrics["general_over"] for e in sink.of(Eval)] == [False, False]
    wild = make_recipe(workdir, "run-keep", method="full", train__steps=12,
                       train__learning_rate=0.5, train__eval_every=2, train__save_every=0,
                       train__general_max_rise=0.2, train__general_action="keep_best")
    sink = Collect()
    done = train(wild, [sink])
    assert done.reason == "completed" and done.step == 12
    evals = sink.of(Eval)
    assert any(e.metrics["general_over"] for e in evals)
    assert all(not e.improved for e in evals if e.metrics["general_over"])


def test_text_windows_overlap_by_one_token(tiny_model_dir):
    from macft.dataprep.tokens import load_tokenizer
    from macft.recipe import ModelSpec

    tok = load_tokenizer(ModelSpec(path=str(tiny_model_dir)))
    w = text_windows(tok, 16)
    assert all(len(x) == 17 for x in w) and w[0][16] == w[1][0]
    assert QUESTIONS.exists()
    json.loads(QUESTIONS.read_text().splitlines()[0])


def test_the_console_says_when_the_forgetting_bound_is_passed():
    import io

    from macft.events import ConsoleProgress

    out = io.StringIO()
    sink = ConsoleProgress(stream=out)
    sink(Eval(10, 19.9193, None, False, {"general_perplexity": 1.8e10, "general_baseline": 24.74,
                                          "general_over": True}))
    sink(Eval(20, 0.5, 0.5, True, {"general_perplexity": 25.1, "general_baseline": 24.74,
                                   "general_over": False}))
    assert out.getvalue().splitlines() == [
        "step 10: val loss 19.9193, general perplexity 1.8e+10 (base 24.74, past the forgetting "
        "bound)",
        "step 20: val loss 0.5000, general perplexity 25.1 (base 24.74) (best)"]
