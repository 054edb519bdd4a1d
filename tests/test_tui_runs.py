"""The runs manager on Home (issue 20): the runs list's columns, delete / rename / duplicate
with their dialogs and refusals, Start on an existing run asking "resume / new run" (defect 6),
and several runs' loss curves overlaid."""

from __future__ import annotations

import calendar
import json
import os
import socket
import time
from pathlib import Path

import pytest

import macft  # noqa: F401  (BLAS before mlx)
from test_tui_snapshots import fake_run
from test_tui_support import SIZE, make_workdir, run, text_of, type_into, wait_for
from textual.widgets import Button, DataTable, Input

from macft import events as ev, lock, recipe as recipe_mod, runs as runs_mod
from macft.tui.app import MacftApp
from macft.tui.widgets.loss_chart import Series, overlay_lines

# 2026-12-02 15:30 UTC, the first RunStarted event's time of the runs below
STARTED = calendar.timegm((2026, 12, 2, 15, 30, 0))


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return make_workdir(tmp_path_factory.mktemp("runs-manager"))


@pytest.fixture
def home(tmp_path, monkeypatch, work) -> Path:
    for name in ("model", "train.jsonl", "valid.jsonl"):
        (tmp_path / name).symlink_to(work / name)
    (tmp_path / "recipes").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield tmp_path
    monkeypatch.undo()
    time.tzset()


def started_at(root: Path, name: str, when: float) -> None:
    """Give a fake run's RunStarted event a real time (fake_run writes 0)."""
    metrics = root / "runs" / name / "metrics.jsonl"
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    rows[0]["time"] = when
    mtime = metrics.stat().st_mtime
    metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.utime(metrics, (mtime, mtime))


def failed_run(root: Path, name: str, error: str, mtime: float) -> None:
    """A run that failed at step 3 after 1.5 s of training (shown as 2s)."""
    fake_run(root, name, 3, 10, "completed", mtime)
    metrics = root / "runs" / name / "metrics.jsonl"
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    rows = [r for r in rows if r["event"] != "Finished"] + [
        dict(event="Failed", step=3, error=error, time=0.0)]
    metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.utime(metrics, (mtime, mtime))


def three_runs(root: Path) -> None:
    fake_run(root, "demo", 40, 40, "completed", 2_000_000_000)
    started_at(root, "demo", STARTED)
    runs_mod.write_score(root / "runs" / "demo", {"tuned": {"exact_match": 0.95}})
    fake_run(root, "early", 30, 60, "early_stopping", 1_990_000_000)
    failed_run(root, "broken", "out of memory at step 3 (batch 8 x 2048 tokens)", 1_980_000_000)


def cells(table: DataTable) -> list[list[str]]:
    return [[str(c) for c in table.get_row_at(i)] for i in range(table.row_count)]


def headers(table: DataTable) -> list[str]:
    return [str(c.label) for c in table.ordered_columns]


def notes(app) -> list[str]:
    return [n.message for n in app._notifications]


async def focus_row(pilot, table: DataTable, label: str) -> None:
    labels = [str(table.get_row_at(i)[0]).removeprefix("✓ ") for i in range(table.row_count)]
    table.focus()
    table.move_cursor(row=labels.index(label))
    await pilot.pause()


async def _runs_table(root: Path, size) -> tuple[list[str], list[list[str]], int]:
    app = MacftApp(root=root, recipe_dirs=[root / "recipes"])
    async with app.run_test(size=size) as pilot:
        await pilot.pause()
        table = app.screen.query_one("#runs", DataTable)
        return headers(table), cells(table), table.virtual_size.width


# ----- the runs list ---------------------------------------------------------------------------

def test_the_runs_list_shows_date_duration_best_loss_score_and_why_it_ended(home):
    three_runs(home)
    head, rows, _ = run(_runs_table(home, (120, 36)))
    assert head == ["run", "status", "step", "started", "duration", "best val", "test score",
                    "method", "model"]
    best40 = f"{3.1 * 0.97 ** 40:.4f}"
    assert rows == [
        ["runs/demo", "finished", "40/40", "2026-12-02 15:30", "20s", best40, "95.0%",
         "lora", "tiny-llama"],
        ["runs/early", "finished: early_stopping", "30/60", "-", "15s",
         f"{3.1 * 0.97 ** 30:.4f}", "-", "lora", "tiny-llama"],
        ["runs/broken", "failed: out of memory at step 3 (batch …", "3/10", "-", "2s",
         "-", "-", "lora", "tiny-llama"]]
    assert best40 == "0.9167"


