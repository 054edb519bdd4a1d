"""Saving the recipe form keeps the person's file: comments, key order, only the changed keys;
it asks before overwriting another file and before dropping unsaved edits (issue 20, defect 4)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

import macft  # noqa: F401  (BLAS before mlx)
from test_tui_support import SIZE, run, type_into

from macft import recipe as recipe_mod, recipe_edit, shipped
from macft.tui.app import MacftApp
from macft.tui.screens.confirm import ConfirmScreen
from macft.tui.screens.recipe import RecipeScreen

GOLDEN = Path(__file__).parent / "golden" / "recipe-quickstart-steps-150.yaml"
SHIPPED = shipped.RECIPES / "quickstart.yaml"


async def _edit_and_save(root: Path, path: Path) -> None:
    app = MacftApp(root=root)
    async with app.run_test(size=SIZE) as pilot:
        app.open_recipe(path)
        await pilot.pause()
        await type_into(pilot, "#opt-train-steps", "150")
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert isinstance(app.screen, RecipeScreen)          # its own file: no question
        assert not app.screen.unsaved


def test_saving_an_edited_recipe_keeps_its_comments_and_order(tmp_path):
    (tmp_path / "recipes").mkdir()
    mine = tmp_path / "recipes" / "quickstart.yaml"
    shutil.copy(SHIPPED, mine)
    run(_edit_and_save(tmp_path, mine))
    text = mine.read_text()
    if os.environ.get("MACFT_UPDATE_SNAPSHOTS") == "1":
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text()
    # Exactly one line differs from the shipped file, and the loader reads the new value.
    before, after = SHIPPED.read_text().splitlines(), text.splitlines()
    assert len(before) == len(after)
    assert [(a, b) for a, b in zip(before, after) if a != b] == [
        ("  steps: 100           # 1.3 epochs: validation loss ~0.0006, 100% exact match on "
         "the test split",
         "  steps: 150           # 1.3 epochs: validation loss ~0.0006, 100% exact match on "
         "the test split")]
    assert recipe_mod.load(mine).train.steps == 150


async def _overwrite_asks(root: Path) -> None:
    copy = root / "recipes" / "quickstart.yaml"
    app = MacftApp(root=root)
    async with app.run_test(size=SIZE) as pilot:
        app.open_recipe(SHIPPED)
        await pilot.pause()
        assert app.screen.query_one("#save-path").value == "recipes/quickstart.yaml"
        await type_into(pilot, "#opt-lora-rank", "8")
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmScreen)
        assert "recipes/quickstart.yaml exists. Overwrite it?" in str(
            app.screen.query_one("#confirm-question").render())
        await pilot.press("n")
        await pilot.pause()
        assert copy.read_text() == "name: mine\n"
        await pilot.press("ctrl+s")
        await pilot.pause()
        await pilot.press("y")
        await pilot.pause()
        assert isinstance(app.screen, RecipeScreen) and not app.screen.unsaved


def test_saving_over_another_file_asks_first(tmp_path):
    (tmp_path / "recipes").mkdir()
    copy = tmp_path / "recipes" / "quickstart.yaml"
    copy.write_text("name: mine\n")
    run(_overwrite_asks(tmp_path))
    # The shipped file's text with the one change, its comments kept.
    assert copy.read_text() == SHIPPED.read_text().replace("  rank: 16\n", "  rank: 8\n")


async def _escape_asks(root: Path) -> None:
    app = MacftApp(root=root)
    async with app.run_test(size=SIZE) as pilot:
        app.open_recipe(SHIPPED)
        await pilot.pause()
        await pilot.press("escape")                  # nothing changed: back at once
        await pilot.pause()
        assert not isinstance(app.screen, RecipeScreen)
        app.open_recipe(SHIPPED)
        await pilot.pause()
        await type_into(pilot, "#opt-train-steps", "7")
        await pilot.press("escape")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmScreen)
        assert "train.steps" in str(app.screen.query_one("#confirm-question").render())
        await pilot.press("n")                       # keep editing
        await pilot.pause()
        assert isinstance(app.screen, RecipeScreen)
        assert app.screen.query_one("#opt-train-steps").value == "7"
        await pilot.press("escape")
        await pilot.pause()
        await pilot.press("y")                       # discard
        await pilot.pause()
        assert not isinstance(app.screen, (RecipeScreen, ConfirmScreen))


def test_escape_with_unsaved_changes_asks(tmp_path):
    run(_escape_asks(tmp_path))


def test_a_new_recipe_writes_only_what_differs_from_the_defaults(tmp_path):
    target = tmp_path / "r.yaml"
    recipe_edit.save(None, target, {"name": "x", "train.steps": 3, "lora.targets": ["q_proj"]},
                     header="macft run r.yaml")
    assert target.read_text() == ("# macft run r.yaml\nname: x\ntrain:\n  steps: 3\n"
                                  "lora:\n  targets: [q_proj]\n")


def test_model_shorthand_is_kept_or_expanded(tmp_path):
    src = "model: smollm2-135m-instruct  # the alias\n"
    # The comment keeps its column, as in the file.
    assert recipe_edit.edited_text(src, {"model.path": "other"}) == \
        "model: other" + " " * 18 + "# the alias\n"
    assert recipe_mod.parse_yaml(recipe_edit.edited_text(src, {"model.dtype": "float32"})) == \
        {"model": {"path": "smollm2-135m-instruct", "dtype": "float32"}}


@pytest.mark.parametrize("word", ["off", "on", "auto"])
def test_compile_override_words_stay_words(tmp_path, word):
    """Defect 8: `train.compile=off` is the choice "off", not the boolean YAML 1.1 reads."""
    path = tmp_path / "r.yaml"
    path.write_text("name: r\n")
    assert recipe_mod.load(path, [f"train.compile={word}"]).train.compile == word
