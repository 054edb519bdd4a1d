"""`macft eval`: scoring rules and the predictions file."""

from __future__ import annotations

import json

import pytest

from macft.cli import main
from macft.evaluation import score


def test_score_exact_match_and_json_rates():
    refs = ['{"a": 1}', "plain", '{"a": 1, "b": [2]}', '{"a": 1}']
    preds = ['{"a": 1}\n', "plain ", '{"b": [2], "a": 1}', "not json"]
    exact, n_json, valid, equal = score(preds, refs)
    assert exact == 0.5                 # trailing whitespace is ignored, key order is not
    assert n_json == 3
    assert valid == pytest.approx(2 / 3)
    assert equal == pytest.approx(2 / 3)


def test_eval_command_writes_one_line_per_example(tiny_model_dir, tmp_path, capsys):
    data = tmp_path / "test.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"hello {i}"},
                          {"role": "assistant", "content": f"world {i}"}]} for i in range(5)]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "preds.jsonl"
    code = main(["eval", str(tiny_model_dir), "--data", str(data), "--out", str(out),
                 "--max-tokens", "4", "--batch-size", "2"])
    assert code == 0
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["reference"] for x in lines] == [f"world {i}" for i in range(5)]
    assert all(x["prompt"].endswith("<|im_start|>assistant\n") for x in lines)
    assert all(f"hello {i}" in x["prompt"] for i, x in enumerate(lines))
    printed = capsys.readouterr().out
    share = sum(x["exact"] for x in lines) / 5
    assert f"exact match   {share:.1%}" in printed
    assert "examples      5" in printed and "loss          " in printed