def test_the_runs_list_at_100_and_80_columns(home):
    three_runs(home)
    head, rows, _ = run(_runs_table(home, SIZE))
    assert head == ["run", "status", "step", "started", "duration", "best val", "test score"]
    assert rows[0] == ["runs/demo", "finished", "40/40", "12-02 15:30", "20s", "0.9167", "95.0%"]
    assert rows[2][1] == "failed: out of memory a…"
    head, rows, width = run(_runs_table(home, (80, 24)))
    assert head == ["run", "status", "step", "duration", "best val", "test"]
    assert rows[2] == ["runs/broken", "failed: out of me…", "3/10", "2s", "-", "-"]
    assert width <= 78          # the whole table inside the screen: no sideways scrolling


def test_run_info_reads_finished_json_without_metrics(tmp_path):
    run_dir = tmp_path / "runs" / "bare"
    run_dir.mkdir(parents=True)
    recipe_mod.dump(recipe_mod.from_dict({"name": "bare", "model": "m"}),
                    runs_mod.recipe_path(run_dir))
    assert runs_mod.run_info(run_dir).status == "new"
    runs_mod.write_finished(run_dir, {"step": 7, "reason": "early_stopping"})
    info = runs_mod.run_info(run_dir)
    assert (info.status, info.outcome, info.note) == ("finished", "early_stopping",
                                                      "finished: early_stopping")


def test_free_names(tmp_path):
    (tmp_path / "q").mkdir()
    assert runs_mod.free_name(tmp_path / "q") == "q-2"
    (tmp_path / "q-2").mkdir()
    (tmp_path / "q-3").mkdir()
    assert runs_mod.free_name(tmp_path / "q") == "q-4"
    assert runs_mod.free_name(tmp_path / "q-3") == "q-4"


# ----- delete, rename, duplicate ---------------------------------------------------------------

async def _manage(root: Path, keys_then) -> dict:
    """Focus runs/demo, then run ``keys_then(app, pilot)``; returns what it collected."""
    app = MacftApp(root=root, recipe_dirs=[root / "recipes"])
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        await focus_row(pilot, app.screen.query_one("#runs", DataTable), "runs/demo")
        return await keys_then(app, pilot)


def test_delete_asks_and_removes_the_folder(home):
    fake_run(home, "demo", 5, 5, "completed", 2_000_000_000)
    fake_run(home, "other", 5, 5, "completed", 1_900_000_000)

    async def keys(app, pilot):
        seen = {}
        await pilot.press("x")
        seen["question"] = text_of(app.screen.query_one("#confirm-question"))
        await pilot.press("n")                       # No: nothing happens
        seen["after no"] = (type(app.screen).__name__, (home / "runs" / "demo").is_dir())
        await pilot.press("x")
        await pilot.press("y")
        await pilot.pause()
        seen["rows"] = [r[0] for r in cells(app.screen.query_one("#runs", DataTable))]
        seen["notes"] = notes(app)
        return seen

    seen = run(_manage(home, keys))
    assert seen["question"] == ("Delete runs/demo? Its checkpoints, adapters and metrics go "
                                "with it.")
    assert seen["after no"] == ("HomeScreen", True)
    assert not (home / "runs" / "demo").exists()
    assert sorted(p.name for p in (home / "runs").iterdir()) == ["other"]
    assert seen["rows"] == ["runs/other"]
    assert "deleted runs/demo" in seen["notes"]


