"""Pilot tests for the TUI defects of issue 20 (5, 7, 8), each failing before its fix."""

from __future__ import annotations

import html
import re
from pathlib import Path

import pytest

import macft  # noqa: F401  (BLAS before mlx)
from test_tui_snapshots import fake_run
from test_tui_support import SIZE, linked_home, make_workdir, press_now, run, text_of, \
    type_into, wait_for
from textual.widgets import DataTable, ProgressBar

from macft import recipe as recipe_mod, shipped
from macft.tui.app import MacftApp
from macft.tui.screens.data import DataScreen
from macft.tui.screens.home import HomeScreen
from macft.tui.screens.monitor import MonitorScreen
from macft.tui.screens.recipe import RecipeScreen


def screen_text(app) -> str:
    """The characters on the terminal, from the SVG screenshot (one <text> run per span)."""
    svg = app.export_screenshot()
    runs = re.findall(r"<text[^>]*>(.*?)</text>", svg, re.S)
    return html.unescape("".join(runs)).replace("\xa0", " ")


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return make_workdir(tmp_path_factory.mktemp("defects"))


@pytest.fixture
def home(tmp_path, monkeypatch, work) -> Path:
    monkeypatch.chdir(tmp_path)
    return linked_home(tmp_path, work)


async def focus_row(pilot, table: DataTable, label: str) -> None:
    labels = [str(table.get_row_at(i)[0]) for i in range(table.row_count)]
    table.focus()
    table.move_cursor(row=labels.index(label))
    await pilot.pause()


# ----- defect 5: `d` on the DPO quickstart -----------------------------------------------------

async def _dpo_data(root: Path) -> tuple[str, str]:
    app = MacftApp(root=root)
    async with app.run_test(size=SIZE) as pilot:
        await focus_row(pilot, app.screen.query_one("#recipes", DataTable), "dpo-quickstart")
        await pilot.press("d")
        screen = app.screen
        assert isinstance(screen, DataScreen)
        await wait_for(pilot, lambda: screen.report is not None or
                       "red" in str(screen.query_one("#data-summary").render().spans),
                       120, "the data report")
        return text_of(screen.query_one("#data-summary")), \
            text_of(screen.query_one("#example-text"))


def test_d_on_the_dpo_quickstart_shows_its_preference_pairs(home, smollm2_path):
    (home / "data").symlink_to(shipped.RECIPES.parent / "data")
    summary, example = run(_dpo_data(home))
    assert summary.startswith("train: data/dpo/train.jsonl · 128 rows · format preference"), \
        summary
    assert "rejected 0" in summary
    first = (shipped.RECIPES.parent / "data" / "dpo" / "train.jsonl").read_text().splitlines()[0]
    assert "chosen\n" in example and "\n\nrejected\n" in example
    assert "The opposite of 'hot' is 'cold'." in example and '"chosen"' in first


# ----- defect 7: a failed start ------------------------------------------------------------------

async def _missing_data(root: Path) -> tuple[object, str, object]:
    app = MacftApp(root=root)
    async with app.run_test(size=SIZE) as pilot:
        app.open_recipe(None)
        await pilot.pause()
        await type_into(pilot, "#opt-model-path", "model")
        await type_into(pilot, "#opt-data-train", "missing.jsonl")
        await pilot.press("ctrl+r")
        await pilot.pause()
        return app.screen, text_of(app.screen.query_one("#form-error")), app.live


def test_a_missing_data_file_is_shown_on_the_form_and_starts_nothing(home):
    screen, error, live = run(_missing_data(home))
    assert isinstance(screen, RecipeScreen) and live is None
    assert error == "<new recipe>: key 'data.train': missing.jsonl: file not found"
    assert not (home / "runs").exists()


