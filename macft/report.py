"""`macft compare BASE RUN --data TEST`: one report of what a run changed.

The numbers come from ``macft.evaluation`` (task metrics), ``macft.general`` (forgetting
check) and the run's metrics.jsonl; ``render_markdown`` and ``render_html`` only lay them out.
The HTML page is self-contained: its plots are inline SVG.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field

# saturated colours: anti-aliased text is grey, so no text pixel is mistaken for a plot
TRAIN, VALID, BASE, RUN = "#1f77b4", "#ff7f0e", "#9467bd", "#2ca02c"


@dataclass
class Side:
    name: str
    exact_match: float
    task: dict | None
    records: list[dict]
    general: dict | None = None      # GeneralReport.as_dict()


@dataclass
class Comparison:
    data: str
    base: Side
    run: Side
    train_loss: list[tuple[int, float]] = field(default_factory=list)
    valid_loss: list[tuple[int, float]] = field(default_factory=list)

    def examples(self) -> dict[str, list[tuple[int, dict, dict]]]:
        """Examples fixed by the run, broken by it, and wrong both times (by exact match)."""
        out = {"fixed": [], "broken": [], "still wrong": []}
        for i, (b, r) in enumerate(zip(self.base.records, self.run.records)):
            key = ("fixed" if r["exact"] else "still wrong") if not b["exact"] else \
                ("broken" if not r["exact"] else None)
            if key:
                out[key].append((i + 1, b, r))
        return out


def metric_bars(task: dict | None, exact: float) -> dict[str, float]:
    """The per-field, per-label or per-measure numbers drawn as bars (all in [0, 1])."""
    bars = {"exact match": exact}
    if not task:
        return bars
    kind = task["family"]
    if kind == "json":
        bars["valid JSON"] = task["valid"]
        bars.update({f"{k} F1": v["f1"] for k, v in task["fields"].items() if v["support"]})
    elif kind == "classification":
        bars["accuracy"] = task["accuracy"]
        bars.update({f"{k} F1": v["f1"] for k, v in task["labels"].items()})
    elif kind == "tool_calls":
        bars.update({"function name": task["name_accuracy"],
                     "arguments exact": task["arguments_exact"],
                     "arguments partial": task["arguments_partial"]})
    else:
        bars["ROUGE-L"] = task["rouge_l"]
    return bars


def general_delta(c: Comparison) -> dict | None:
    if not (c.base.general and c.run.general):
        return None
    b, r = c.base.general, c.run.general
    return {"perplexity": (b["perplexity"], r["perplexity"]),
            "accuracy": (b["accuracy"], r["accuracy"])}


# ----- SVG plots -------------------------------------------------------------------------------
def _esc(text) -> str:
    return html.escape(str(text), quote=True)


def line_plot(series: dict[str, tuple[str, list[tuple[int, float]]]], title: str,
              width: int = 640, height: int = 260) -> str:
    pts = [p for _, s in series.values() for p in s]
    left, top, right, bottom = 56, 28, 16, 36
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'role="img" aria-label="{_esc(title)}">',
             f'<rect width="{width}" height="{height}" fill="#ffffff"/>',
             f'<text x="{left}" y="18" font-size="14" font-family="sans-serif">{_esc(title)}'
             f'</text>']
    if pts:
        x0, x1 = min(p[0] for p in pts), max(max(p[0] for p in pts), min(p[0] for p in pts) + 1)
        y0, y1 = min(p[1] for p in pts), max(p[1] for p in pts)
        y1 = y1 if y1 > y0 else y0 + 1

        def xy(x, y):
            return (left + (x - x0) / (x1 - x0) * (width - left - right),
                    top + (1 - (y - y0) / (y1 - y0)) * (height - top - bottom))

        parts.append(f'<line x1="{left}" y1="{height - bottom}" x2="{width - right}" '
                     f'y2="{height - bottom}" stroke="#333"/>')
        for v in (y0, y1):
            _, y = xy(x0, v)
            parts.append(f'<text x="4" y="{y + 4:.1f}" font-size="11" '
                         f'font-family="sans-serif">{v:.3f}</text>')
        for i, (name, (colour, s)) in enumerate(series.items()):
            if not s:
                continue
            path = " ".join(f"{a:.1f},{b:.1f}" for a, b in (xy(x, y) for x, y in s))
            parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="4" '
                         f'points="{path}"/>')
            parts += [f'<circle cx="{a:.1f}" cy="{b:.1f}" r="4" fill="{colour}"/>'
                      for a, b in (xy(x, y) for x, y in s)] if len(s) < 40 else []
            lx = left + 10 + i * 160
            parts.append(f'<rect x="{lx}" y="{height - 16}" width="14" height="10" '
                         f'fill="{colour}"/><text x="{lx + 20}" y="{height - 7}" font-size="12" '
                         f'font-family="sans-serif">{_esc(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def bar_plot(groups: dict[str, tuple[float, float]], title: str, width: int = 640,
             scale: float | None = None) -> str:
    """Pairs of horizontal bars (base purple, run green) per name."""
    row, left, top = 34, 170, 30
    height = top + row * max(len(groups), 1) + 30
    top_value = scale or max([max(a, b) for a, b in groups.values()] + [1e-9])
    span = width - left - 70
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'role="img" aria-label="{_esc(title)}">',
             f'<rect width="{width}" height="{height}" fill="#ffffff"/>',
             f'<text x="8" y="18" font-size="14" font-family="sans-serif">{_esc(title)}</text>']
    for i, (name, (b, r)) in enumerate(groups.items()):
        y = top + i * row
        parts.append(f'<text x="8" y="{y + 18}" font-size="12" font-family="sans-serif">'
                     f'{_esc(name)}</text>')
        for j, (value, colour) in enumerate(((b, BASE), (r, RUN))):
            w = max(span * value / top_value, 1)
            parts.append(f'<rect x="{left}" y="{y + j * 14}" width="{w:.1f}" height="12" '
                         f'fill="{colour}"/><text x="{left + w + 6:.1f}" y="{y + j * 14 + 11}" '
                         f'font-size="11" font-family="sans-serif">{value:.3f}</text>')
    ly = height - 12
    parts.append(f'<rect x="{left}" y="{ly - 10}" width="14" height="10" fill="{BASE}"/>'
                 f'<text x="{left + 20}" y="{ly}" font-size="12" font-family="sans-serif">base'
                 f'</text><rect x="{left + 80}" y="{ly - 10}" width="14" height="10" '
                 f'fill="{RUN}"/><text x="{left + 100}" y="{ly}" font-size="12" '
                 f'font-family="sans-serif">run</text>')
    parts.append("</svg>")
    return "".join(parts)


# ----- documents -------------------------------------------------------------------------------
def _pairs(c: Comparison) -> dict[str, tuple[float, float]]:
    b = metric_bars(c.base.task, c.base.exact_match)
    r = metric_bars(c.run.task, c.run.exact_match)
    return {k: (b.get(k, 0.0), r.get(k, 0.0)) for k in dict.fromkeys([*b, *r])}


def render_markdown(c: Comparison, limit: int = 10) -> str:
    out = [f"# {c.run.name} vs {c.base.name} on {c.data}", "",
           "| metric | base | run | change |", "| --- | ---: | ---: | ---: |"]
    out += [f"| {k} | {b:.3f} | {r:.3f} | {r - b:+.3f} |" for k, (b, r) in _pairs(c).items()]
    delta = general_delta(c)
    if delta:
        (bp, rp), (ba, ra) = delta["perplexity"], delta["accuracy"]
        out += ["", "General skill (forgetting check, macft's general set):", "",
                "| measure | base | run | change |", "| --- | ---: | ---: | ---: |",
                f"| perplexity | {bp:.3f} | {rp:.3f} | {(rp / bp - 1):+.1%} |",
                f"| questions correct | {ba:.1%} | {ra:.1%} | {(ra - ba) * 100:+.1f} points |"]
    if c.valid_loss or c.train_loss:
        last_t = c.train_loss[-1][1] if c.train_loss else float("nan")
        best_v = min(v for _, v in c.valid_loss) if c.valid_loss else float("nan")
        out += ["", f"Training: last train loss {last_t:.4f}, best validation loss "
                    f"{best_v:.4f} ({len(c.train_loss)} steps)."]
    for name, items in c.examples().items():
        out += ["", f"## {name} ({len(items)})", ""]
        for n, b, r in items[:limit]:
            out += [f"- example {n}: reference `{_one(b['reference'])}`; base "
                    f"`{_one(b['prediction'])}`; run `{_one(r['prediction'])}`"]
    return "\n".join(out) + "\n"


def _one(text: str, width: int = 120) -> str:
    s = " ".join(str(text).split()).replace("`", "'")
    return s if len(s) <= width else s[:width - 1] + "…"


def render_html(c: Comparison, limit: int = 20) -> str:
    plots = [line_plot({"train loss": (TRAIN, c.train_loss), "validation loss":
                        (VALID, c.valid_loss)}, "loss during training"),
             bar_plot(_pairs(c), "task metrics: base vs run", scale=1.0)]
    delta = general_delta(c)
    if delta:
        plots.append(bar_plot({"perplexity": delta["perplexity"]},
                              "general perplexity (lower is better)"))
        plots.append(bar_plot({"questions correct": delta["accuracy"]},
                              "general questions (higher is better)", scale=1.0))
    rows = "".join(f"<tr><td>{_esc(k)}</td><td>{b:.3f}</td><td>{r:.3f}</td>"
                   f"<td>{r - b:+.3f}</td></tr>" for k, (b, r) in _pairs(c).items())
    sections = []
    for name, items in c.examples().items():
        trs = "".join(f"<tr><td>{n}</td><td>{_esc(_one(b['reference']))}</td>"
                      f"<td>{_esc(_one(b['prediction']))}</td>"
                      f"<td>{_esc(_one(r['prediction']))}</td></tr>" for n, b, r in items[:limit])
        sections.append(f"<h2>{_esc(name)} ({len(items)})</h2><table><tr><th>#</th>"
                        f"<th>reference</th><th>base</th><th>run</th></tr>{trs}</table>")
    style = ("body{font-family:sans-serif;margin:16px;max-width:1100px}"
             ".plots{display:flex;flex-wrap:wrap;gap:12px}"
             "table{border-collapse:collapse;margin:8px 0}"
             "td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{_esc(c.run.name)} vs "
            f"{_esc(c.base.name)}</title><style>{style}</style></head><body>"
            f"<h1>{_esc(c.run.name)} vs {_esc(c.base.name)}</h1>"
            f"<div class='plots'>{''.join(plots)}</div>"
            f"<table><tr><th>metric</th><th>base</th><th>run</th><th>change</th></tr>{rows}"
            f"</table>{''.join(sections)}</body></html>\n")


def summary_lines(c: Comparison) -> list[str]:
    """The numbers in a few text lines: what the CLI prints and the TUI's Compare screen shows."""
    out = [f"{'metric':<24} {'base':>8} {'run':>8} {'change':>8}"]
    out += [f"{k:<24} {b:>8.3f} {r:>8.3f} {r - b:>+8.3f}" for k, (b, r) in _pairs(c).items()]
    delta = general_delta(c)
    if delta:
        (bp, rp), (ba, ra) = delta["perplexity"], delta["accuracy"]
        out.append(f"{'general perplexity':<24} {bp:>8.3f} {rp:>8.3f} {rp / bp - 1:>+8.1%}")
        out.append(f"{'general questions':<24} {ba:>8.1%} {ra:>8.1%} {(ra - ba) * 100:>+7.1f}pt")
    ex = c.examples()
    out.append(", ".join(f"{k} {len(v)}" for k, v in ex.items()))
    return out