def test_rename_moves_the_folder_and_refuses_an_existing_name(home):
    fake_run(home, "demo", 5, 5, "completed", 2_000_000_000)
    fake_run(home, "taken", 5, 5, "completed", 1_900_000_000)
    taken = (home / "runs" / "taken" / "metrics.jsonl").read_bytes()

    async def keys(app, pilot):
        seen = {}
        await pilot.press("m")
        seen["screen"] = type(app.screen).__name__
        seen["default"] = app.screen.query_one("#name-input", Input).value
        await type_into(pilot, "#name-input", "taken")
        await pilot.press("enter")
        seen["refusal"] = (type(app.screen).__name__,
                           text_of(app.screen.query_one("#name-error")))
        await type_into(pilot, "#name-input", "renamed")
        await pilot.press("enter")
        await pilot.pause()
        seen["rows"] = [r[0] for r in cells(app.screen.query_one("#runs", DataTable))]
        return seen

    seen = run(_manage(home, keys))
    assert seen["screen"] == "NameScreen" and seen["default"] == "demo"
    assert seen["refusal"] == ("NameScreen", "runs/taken already exists")
    assert sorted(p.name for p in (home / "runs").iterdir()) == ["renamed", "taken"]
    assert (home / "runs" / "taken" / "metrics.jsonl").read_bytes() == taken
    moved = home / "runs" / "renamed"
    assert recipe_mod.load(runs_mod.recipe_path(moved)).output == "runs/renamed"
    assert not (moved / ".lock").exists() and runs_mod.trainer_alive(moved) is None
    assert runs_mod.run_info(moved).status == "finished"
    assert sorted(seen["rows"]) == ["runs/renamed", "runs/taken"]


def test_duplicate_makes_a_new_run_with_the_same_recipe_and_no_checkpoints(home):
    fake_run(home, "demo", 5, 5, "completed", 2_000_000_000)
    (home / "runs" / "demo" / "checkpoints" / "step-0000005").mkdir(parents=True)
    (home / "runs" / "demo" / "checkpoints" / "step-0000005" / "state.json").write_text("{}")

    async def keys(app, pilot):
        await pilot.press("c")
        default = app.screen.query_one("#name-input", Input).value
        await pilot.press("enter")
        await pilot.pause()
        return {"default": default, "rows": cells(app.screen.query_one("#runs", DataTable)),
                "notes": notes(app)}

    seen = run(_manage(home, keys))
    assert seen["default"] == "demo-2", seen["notes"]
    assert seen["notes"] == ["copied to runs/demo-2"], seen["notes"]
    copy = home / "runs" / "demo-2"
    assert sorted(p.name for p in copy.iterdir()) == ["recipe.yaml"]
    old = recipe_mod.to_dict(recipe_mod.load(home / "runs" / "demo" / "recipe.yaml"))
    new = recipe_mod.to_dict(recipe_mod.load(copy / "recipe.yaml"))
    assert new.pop("output") == "runs/demo-2" and old.pop("output") is None
    assert new == old
    row = next(r for r in seen["rows"] if r[0] == "runs/demo-2")
    assert row[1:3] == ["new", "0/0"]


def test_a_run_being_trained_is_not_deleted_or_renamed(home):
    fake_run(home, "demo", 5, 5, "completed", 2_000_000_000)
    before = sorted(p.name for p in (home / "runs" / "demo").iterdir())
    held = lock.acquire(home / "runs" / "demo")      # a live trainer: this process
    try:
        async def keys(app, pilot):
            await pilot.press("x")
            after_x = type(app.screen).__name__
            await pilot.press("m")
            return {"screens": [after_x, type(app.screen).__name__], "notes": notes(app)}

        seen = run(_manage(home, keys))
    finally:
        lock.release(held)
    assert seen["screens"] == ["HomeScreen", "HomeScreen"]     # no dialog opened
    who = f"pid {os.getpid()} on {socket.gethostname()}, since "
    for doing, line in zip(("delete", "rename"), seen["notes"]):
        assert line.startswith(f"runs/demo: cannot {doing} it: it is being trained by {who}")
        assert line.endswith("; stop it first") and "\n" not in line
    assert len(seen["notes"]) == 2
    assert sorted(p.name for p in (home / "runs" / "demo").iterdir()) == before