async def _failed_in_monitor(root: Path):
    app = MacftApp(root=root)
    async with app.run_test(size=SIZE) as pilot:
        app.open_recipe(None)
        await pilot.pause()
        await type_into(pilot, "#opt-model-path", "nowhere/at/all")
        await type_into(pilot, "#opt-data-train", "train.jsonl")
        await press_now(pilot, "ctrl+r")
        monitor = app.screen
        assert isinstance(monitor, MonitorScreen)
        await wait_for(pilot, lambda: monitor.state.status == "failed", 60, "the failure")
        await pilot.pause()
        bar = monitor.query_one("#run-progress", ProgressBar)
        return text_of(monitor.query_one("#run-log")), bar.total, \
            text_of(monitor.query_one("#run-status"))


def test_a_failed_start_shows_the_error_once_and_does_not_animate(home):
    log, total, status = run(_failed_in_monitor(home))
    assert log.count("model path not found") == 1, log
    assert total is not None          # None draws the indeterminate (animated) bar
    assert status.startswith("● failed")


# ----- defect 8 ------------------------------------------------------------------------------

def two_recipes(root: Path) -> None:
    (root / "recipes").mkdir()
    for name in ("alpha", "beta", "gamma"):
        (root / "recipes" / f"{name}.yaml").write_text(
            f"name: {name}\nmodel: model\ndata:\n  train: train.jsonl\n")


async def _cursor_kept(root: Path) -> tuple[int, int]:
    app = MacftApp(root=root, recipe_dirs=[root / "recipes"])
    async with app.run_test(size=SIZE) as pilot:
        table = app.screen.query_one("#recipes", DataTable)
        await focus_row(pilot, table, "gamma")
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, RecipeScreen)
        await pilot.press("escape")
        await pilot.pause()
        assert isinstance(app.screen, HomeScreen)
        runs = app.screen.query_one("#runs", DataTable)
        await focus_row(pilot, runs, "runs/two")
        app.open_run(root / "runs" / "two")
        await pilot.pause()
        await pilot.press("escape")
        await pilot.pause()
        return table.cursor_row, runs.cursor_row


def test_home_keeps_its_cursors_on_return(home):
    two_recipes(home)
    fake_run(home, "one", 5, 5, "completed", 2_000_000_000)
    fake_run(home, "two", 5, 5, "completed", 1_900_000_000)
    assert run(_cursor_kept(home)) == (2, 1)


async def _focused_table_keys(root: Path) -> list:
    seen = []
    app = MacftApp(root=root, recipe_dirs=[root / "recipes"])
    async with app.run_test(size=SIZE) as pilot:
        home = app.screen
        await focus_row(pilot, home.query_one("#runs", DataTable), "runs/two")
        await pilot.press("d")
        await pilot.pause()
        seen.append((type(app.screen).__name__, app.screen.recipe.name))
        await pilot.press("escape")
        await pilot.pause()
        await pilot.press("e")
        await pilot.pause()
        seen.append((type(app.screen).__name__, app.screen.run_dir.name))
        await pilot.press("escape")
        await pilot.pause()
        # The recipes table: `e` on a recipe without a run says so and stays home.
        await focus_row(pilot, home.query_one("#recipes", DataTable), "alpha")
        await pilot.press("e")
        await pilot.pause()
        seen.append(type(app.screen).__name__)
        await pilot.press("d")
        await pilot.pause()
        seen.append((type(app.screen).__name__, app.screen.recipe.name))
    return seen


def test_d_t_e_act_on_the_focused_tables_row(home):
    two_recipes(home)
    fake_run(home, "one", 5, 5, "completed", 2_000_000_000)
    fake_run(home, "two", 5, 5, "completed", 1_900_000_000)
    assert run(_focused_table_keys(home)) == [
        ("DataScreen", "two"), ("ExportScreen", "two"), "HomeScreen", ("DataScreen", "alpha")]


async def _monitor_text(root: Path, size) -> tuple[str, str]:
    app = MacftApp(root=root)
    async with app.run_test(size=size) as pilot:
        app.open_run(root / "runs" / "demo")
        # Drawn once the footer is (a loaded machine may take a few frames).
        await wait_for(pilot, lambda: "Commands" in screen_text(app), 20, "the monitor")
        await pilot.pause()
        return screen_text(app), text_of(app.screen.query_one("#samples"))


