"""`macft compare`: the numbers, the Markdown, and the HTML page rendered in headless Chromium."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest
from test_train import make_recipe, workdir  # noqa: F401  (the fixture)

from macft.cli import main
from macft.report import BASE, RUN, TRAIN, VALID, Comparison, Side, render_html, render_markdown
from macft.train.loop import train


def _rec(ref, pred):
    return {"prompt": "p", "reference": ref, "prediction": pred, "exact": ref == pred}


def small_comparison() -> Comparison:
    refs = ["a", "b", "c", "d"]
    base = Side("base", 0.25, None, [_rec(r, p) for r, p in zip(refs, ["a", "x", "c", "y"])],
                {"perplexity": 10.0, "accuracy": 0.5})
    run = Side("run", 0.5, None, [_rec(r, p) for r, p in zip(refs, ["a", "b", "z", "w"])],
               {"perplexity": 12.5, "accuracy": 0.4})
    return Comparison("test.jsonl", base, run, [(1, 3.0), (2, 2.0), (3, 1.5)], [(2, 2.2)])


def test_examples_fixed_broken_still_wrong_and_the_markdown_numbers():
    c = small_comparison()
    ex = c.examples()
    assert [n for n, *_ in ex["fixed"]] == [2]
    assert [n for n, *_ in ex["broken"]] == [3]
    assert [n for n, *_ in ex["still wrong"]] == [4]
    md = render_markdown(c)
    assert "| exact match | 0.250 | 0.500 | +0.250 |" in md
    assert "| perplexity | 10.000 | 12.500 | +25.0% |" in md
    assert "| questions correct | 50.0% | 40.0% | -10.0 points |" in md


@pytest.fixture(scope="module")
def compared(workdir, tmp_path_factory):  # noqa: F811
    recipe = make_recipe(workdir, "run-compare", train__steps=6, train__eval_every=2,
                         train__save_every=0)
    train(recipe, [])
    out = tmp_path_factory.mktemp("report")
    code = main(["compare", str(workdir / "model"), recipe.output, "--data",
                 str(workdir / "valid.jsonl"), "--out", str(out), "--max-tokens", "6",
                 "--batch-size", "64"])
    assert code == 0
    return out, recipe


def test_compare_writes_markdown_and_html_with_the_runs_losses(compared):
    out, recipe = compared
    md = (out / "report.md").read_text()
    assert "| exact match |" in md and "| ROUGE-L |" in md and "| perplexity |" in md
    page = (out / "report.html").read_text()
    assert page.count("<svg") == 4 and "<img" not in page and "http" not in page.split(
        "xmlns")[0]
    logged = [json.loads(x) for x in (Path(recipe.output) / "metrics.jsonl").read_text()
              .splitlines()]
    steps = [e for e in logged if e["event"] == "Step"]
    assert f"last train loss {steps[-1]['loss']:.4f}" in md


def read_png(path: Path) -> np.ndarray:
    """RGB(A) pixels of an 8-bit non-interlaced PNG (what Chromium writes)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", chunk)
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + n
    width, height, depth, colour, _, _, interlace = header
    assert depth == 8 and interlace == 0 and colour in (2, 6)
    bpp = 3 if colour == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * bpp
    out = np.zeros((height, stride), dtype=np.uint8)
    prev = np.zeros(stride, dtype=np.int32)
    for y in range(height):
        f = raw[y * (stride + 1)]
        line = np.frombuffer(raw, np.uint8, stride, y * (stride + 1) + 1).astype(np.int32)
        if f == 0:
            cur = line
        elif f == 2:
            cur = (line + prev) % 256
        else:
            cur = line.copy()
            for x in range(stride):
                a = cur[x - bpp] if x >= bpp else 0
                b = prev[x]
                if f == 1:
                    cur[x] = (cur[x] + a) % 256
                elif f == 3:
                    cur[x] = (cur[x] + (a + b) // 2) % 256
                else:
                    c = prev[x - bpp] if x >= bpp else 0
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    pred = a if pa <= pb and pa <= pc else b if pb <= pc else c
                    cur[x] = (cur[x] + pred) % 256
        out[y] = cur
        prev = cur
    return out.reshape(height, width, bpp)[..., :3]


def colour_pixels(pixels: np.ndarray, hex_colour: str) -> int:
    rgb = np.array([int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(pixels.astype(int) - rgb).sum(-1) <= 24).sum())


def screenshot(page: Path, png: Path) -> np.ndarray:
    subprocess.run([shutil.which("chromium"), "--headless", "--no-sandbox", "--disable-gpu",
                    "--hide-scrollbars", f"--screenshot={png}", "--window-size=1000,700",
                    page.as_uri()], check=True, capture_output=True, timeout=120)
    return read_png(png)


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Chromium is not installed")
def test_html_report_shows_its_plots_in_headless_chromium(compared, tmp_path):
    out, _ = compared
    pixels = screenshot(out / "report.html", tmp_path / "shot.png")
    counts = {name: colour_pixels(pixels, c) for name, c in
              (("train", TRAIN), ("valid", VALID), ("base", BASE), ("run", RUN))}
    assert all(n > 150 for n in counts.values()), counts
    # the same page without its plots: none of the plot colours is on screen
    page = (out / "report.html").read_text()
    bare = tmp_path / "bare.html"
    start, end = page.index("<div class='plots'>"), page.index("</div>")
    bare.write_text(page[:start] + page[end + 6:])
    pixels = screenshot(bare, tmp_path / "bare.png")
    assert all(colour_pixels(pixels, c) == 0 for c in (TRAIN, VALID, BASE, RUN))


def test_tui_compare_screen_shows_the_reports_numbers(compared, tmp_path):
    out, recipe = compared
    from macft.report import saved_lines

    run_dir = Path(recipe.output)
    (run_dir / "compare").mkdir(exist_ok=True)
    shutil.copy(out / "report.json", run_dir / "compare" / "report.json")
    lines = saved_lines(run_dir)
    saved = json.loads((out / "report.json").read_text())
    assert lines == saved["lines"] and lines[0].split() == ["metric", "base", "run", "change"]
    b, r = saved["metrics"]["exact match"]
    assert lines[1].split() == ["exact", "match", f"{b:.3f}", f"{r:.3f}", f"{r - b:+.3f}"]
    assert saved_lines(tmp_path) == []


def test_compare_bad_input_is_one_line_exit_2(compared, tmp_path, capsys):
    _, recipe = compared
    bad = tmp_path / "test.jsonl"
    bad.write_text('{"text": "a"}\n{"text": \n')
    assert main(["compare", "base", recipe.output, "--data", str(bad)]) == 2
    assert capsys.readouterr().err.strip() == \
        f"macft: error: {bad}:2: invalid JSON (Expecting value)"
    schema = tmp_path / "s.json"
    schema.write_text('{"type": "object",\n "required": 3}')
    good = tmp_path / "ok.jsonl"
    good.write_text('{"text": "a"}\n')
    assert main(["compare", "base", recipe.output, "--data", str(good), "--schema",
                 str(schema)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"macft: error: {schema}: not a valid JSON Schema (") and "\n" not in err
    assert main(["compare", "base", str(tmp_path), "--data", str(good)]) == 2
    assert "not a run folder" in capsys.readouterr().err