# ----- Start on an existing run (defect 6) -----------------------------------------------------
TINY = ("name: tiny\nmodel: model\nlora: {rank: 4}\n"
        "data: {train: train.jsonl, max_length: 64}\n"
        "train: {steps: 2, batch_size: 2, save_every: 0, eval_every: 0}\n")


async def _start_on_a_finished_run(root: Path) -> dict:
    seen = {}
    app = MacftApp(root=root, recipe_dirs=[root / "recipes"])
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        await focus_row(pilot, app.screen.query_one("#recipes", DataTable), "tiny")
        await pilot.press("enter")                   # the form
        await pilot.press("ctrl+r")
        await pilot.pause()
        dialog = app.screen
        seen["dialog"] = type(dialog).__name__
        seen["question"] = text_of(dialog.query_one("#confirm-question"))
        seen["name"] = dialog.query_one("#name-input", Input).value
        seen["buttons"] = [str(b.label) for b in dialog.query(Button)]
        seen["live before"] = app.live
        await pilot.press("n")                       # New run
        await pilot.pause()
        seen["monitor"] = (type(app.screen).__name__, app.screen.run_dir)
        await wait_for(pilot, lambda: app.live is None, 180, "the new run to end")
        seen["status"] = app.screen.state.status
    return seen


def test_start_on_a_finished_run_asks_and_new_run_trains_beside_it(home):
    (home / "recipes" / "tiny.yaml").write_text(TINY)
    fake_run(home, "tiny", 5, 5, "completed", 2_000_000_000)
    old = home / "runs" / "tiny"
    metrics = old.joinpath("metrics.jsonl").read_bytes()
    files = sorted(p.name for p in old.iterdir())
    seen = run(_start_on_a_finished_run(home))
    assert seen["dialog"] == "NameScreen" and seen["live before"] is None
    assert seen["question"] == ("runs/tiny already holds a run (finished at step 5/5). Start "
                                "a new run in the folder below (Tab edits its name):")
    assert seen["name"] == "tiny-2"
    assert seen["buttons"] == ["New run  n", "Cancel  esc"]     # a finished run: no Resume
    assert seen["monitor"] == ("MonitorScreen", Path("runs/tiny-2"))
    assert seen["status"] == "finished"
    new = home / "runs" / "tiny-2"
    done = [e for e in ev.read_metrics(runs_mod.metrics_path(new)) if e["event"] == "Finished"]
    assert [(e["step"], e["reason"]) for e in done] == [(2, "completed")]
    assert recipe_mod.load(runs_mod.recipe_path(new)).output == "runs/tiny-2"
    assert runs_mod.has_adapter(new)
    # the old run is untouched
    assert old.joinpath("metrics.jsonl").read_bytes() == metrics
    assert sorted(p.name for p in old.iterdir()) == files


async def _start_on_a_stopped_run(root: Path) -> dict:
    app = MacftApp(root=root, recipe_dirs=[root / "recipes"])
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        await focus_row(pilot, app.screen.query_one("#recipes", DataTable), "tiny")
        await pilot.press("ctrl+r")                  # Start from Home, on the recipe row
        await pilot.pause()
        dialog = app.screen
        seen = {"dialog": type(dialog).__name__,
                "buttons": [str(b.label) for b in dialog.query(Button)]}
        # Tab to the name, make it a folder that exists: refused under the box.
        fake_run(root, "mine", 1, 1, "completed", 1_000_000_000)
        await type_into(pilot, "#name-input", "mine")
        await pilot.press("enter")
        seen["refusal"] = text_of(dialog.query_one("#name-error"))
        await pilot.press("escape")
        await pilot.pause()
        seen["after"] = (type(app.screen).__name__, app.live)
    return seen


def test_start_on_a_stopped_run_offers_resume_and_refuses_an_existing_folder(home):
    (home / "recipes" / "tiny.yaml").write_text(TINY)
    fake_run(home, "tiny", 3, 5, "stopped", 2_000_000_000)
    seen = run(_start_on_a_stopped_run(home))
    assert seen["dialog"] == "NameScreen"
    assert seen["buttons"] == ["Resume  r", "New run  n", "Cancel  esc"]
    assert seen["refusal"] == "runs/mine already exists"
    assert seen["after"] == ("HomeScreen", None)         # Cancel started nothing
    assert not (home / "runs" / "tiny-2").exists()