def saved_lines(run_dir) -> list[str]:
    """The summary of the last `macft compare` of a run (RUN/compare/report.json), if any."""
    from pathlib import Path

    p = Path(run_dir) / "compare" / "report.json"
    try:
        return list(json.loads(p.read_text())["lines"])
    except (OSError, ValueError, KeyError):
        return []


# ----- gathering the numbers -------------------------------------------------------------------
def losses(run_dir: str) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    from pathlib import Path

    from macft.events import read_metrics

    events = read_metrics(Path(run_dir) / "metrics.jsonl")
    train = [(e["step"], e["loss"]) for e in events if e.get("event") == "Step"]
    valid = [(e["step"], e["val_loss"]) for e in events if e.get("event") == "Eval"]
    return train, valid


def measure(target: str, data: str, max_tokens: int, batch: int, limit: int, general: bool,
            progress=None, schema=None) -> Side:
    from macft.evaluation import evaluate
    from macft.general import evaluate_general
    from macft.models.load import load_for_inference
    from macft.recipe import DataSpec

    loaded, recipe = load_for_inference(target)
    spec = recipe.data if recipe else DataSpec()
    rep = evaluate(loaded.model, loaded.tokenizer, data, spec, max_tokens, batch, limit,
                   False, progress, schema)
    gen = evaluate_general(loaded.model, loaded.tokenizer, batch, progress).as_dict() \
        if general else None
    return Side(target, rep.exact_match, rep.task, rep.records, gen)


