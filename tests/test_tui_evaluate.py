"""Evaluate in one key: `v` on a finished run shows base vs tuned on the recipe's test split with
the numbers `macft eval` prints, stores them in the run folder, and the runs list shows them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import macft  # noqa: F401  (BLAS before mlx)
from test_tui_support import SIZE, make_workdir, run, text_of, wait_for
from textual.widgets import DataTable

from macft import recipe as recipe_mod, runs as runs_mod
from macft.cli import main
from macft.errors import MacftError
from macft.tui.app import MacftApp
from macft.tui.screens.evaluate import EvaluateScreen
from macft.tui.screens.home import HomeScreen


def write_rows(path: Path, n: int, seed: int) -> Path:
    """Chat rows whose answer is always "ok": the tiny model learns it in 40 full steps."""
    rows = [{"messages": [{"role": "user", "content": f"hello {(i * 7 + seed) % 10}"},
                          {"role": "assistant", "content": "ok"}]} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def finished_run_in(root: Path, test: str | None = "test.jsonl") -> Path:
    from macft.train.loop import train

    make_workdir(root)
    write_rows(root / "train.jsonl", 16, 0)
    write_rows(root / "test.jsonl", 5, 3)
    out = root / "runs" / "tiny"
    data = {"train": str(root / "train.jsonl"), "max_length": 64}
    if test:
        data["test"] = str(root / test)
    recipe = recipe_mod.from_dict({
        "name": "tiny", "model": str(root / "model"), "method": "full",
        "data": data,
        "train": {"steps": 40, "batch_size": 4, "learning_rate": 5e-3, "save_every": 0},
        "eval": {"max_tokens": 6}, "output": str(out)})
    train(recipe, [])
    return out


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("evaluate")
    finished_run_in(root)
    return root


def eval_printed(capsys, argv: list[str]) -> str:
    capsys.readouterr()
    assert main(argv) == 0
    out = capsys.readouterr().out
    return re.search(r"exact match +(\S+)", out).group(1)


async def _evaluate(root: Path) -> dict:
    app = MacftApp(root=root)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        home = app.screen
        runs = home.query_one("#runs", DataTable)
        runs.focus()
        await pilot.pause()
        assert str(runs.get_row_at(0)[-1]) == "-"   # no score before evaluating
        await pilot.press("v")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, EvaluateScreen)
        await wait_for(pilot, lambda: screen.score is not None or
                       screen.query_one("#eval-status").has_class("error"), timeout=120,
                       what="the evaluation")
        assert screen.score is not None, text_of(screen.query_one("#eval-status"))
        scores = screen.query_one("#eval-scores", DataTable)
        shown = {str(scores.get_row_at(i)[0]): [str(c) for c in scores.get_row_at(i)[1:]]
                 for i in range(scores.row_count)}
        examples = screen.query_one("#eval-examples", DataTable)
        rows = [[str(c) for c in examples.get_row_at(i)] for i in range(examples.row_count)]
        await pilot.press("escape")
        await pilot.pause()
        assert isinstance(app.screen, HomeScreen)
        runs = app.screen.query_one("#runs", DataTable)
        listed = str(runs.get_row_at(0)[-1])
        return {"shown": shown, "rows": rows, "listed": listed, "score": screen.score}


def test_v_on_a_finished_run_scores_base_and_tuned_like_macft_eval(project, monkeypatch,
                                                                    capsys):
    monkeypatch.chdir(project)
    got = run(_evaluate(project))
    run_dir, test = project / "runs" / "tiny", str(project / "test.jsonl")
    tuned = eval_printed(capsys, ["eval", str(run_dir), "--data", test, "--no-loss"])
    preds = project / "base-predictions.jsonl"
    base = eval_printed(capsys, ["eval", str(project / "model"), "--data", test, "--no-loss",
                                 "--max-tokens", "6", "--out", str(preds)])
    assert got["shown"]["exact match"] == [base, tuned]
    assert got["shown"]["examples"] == ["5", "5"]
    assert tuned == "100.0%" and base == "0.0%"      # the run learnt the answer; the base did not
    # every example: base / tuned / expected, as evaluate() answered them
    assert [r[4] for r in got["rows"]] == ["ok"] * 5                  # expected
    assert [r[3] for r in got["rows"]] == ["ok"] * 5                  # tuned
    assert [r[2] for r in got["rows"]] == [json.loads(line)["prediction"].strip()
                                           for line in preds.read_text().splitlines()]
    assert [r[1] for r in got["rows"]] == ["fixed"] * 5
    # stored with the run, and the runs list shows the tuned score
    stored = runs_mod.read_score(run_dir)
    assert stored["tuned"]["exact_match"] == 1.0 and stored["base"]["exact_match"] == 0.0
    assert stored["test"] == test
    assert got["listed"] == "100.0%"
    assert runs_mod.run_info(run_dir).test_score == 1.0


def test_evaluate_without_a_test_split_says_so_in_one_line(tmp_path):
    from macft.evaluation import evaluate_run

    (tmp_path / "runs" / "r").mkdir(parents=True)
    recipe_mod.dump(recipe_mod.from_dict({"name": "r", "model": "m",
                                          "data": {"train": "t.jsonl"}}),
                    tmp_path / "runs" / "r" / "recipe.yaml")
    with pytest.raises(MacftError, match=r"recipe.yaml: data.test is not set"):
        evaluate_run(tmp_path / "runs" / "r")
    assert not runs_mod.score_path(tmp_path / "runs" / "r").exists()


def test_a_broken_score_file_leaves_the_runs_list_readable(tmp_path):
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    runs_mod.score_path(run_dir).write_text("{not json")
    assert runs_mod.tuned_exact_match(run_dir) is None
    with pytest.raises(MacftError, match=r"score.json:1: invalid JSON"):
        runs_mod.read_score(run_dir)


async def _from_monitor(root: Path) -> tuple[bool, float | None]:
    from macft.tui.screens.monitor import MonitorScreen

    app = MacftApp(root=root)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        app.open_run(root / "runs" / "tiny")
        await pilot.pause()
        assert isinstance(app.screen, MonitorScreen)
        await wait_for(pilot, lambda: app.screen.state is not None and
                       app.screen.state.status == "finished", what="the finished run")
        await pilot.press("v")
        await pilot.pause()
        screen = app.screen
        if not isinstance(screen, EvaluateScreen):
            return False, None
        await wait_for(pilot, lambda: screen.score is not None, timeout=120,
                       what="the evaluation")
        return True, screen.score.tuned.exact_match


def test_v_in_a_finished_runs_monitor_opens_evaluate(project, monkeypatch):
    monkeypatch.chdir(project)
    opened, tuned = run(_from_monitor(project))
    assert opened and tuned == 1.0
