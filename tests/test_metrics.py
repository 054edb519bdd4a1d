"""Task metrics with hand-computed expected values (empty predictions and malformed JSON too)."""

from __future__ import annotations

import json

import pytest

from macft.metrics import (classification_metrics, family, json_metrics, lines, rouge_l,
                           task_metrics, text_metrics, tool_call_metrics)

J = json.dumps


def test_json_metrics_per_field():
    refs = [J({"name": "Ada", "city": "London"}), J({"name": "Bo", "city": "Paris"}),
            J({"name": "Cy", "city": "Rome"}), J({"name": "Di", "city": "Oslo"})]
    preds = [J({"city": "London", "name": "Ada"}), J({"name": "Bo", "city": "Lyon", "zip": "1"}),
             "", '{"name": "Di", ']                      # empty and malformed
    m = json_metrics(preds, refs)
    assert m["valid"] == 0.5 and m["exact"] == 0.25
    name, city, zip_ = m["fields"]["name"], m["fields"]["city"], m["fields"]["zip"]
    assert (name["precision"], name["recall"]) == (1.0, 0.5)
    assert name["f1"] == pytest.approx(2 / 3) and name["accuracy"] == 0.5
    assert (city["precision"], city["recall"], city["accuracy"]) == (0.5, 0.25, 0.25)
    assert city["f1"] == pytest.approx(1 / 3)
    assert (zip_["precision"], zip_["recall"], zip_["support"]) == (0.0, 0.0, 0)
    assert m["micro"]["precision"] == pytest.approx(3 / 5)
    assert m["micro"]["recall"] == pytest.approx(3 / 8)
    assert m["micro"]["f1"] == pytest.approx(6 / 13)


def test_json_schema_valid_rate():
    schema = {"type": "object", "required": ["name", "city"], "additionalProperties": False,
              "properties": {"name": {"type": "string"}, "city": {"type": "string"}}}
    refs = [J({"name": "A", "city": "B"})] * 4
    preds = [J({"name": "A", "city": "B"}), J({"name": "A", "city": "B", "zip": 1}),
             J({"name": 3, "city": "B"}), "not json"]
    assert json_metrics(preds, refs, schema)["schema_valid"] == 0.25


def test_classification_metrics_and_confusion():
    refs = ["pos", "pos", "neg", "neg", "neu"]
    preds = ["pos", "neg", "neg", "", "neu "]
    m = classification_metrics(preds, refs)
    assert m["accuracy"] == pytest.approx(0.6)
    pos, neg, neu = (m["labels"][k] for k in ("pos", "neg", "neu"))
    assert (pos["precision"], pos["recall"]) == (1.0, 0.5)
    assert pos["f1"] == pytest.approx(2 / 3)
    assert (neg["precision"], neg["recall"], neg["f1"]) == (0.5, 0.5, 0.5)
    assert (neu["precision"], neu["recall"], neu["f1"]) == (1.0, 1.0, 1.0)
    assert m["macro_f1"] == pytest.approx(13 / 18)
    assert m["confusion"] == {"neg": {"neg": 1, "neu": 0, "pos": 0, "<other>": 1},
                              "neu": {"neg": 0, "neu": 1, "pos": 0, "<other>": 0},
                              "pos": {"neg": 1, "neu": 0, "pos": 1, "<other>": 0}}


def test_tool_call_metrics():
    refs = [J({"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}),
            J({"name": "add", "arguments": {"a": 1, "b": 2}}),
            J({"name": "search", "arguments": {"q": "x"}}),
            J({"name": "add", "arguments": {"a": 3, "b": 4}})]
    preds = [J({"name": "get_weather", "arguments": {"unit": "c", "city": "Paris"}}),
             J({"name": "add", "arguments": {"a": 1, "b": 5}}),
             J({"name": "lookup", "arguments": {"q": "x"}}),
             '{"name": "add", "arguments": {"a": 3,']
    m = tool_call_metrics(preds, refs)
    assert (m["name_accuracy"], m["arguments_exact"], m["arguments_partial"]) == \
        (0.5, 0.25, 0.375)


def test_rouge_l():
    assert rouge_l("the cat sat on the mat", "the cat is on the mat") == pytest.approx(5 / 6)
    assert rouge_l("", "abc") == 0.0
    assert rouge_l("a b c d", "d c b a") == pytest.approx(0.25)    # LCS 1 of 4 both ways
    m = text_metrics(["the cat sat on the mat", ""], ["the cat is on the mat", "abc"])
    assert m["rouge_l"] == pytest.approx(5 / 12)


def test_family_is_chosen_from_the_references():
    call = J({"name": "f", "arguments": {"x": 1}})
    assert family([call, J({"tool_calls": [{"name": "g", "arguments": {}}]})]) == "tool_calls"
    assert family([J({"a": 1}), J({"b": 2})]) == "json"
    assert family(["yes", "no", "yes", "no", "yes"]) == "classification"
    assert family(["a sentence here", "another one", "third"]) == "text"
    assert task_metrics([], []) is None


def test_lines_name_the_numbers():
    m = task_metrics(["pos", "neg", "pos", "neg"], ["pos", "neg", "neg", "neg"])
    out = "\n".join(lines(m))
    assert "accuracy 75.0% · macro-F1 0.733" in out     # pos: 2/3 F1, neg: 0.8 F1
    assert "pos            P 0.500 R 1.000 F1 0.667 (n=1)" in out