# ----- loss curves of several runs -------------------------------------------------------------

async def _curves(root: Path) -> dict:
    from macft.tui.widgets.loss_chart import LossChart

    app = MacftApp(root=root, recipe_dirs=[root / "recipes"])
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        table = app.screen.query_one("#runs", DataTable)
        for name in ("runs/a", "runs/c"):
            await focus_row(pilot, table, name)
            await pilot.press("space")
        marked = [r[0] for r in cells(table)]
        await pilot.press("l")
        await pilot.pause()
        chart = app.screen.query_one("#curves", LossChart)
        legend = str(overlay_lines(chart.series, chart.size.width, chart.size.height)[0])
        return {"screen": type(app.screen).__name__, "marked": marked,
                "series": [(s.name, len(s.train), len(s.val), s.colour) for s in chart.series],
                "legend": legend.strip(),
                "title": text_of(app.screen.query_one("#curves-title"))}


def test_marked_runs_open_one_chart_of_their_loss_curves(home):
    fake_run(home, "a", 20, 20, "completed", 2_000_000_000)
    fake_run(home, "b", 10, 10, "completed", 1_900_000_000)
    fake_run(home, "c", 30, 40, "stopped", 1_800_000_000)
    seen = run(_curves(home))
    assert seen["marked"] == ["✓ runs/a", "runs/b", "✓ runs/c"]
    assert seen["screen"] == "CurvesScreen"
    assert seen["series"] == [("runs/a", 20, 2, "#5fafd7"), ("runs/c", 30, 3, "#ffaf00")]
    assert seen["legend"] == "━ runs/a  ━ runs/c  ▁▄█ train, ● validation"
    assert seen["title"] == "Loss curves of runs/a, runs/c"


def test_overlaid_curves_share_one_scale():
    high = Series("high", [(s, 2.0) for s in range(1, 11)], [(10, 2.0)], "#ff0000", 10)
    low = Series("low", [(s, 1.0) for s in range(1, 21)], [], "#00ff00", 20)
    lines = overlay_lines([high, low], 40, 12)
    assert len(lines) == 12 and all(len(line) <= 40 for line in lines)
    rows = {"#ff0000": set(), "#00ff00": set()}
    for r, line in enumerate(lines[1:-1]):
        for span in line.spans:
            for colour in rows:
                if colour in str(span.style):
                    rows[colour].add(r)
    assert rows["#ff0000"] == {0}          # the highest loss on the top row
    assert rows["#00ff00"] == {9}          # the lowest on the bottom plot row
    axis = str(lines[-1])
    assert axis.strip().startswith("└step 1") and axis.rstrip().endswith("20")
    # the shorter run covers the first half of the x axis only (its 10 of 20 steps: 16 of
    # the 31 columns), its validation dot at step 10 (column 13)
    top = str(lines[1])[9:]
    assert len(top.rstrip()) == 16 and top[13] == "●" and set(top[:13]) == {"█"}


async def _dialog_question(root: Path) -> tuple[str, str]:
    app = MacftApp(root=root, recipe_dirs=[root / "recipes"])
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        await focus_row(pilot, app.screen.query_one("#recipes", DataTable), "tiny")
        await pilot.press("ctrl+r")
        await pilot.pause()
        return type(app.screen).__name__, text_of(app.screen.query_one("#confirm-question"))


def test_start_on_a_finished_staged_run_asks_too(home):
    """A staged run keeps its events in its stages' folders; finished.json says it is done."""
    (home / "recipes" / "tiny.yaml").write_text(TINY)
    run_dir = home / "runs" / "tiny"
    run_dir.mkdir(parents=True)
    recipe_mod.dump(recipe_mod.load(home / "recipes" / "tiny.yaml"), run_dir / "recipe.yaml")
    runs_mod.write_finished(run_dir, {"stages": 2})
    assert run(_dialog_question(home)) == (
        "NameScreen", "runs/tiny already holds a run (finished). Start a new run in the "
        "folder below (Tab edits its name):")