def add_parser(sub, common) -> None:
    cp = sub.add_parser("compare", parents=[common],
                        help="a base model vs a run on a test set: Markdown + HTML report")
    cp.add_argument("base", help="base model (folder, hub id, .gguf or alias)")
    cp.add_argument("run", help="run folder")
    cp.add_argument("--data", required=True, help="test JSONL (chat or completions)")
    cp.add_argument("--out", help="report folder (default: RUN/compare)")
    cp.add_argument("--schema", help="JSON Schema file for the schema-valid rate")
    cp.add_argument("--max-tokens", type=int, help="longest answer (default: recipe eval)")
    cp.add_argument("--batch-size", type=int, help="prompts generated together")
    cp.add_argument("--limit", type=int, default=0, help="only the first N examples")
    cp.add_argument("--no-general", action="store_true", help="skip the forgetting check")


def run_compare(args, say) -> int:
    import sys
    from pathlib import Path

    from macft.errors import MacftError
    from macft.metrics import read_schema
    from macft.models.load import is_run_dir
    from macft.recipe import EvalSpec

    if not is_run_dir(args.run):
        raise MacftError(f"{args.run}: not a run folder (no recipe.yaml)")
    from macft.data import load_rows

    load_rows(args.data)   # a malformed row is reported (file:line) before any model loads
    schema = read_schema(args.schema)
    ev = EvalSpec()
    max_tokens, batch = args.max_tokens or ev.max_tokens, args.batch_size or ev.batch_size

    def progress(done, total):
        print(f"\rgenerating {done}/{total}", end="", file=sys.stderr, flush=True)

    sides = []
    for target in (args.base, args.run):
        say(f"evaluating {target} ...")
        sides.append(measure(target, args.data, max_tokens, batch, args.limit,
                             not args.no_general, progress, schema))
        print(file=sys.stderr)
    train, valid = losses(args.run)
    c = Comparison(args.data, sides[0], sides[1], train, valid)
    out = Path(args.out) if args.out else Path(args.run) / "compare"
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(render_markdown(c))
    (out / "report.html").write_text(render_html(c))
    numbers = {"data": c.data, "base": c.base.name, "run": c.run.name, "metrics": _pairs(c),
               "general": general_delta(c), "lines": summary_lines(c),
               "examples": {k: [n for n, *_ in v] for k, v in c.examples().items()}}
    (out / "report.json").write_text(json.dumps(numbers, indent=1) + "\n")
    for line in numbers["lines"]:
        say(line)
    say(f"report: {out / 'report.md'} and {out / 'report.html'}")
    return 0
