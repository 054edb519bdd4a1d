"""SVG snapshots of the main screens at 120x36 and 80x24, compared with reviewed files in
snapshots/ (NAME-WxH.svg).

Regenerate after a deliberate change with ``MACFT_UPDATE_SNAPSHOTS=1 pytest
tests/test_tui_snapshots.py`` and review the SVGs (open them in a browser) before committing.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

import macft  # noqa: F401
from test_tui_support import run, wait_for, write_chat_rows
from textual.widgets import Input

from macft import recipe as recipe_mod
from macft.tui.app import MacftApp

SNAPSHOTS = Path(__file__).parent / "snapshots"
UPDATE = os.environ.get("MACFT_UPDATE_SNAPSHOTS") == "1"
SIZES = [(120, 36), (80, 24)]
sizes = pytest.mark.parametrize("size", SIZES, ids=[f"{w}x{h}" for w, h in SIZES])


def normalise(svg: str, root: Path) -> str:
    """Drop what changes between machines and runs: Rich's per-export ids and tmp paths."""
    svg = re.sub(r"terminal-\d+", "terminal", svg)
    return svg.replace(str(root.resolve()), "ROOT").replace(str(root), "ROOT")


def check(name: str, svg: str, tmp_path: Path, size: tuple[int, int]) -> None:
    name = f"{name}-{size[0]}x{size[1]}"
    expected = SNAPSHOTS / f"{name}.svg"
    if UPDATE:
        SNAPSHOTS.mkdir(exist_ok=True)
        expected.write_text(svg)
        return
    assert expected.exists(), f"{expected} is missing; run with MACFT_UPDATE_SNAPSHOTS=1"
    if svg != expected.read_text():
        actual = tmp_path / f"{name}.svg"
        actual.write_text(svg)
        raise AssertionError(f"{name}: the screen changed; compare {actual} with {expected} "
                             "and regenerate with MACFT_UPDATE_SNAPSHOTS=1 if it is right")


def fake_run(root: Path, name: str, steps: int, total: int, reason: str, mtime: float) -> None:
    """A run folder with a hand-written, fully deterministic history."""
    run_dir = root / "runs" / name
    run_dir.mkdir(parents=True)
    recipe = recipe_mod.from_dict({"name": name, "model": "tiny-llama", "method": "lora",
                                   "data": {"train": "train.jsonl", "valid": "valid.jsonl"},
                                   "train": {"steps": total, "eval_every": 10}})
    recipe_mod.dump(recipe, run_dir / "recipe.yaml")
    events = [dict(event="RunStarted", run_dir=f"runs/{name}", model="tiny-llama",
                   method="lora", device="cpu", dtype="float32", blas="openblas",
                   total_steps=total, start_step=0, trainable_params=32768,
                   total_params=127296, train_examples=24, data_stats={})]
    best = None
    for n in range(1, steps + 1):
        loss = 3.0 * 0.97 ** n + 0.2 * ((n * 7) % 5) / 5
        events.append(dict(event="Step", step=n, total_steps=total, loss=loss,
                           learning_rate=1e-3 * (1 - n / total), tokens=400,
                           tokens_per_sec=2000.0, elapsed=0.5 * n, eta=0.5 * (total - n),
                           peak_memory_gb=0.25, epoch=n / 12))
        if n % 10 == 0:
            val = 3.1 * 0.97 ** n
            best = min(best or val, val)
            events.append(dict(event="Eval", step=n, val_loss=val, best_val_loss=best,
                               improved=val == best))
            events.append(dict(event="Checkpoint", step=n, path=f"runs/{name}/best",
                               best=True))
    events.append(dict(event="Sample", step=steps, prompt="Order from Ada: 2 x lamp",
                       text='{"customer": "Ada", "item": "lamp", "quantity": 2}'))
    events.append(dict(event="Checkpoint", step=steps,
                       path=f"runs/{name}/checkpoints/step-{steps:07d}", best=False))
    events.append(dict(event="Finished", step=steps, reason=reason, best_val_loss=best,
                       adapter_path=f"runs/{name}", elapsed=0.5 * steps))
    metrics = run_dir / "metrics.jsonl"
    metrics.write_text("".join(json.dumps(dict(e, time=0.0)) + "\n" for e in events))
    os.utime(metrics, (mtime, mtime))


@pytest.fixture
def project(tmp_path, monkeypatch, tiny_model_dir) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    (root / "model").symlink_to(tiny_model_dir)
    long_answer = {"messages": [{"role": "user", "content": "hello"},
                                {"role": "assistant", "content": "the answer is 42. " * 20}]}
    write_chat_rows(root / "train.jsonl", 11, extra=[long_answer])
    fake_run(root, "demo", 40, 40, "completed", 2_000_000_000)
    fake_run(root, "early", 12, 60, "stopped", 1_900_000_000)
    monkeypatch.chdir(root)
    # The monitor's memory gauge reads the machine's memory: the same on every machine here.
    monkeypatch.setattr("macft.tui.screens.monitor.machine_gb", lambda: 24.0)
    return root


async def _shoot(root: Path, prepare, size: tuple[int, int]) -> str:
    app = MacftApp(root=root)
    async with app.run_test(size=size) as pilot:
        await pilot.pause()
        await prepare(app, pilot)
        for box in app.screen.query(Input):
            box.cursor_blink = False
        await pilot.pause()
        return app.export_screenshot(title="macft")


@sizes
def test_home_snapshot(project, tmp_path, size):
    async def prepare(app, pilot):
        pass

    check("home", normalise(run(_shoot(project, prepare, size)), project), tmp_path, size)


@sizes
def test_recipe_snapshot(project, tmp_path, size):
    async def prepare(app, pilot):
        await pilot.press("enter")  # the first recipe: quickstart

    check("recipe", normalise(run(_shoot(project, prepare, size)), project), tmp_path, size)


@sizes
def test_monitor_snapshot(project, tmp_path, size):
    async def prepare(app, pilot):
        app.open_run(project / "runs" / "demo")
        await pilot.pause()

    check("monitor", normalise(run(_shoot(project, prepare, size)), project), tmp_path, size)


@sizes
def test_data_inspector_snapshot(project, tmp_path, size):
    async def prepare(app, pilot):
        app.open_data(recipe_mod.from_dict({"model": "model", "data": {
            "train": "train.jsonl", "max_length": 64}}))
        await wait_for(pilot, lambda: app.screen.report is not None, what="the data report")

    check("data", normalise(run(_shoot(project, prepare, size)), project), tmp_path, size)


@sizes
def test_export_snapshot(project, tmp_path, size):
    async def prepare(app, pilot):
        app.open_export(Path("runs") / "demo")      # relative: the same text on every machine
        await pilot.pause()

    check("export", normalise(run(_shoot(project, prepare, size)), project), tmp_path, size)


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory) -> Path:
    """A tiny run trained to answer "ok", with a test split (the Evaluate screen's input)."""
    from test_tui_evaluate import finished_run_in

    root = tmp_path_factory.mktemp("evaluated")
    finished_run_in(root)
    return root


@sizes
def test_evaluate_snapshot(evaluated, tmp_path, size, monkeypatch):
    from macft.tui.screens.evaluate import EvaluateScreen

    monkeypatch.chdir(evaluated)

    async def prepare(app, pilot):
        app.open_evaluate(evaluated / "runs" / "tiny")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, EvaluateScreen)
        await wait_for(pilot, lambda: screen.score is not None, timeout=120,
                       what="the evaluation")

    check("evaluate", normalise(run(_shoot(evaluated, prepare, size)), evaluated), tmp_path,
          size)