def _two_samples(root: Path) -> None:
    fake_run(root, "demo", 20, 40, "stopped", 2_000_000_000)
    metrics = root / "runs" / "demo" / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    lines.insert(-3, '{"event": "Sample", "step": 10, "prompt": "older", "text": "old", '
                     '"time": 0.0}')
    metrics.write_text("\n".join(lines) + "\n")


def test_newest_sample_first(home):
    _two_samples(home)
    _, samples = run(_monitor_text(home, SIZE))
    assert samples.index("step 20 ") < samples.index("step 10 "), samples


@pytest.mark.parametrize("size", [(80, 24), (120, 36)])
def test_the_monitor_keeps_eta_and_quit_at_small_sizes(home, size):
    _two_samples(home)
    shown, _ = run(_monitor_text(home, size))
    assert "ETA 00:10" in shown, shown
    assert "Quit" in shown, shown


async def _home_text(root: Path, size) -> str:
    app = MacftApp(root=root)
    async with app.run_test(size=size) as pilot:
        await wait_for(pilot, lambda: "Commands" in screen_text(app), 20, "the home screen")
        await pilot.pause()
        return screen_text(app)


def test_home_keeps_quit_at_80_columns(home):
    assert "q Quit" in run(_home_text(home, (80, 24)))


async def _export_asks(root: Path, run_dir: Path, out: Path) -> list:
    seen = []
    app = MacftApp(root=root)
    async with app.run_test(size=SIZE) as pilot:
        app.open_export(run_dir)
        await pilot.pause()
        await type_into(pilot, "#export-out", str(out))   # the first target: a GGUF file
        await pilot.click("#export-write")
        await pilot.pause()
        seen.append(type(app.screen).__name__)
        await pilot.press("n")
        await pilot.pause()
        seen.append(type(app.screen).__name__)
    return seen


def test_export_asks_before_overwriting_a_gguf(home):
    fake_run(home, "demo", 5, 5, "completed", 2_000_000_000)
    out = home / "kept.gguf"
    out.write_bytes(b"GGUF mine")
    assert run(_export_asks(home, home / "runs" / "demo", out)) == ["ConfirmScreen",
                                                                     "ExportScreen"]
    assert out.read_bytes() == b"GGUF mine"


def test_compile_off_as_an_override_is_the_choice_off(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("name: r\ntrain:\n  compile: auto\n")
    assert recipe_mod.load(path, ["train.compile=off"]).train.compile == "off"


def _luminance(colour) -> float:
    """WCAG relative luminance of a Textual Color."""
    def channel(c: int) -> float:
        c = c / 255
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4
    return 0.2126 * channel(colour.r) + 0.7152 * channel(colour.g) + 0.0722 * channel(colour.b)


async def _panel_titles(root: Path) -> list[tuple[str, float]]:
    app = MacftApp(root=root)
    async with app.run_test(size=SIZE) as pilot:
        app.open_run(root / "runs" / "demo")
        await wait_for(pilot, lambda: "Commands" in screen_text(app), 20, "the monitor")
        await pilot.pause()
        out = []
        for widget in app.screen.query("*"):
            if widget.border_title and widget.display:
                fg = widget.styles.border_title_color
                bg = widget.background_colors[1]      # what the title is drawn on
                fg = bg + fg                          # an alpha colour blends over it
                hi, lo = sorted((_luminance(fg), _luminance(bg)), reverse=True)
                out.append((str(widget.border_title), (hi + 0.05) / (lo + 0.05)))
        return out


def test_the_monitors_panel_titles_are_readable(home):
    """Defect 8: panel titles were drawn in the border's dim colour on near-black."""
    _two_samples(home)
    titles = run(_panel_titles(home))
    assert {t.split()[0] for t, _ in titles} >= {"loss", "events", "samples"}, titles
    for title, contrast in titles:
        assert contrast >= 4.5, (title, contrast)     # WCAG AA for text
