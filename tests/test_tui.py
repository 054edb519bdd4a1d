"""The TUI driven with Textual's Pilot: recipe form, a run stopped and resumed, data, compare,
export; plus the pieces under it (the throttling sink, run history, the chart)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import yaml

import macft  # noqa: F401  (BLAS before mlx)
from test_tui_support import SIZE, make_workdir, press_now, run, text_of, \
    train_tiny_run, type_into, wait_for, write_chat_rows
from textual.widgets import DataTable, Input, Select

from macft import events as ev
from macft import recipe as recipe_mod
from macft.errors import MacftError
from macft.runs import RunState
from macft.tui.app import MacftApp
from macft.tui.screens.compare import CompareScreen
from macft.tui.screens.data import TRAINED, DataScreen
from macft.tui.screens.export import ExportScreen
from macft.tui.screens.home import HomeScreen
from macft.tui.screens.monitor import MonitorScreen
from macft.tui.screens.recipe import RecipeScreen, field_id
from macft.tui.widgets.loss_chart import LossChart, chart_lines


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return make_workdir(tmp_path_factory.mktemp("tui"))


@pytest.fixture
def home(tmp_path, monkeypatch, work) -> Path:
    """The folder the app works in, as a user's project: model and data linked in, short
    paths to type; runs/ lands here."""
    for name in ("model", "train.jsonl", "valid.jsonl"):
        (tmp_path / name).symlink_to(work / name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def steps_of(run_dir: Path) -> list[dict]:
    return [e for e in ev.read_metrics(run_dir / "metrics.jsonl") if e["event"] == "Step"]


async def select_row(pilot, table: DataTable, label: str) -> None:
    labels = [str(table.get_row_at(i)[0]) for i in range(table.row_count)]
    table.focus()
    table.move_cursor(row=labels.index(label))
    await pilot.press("enter")
    await pilot.pause()


# ----- acceptance: quickstart -> short run -> stop -> reopen -> resume to the end ------------

# The trainer is a child process (`macft run`), so the keys land on whatever step it has
# reached: the checks are on what each key does from there, not on fixed step numbers.
TOTAL = 40


async def _stop_and_resume(root: Path) -> None:
    app = MacftApp(root=root)
    async with app.run_test(size=SIZE) as pilot:
        try:
            await _drive_run(app, pilot, root)
        finally:
            if app.live is not None:
                app.live.trainer.stop()
                app.live.trainer.proc.wait(60)


async def _drive_run(app, pilot, root: Path) -> None:
    assert isinstance(app.screen, HomeScreen)
    await select_row(pilot, app.screen.query_one("#recipes", DataTable), "quickstart")
    form = app.screen
    assert isinstance(form, RecipeScreen)
    assert form.query_one("#opt-name", Input).value == "quickstart"
    assert form.query_one("#opt-method", Select).value == "qlora"
    await type_into(pilot, "#opt-model-path", "model")
    await type_into(pilot, "#opt-data-train", "train.jsonl")
    await type_into(pilot, "#opt-data-valid", "valid.jsonl")
    await type_into(pilot, "#opt-data-test", "")
    await type_into(pilot, "#opt-train-steps", str(TOTAL))
    await type_into(pilot, "#opt-train-batch_size", "2")
    await type_into(pilot, "#opt-train-eval_every", "20")
    await type_into(pilot, "#opt-train-save_every", "0")
    await press_now(pilot, "ctrl+r")

    monitor = app.screen
    assert isinstance(monitor, MonitorScreen)
    run_dir = root / "runs" / "quickstart"
    assert monitor.key == str(run_dir.resolve())
    trainer = app.live.trainer
    assert trainer.pid != os.getpid() and trainer.alive      # a child process trains
    chart = monitor.query_one("#chart", LossChart)
    status = monitor.query_one("#run-status")

    def about():
        return monitor.state.status, monitor.state.step, monitor.state.log[-3:]

    await wait_for(pilot, lambda: monitor.state.step >= 2, 120, "step 2", about)
    # p: paused means no more steps.
    await press_now(pilot, "p")
    assert "paused" in text_of(status)
    await pilot.pause(1.0)
    paused_at = monitor.state.step
    await pilot.pause(1.0)
    assert monitor.state.step == paused_at and paused_at < TOTAL
    assert [s for s, _ in chart.train] == list(range(1, paused_at + 1))
    assert f"paused   step {paused_at}/{TOTAL}" in text_of(status)

    # c, then p to go on: a checkpoint at a later step (save_every is 0: only the key saves).
    await press_now(pilot, "c", "p")
    ckpt = await wait_for(pilot, lambda: [c for c in monitor.state.checkpoints if not c.best],
                          120, "the checkpoint", about)
    assert ckpt[0].step >= paused_at
    assert json.loads((Path(ckpt[0].path) / "state.json").read_text())["step"] == ckpt[0].step

    # s: stop; the trainer writes a checkpoint at the step it stopped on.
    await press_now(pilot, "s")
    await wait_for(pilot, lambda: app.live is None, 120, "the run to stop", about)
    assert monitor.state.status == "stopped"
    stopped_at = monitor.state.step
    assert f"stopped   step {stopped_at}/{TOTAL}" in text_of(status)
    assert (run_dir / "checkpoints" / "latest").read_text() == f"step-{stopped_at:07d}"
    state = json.loads((run_dir / "checkpoints" / f"step-{stopped_at:07d}" /
                        "state.json").read_text())
    assert state["step"] == stopped_at
    assert trainer.proc.returncode == 128 + signal.SIGTERM      # stopped by a signal

    # Back home (the form's edits were never saved: it asks, y drops them); the run is
    # listed as stopped; reopen it from its metrics.jsonl.
    await pilot.press("escape", "escape")
    assert "Discard the unsaved changes" in text_of(app.screen.query_one("#confirm-question"))
    await pilot.press("y")
    assert isinstance(app.screen, HomeScreen)
    runs = app.screen.query_one("#runs", DataTable)
    assert [str(c) for c in runs.get_row_at(0)[:3]] == ["runs/quickstart", "stopped",
                                                        f"{stopped_at}/{TOTAL}"]
    await select_row(pilot, runs, "runs/quickstart")
    reopened = app.screen
    assert isinstance(reopened, MonitorScreen) and reopened is not monitor
    assert not reopened.state.live
    assert [s for s, _ in reopened.query_one("#chart", LossChart).train] == \
        list(range(1, stopped_at + 1))

    # r: resume to the end.
    await press_now(pilot, "r")
    await wait_for(pilot, lambda: app.live is None and reopened.state.status == "finished",
                   240, "the resumed run to finish", about)
    assert f"finished   step {TOTAL}/{TOTAL}" in text_of(reopened.query_one("#run-status"))
    assert [s for s, _ in reopened.query_one("#chart", LossChart).train] == \
        list(range(1, TOTAL + 1))
    assert [s for s, _ in reopened.state.evals] == [20, 40]

    history = ev.read_metrics(run_dir / "metrics.jsonl")
    assert [e["start_step"] for e in history if e["event"] == "RunStarted"] == [0, stopped_at]
    assert [e["reason"] for e in history if e["event"] == "Finished"] == ["stopped",
                                                                          "completed"]
    assert [s["step"] for s in steps_of(run_dir)] == list(range(1, TOTAL + 1))
    assert (run_dir / "adapters.safetensors").exists()
    assert recipe_mod.load(run_dir / "recipe.yaml").model.path == "model"


@pytest.mark.slow     # two `macft run` children start (model load, MLX import): ~50 s on 2 cores
def test_quickstart_run_stops_with_a_checkpoint_and_resumes_to_the_end(home):
    run(_stop_and_resume(home))


# ----- recipe form ---------------------------------------------------------------------------

async def _form(root: Path) -> None:
    app = MacftApp(root=root)
    async with app.run_test(size=SIZE) as pilot:
        app.open_recipe(None)
        await pilot.pause()
        form = app.screen
        # Every option has an editor showing its default: the form comes from describe().
        for key, _, default, _ in recipe_mod.describe():
            widget = form.query_one(f"#{field_id(key)}")
            shown = widget.value
            if isinstance(widget, Input):
                assert shown == ("" if default is None else
                                 yaml.safe_dump(default, default_flow_style=True).strip()
                                 if isinstance(default, list) else str(default)), key
            else:
                assert shown == default, key
        form.query_one("#opt-lora-dropout").focus()
        await pilot.pause()
        assert "Dropout on the adapter's input." in text_of(form.query_one("#field-help"))

        await type_into(pilot, "#opt-name", "quick")  # q types, it does not quit
        await type_into(pilot, "#opt-model-path", "model")
        await type_into(pilot, "#opt-train-batch_size", "abc")
        await pilot.press("ctrl+s")
        error = text_of(form.query_one("#form-error"))
        bad = root / "bad.yaml"
        bad.write_text("train:\n  batch_size: abc\n")
        with pytest.raises(MacftError) as loader:
            recipe_mod.load(bad)
        assert error == "<new recipe>: " + str(loader.value).split(": ", 1)[1]
        assert error == "<new recipe>: key 'train.batch_size' must be int, got 'abc'"
        assert not (root / "recipes" / "quick.yaml").exists()

        await type_into(pilot, "#opt-train-batch_size", "2")
        await type_into(pilot, "#opt-train-learning_rate", "3e-4")
        # A choice with the keyboard: open the select, pick "drop".
        form.query_one("#opt-data-overlong").focus()
        await pilot.press("enter", "down", "enter")
        await pilot.pause()
        assert form.query_one("#opt-data-overlong", Select).value == "drop"
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert text_of(form.query_one("#form-error")) == ""
    saved = root / "recipes" / "quick.yaml"
    assert saved.read_text().startswith("# macft run recipes/quick.yaml\n")
    recipe = recipe_mod.load(saved)
    assert (recipe.name, recipe.train.batch_size, recipe.train.learning_rate,
            recipe.data.overlong) == ("quick", 2, 3e-4, "drop")
    assert recipe.lora == recipe_mod.LoraSpec()  # untouched options keep their defaults


def test_recipe_form_validates_like_the_loader_and_saves_yaml(home):
    run(_form(home))


async def _quit_while_training(root: Path) -> list[str]:
    recipe = recipe_mod.from_dict({
        "name": "long", "model": "model", "lora": {"rank": 4},
        "data": {"train": "train.jsonl", "max_length": 64},
        "train": {"steps": 100000, "batch_size": 2, "save_every": 0}})
    app = MacftApp(root=root)
    async with app.run_test(size=SIZE) as pilot:
        state = app.start_training(recipe)
        app.open_run(recipe.run_dir)
        await wait_for(pilot, lambda: state.step >= 2, 120, "step 2")
        titles = [c.title for c in app.get_system_commands(app.screen)]
        await press_now(pilot, "q")  # quitting mid-run asks; s stops it with a checkpoint
        await wait_for(pilot, lambda: "Stop with a checkpoint" in str(
            app.screen.query_one("#confirm-buttons").children[1].label), 10, "the question")
        await press_now(pilot, "s")
        await wait_for(pilot, lambda: app.return_code is not None, 120, "the app to exit")
    return titles


def test_quitting_while_training_stops_the_run_with_a_checkpoint(home):
    titles = run(_quit_while_training(home))
    assert {"Home", "New recipe", "Recipe: quickstart", "Run: runs/long", "Compare: runs/long",
            "Export: runs/long"} <= set(titles)
    history = ev.read_metrics(home / "runs" / "long" / "metrics.jsonl")
    done = [e for e in history if e["event"] == "Finished"]
    assert [e["reason"] for e in done] == ["stopped"]
    assert (home / "runs" / "long" / "checkpoints" / "latest").read_text() == \
        f"step-{done[0]['step']:07d}"


async def _failing_start(root: Path) -> str:
    app = MacftApp(root=root)
    async with app.run_test(size=SIZE) as pilot:
        app.open_recipe(None)
        await pilot.pause()
        await type_into(pilot, "#opt-model-path", "nowhere/at/all")
        await type_into(pilot, "#opt-data-train", "train.jsonl")
        await press_now(pilot, "ctrl+r")
        monitor = app.screen
        await wait_for(pilot, lambda: monitor.state.status == "failed" and app.live is None,
                       60, "the failure")
        assert monitor.state.resumable
        return text_of(monitor.query_one("#run-log"))


def test_a_run_that_cannot_start_shows_why(home):
    assert run(_failing_start(home)).endswith("nowhere/at/all: model path not found")


# ----- data inspector ------------------------------------------------------------------------

async def _inspector(root: Path) -> None:
    long_answer = {"messages": [{"role": "user", "content": "hello"},
                                {"role": "assistant", "content": "the answer is 42. " * 20}]}
    long_question = {"messages": [{"role": "user", "content": "hello " * 30},
                                  {"role": "assistant", "content": "42"}]}
    bad = {"messages": [{"role": "robot", "content": "beep"}]}
    write_chat_rows(root / "data.jsonl", 3, extra=[long_answer, long_question, bad])
    recipe = recipe_mod.from_dict({"model": "model",
                                   "data": {"train": "data.jsonl", "max_length": 64}})
    app = MacftApp(root=root)
    async with app.run_test(size=SIZE) as pilot:
        app.open_data(recipe)
        screen = app.screen
        assert isinstance(screen, DataScreen)
        await wait_for(pilot, lambda: screen.report is not None, what="the data report")
        summary = text_of(screen.query_one("#data-summary"))
        assert summary.startswith("train: data.jsonl · 6 rows · format chat · max_length 64 "
                                  "(truncate)\nkept 4 · tokens ")
        assert "truncated 2 · dropped 1 · rejected 1" in summary
        assert summary.endswith("training stops at the first rejected row: data.jsonl:6: key "
                                "'messages[0].role' must be one of system, user, assistant, "
                                "tool; got 'robot'")
        table = screen.query_one("#data-rows", DataTable)
        statuses = [str(table.get_row_at(i)[3]) for i in range(table.row_count)]
        assert statuses == ["ok", "ok", "ok", "truncated", "dropped: no trained token",
                            "rejected"]
        rows = screen.report.rows
        assert [r.kept for r in rows[3:]] == [64, 0, 0] and rows[4].tokens > 64

        # Row 1 through the chat template: exactly the assistant turn is trained.
        text = screen.query_one("#example-text").content
        trained = "".join(text.plain[s.start:s.end] for s in text.spans if s.style == TRAINED)
        assert trained == "the answer is 00<|im_end|>"
        assert text.plain.startswith("<|im_start|>system\nanswer<|im_end|>\n<|im_start|>user")
        ids = screen.tokenizer.encode("the answer is 00<|im_end|>", add_special_tokens=False)
        assert rows[0].trained == sum(rows[0].mask) == len(ids)

        table.move_cursor(row=3)
        await pilot.pause()
        cut = screen.query_one("#example-text").content.plain
        assert "✂ max_length 64 ✂" in cut
        table.move_cursor(row=5)
        await pilot.pause()
        assert "must be one of" in screen.query_one("#example-text").content.plain
        # Six bins of 24 tokens up to the longest row; bins past max_length are marked.
        assert text_of(screen.query_one("#histogram")).splitlines() == [
            "  0-23  │                   0",
            " 24-47  │██████████████████ 3",
            " 48-71  │                   0 ✂",
            " 72-95  │                   0 ✂",
            " 96-119 │                   0 ✂",
            "120-143 │████████████       2 ✂"]


def test_data_inspector_shows_masks_truncation_and_rejections(home):
    run(_inspector(home))


# ----- compare and export on a finished run ----------------------------------------------------

@pytest.fixture(scope="module")
def finished_run(work, tmp_path_factory) -> Path:
    return train_tiny_run(work, tmp_path_factory.mktemp("finished") / "runs" / "tiny", 6,
                          eval={"max_tokens": 8})


async def _compare(run_dir: Path, root: Path) -> tuple[str, str]:
    app = MacftApp(root=root)
    async with app.run_test(size=SIZE) as pilot:
        app.open_compare(run_dir)
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, CompareScreen)
        await pilot.press(*"hello")
        await press_now(pilot, "enter")
        await wait_for(pilot, lambda: "greedy" in text_of(screen.query_one("#compare-status")),
                       what="both answers")
        return (text_of(screen.query_one("#base-answer")),
                text_of(screen.query_one("#tuned-answer")))


def test_compare_answers_with_base_and_tuned_model(finished_run, home):
    from macft.generation import chat_prompt, greedy
    from macft.models.load import load_base, load_for_inference

    base_text, tuned_text = run(_compare(finished_run, home))
    expected = []
    for loaded in (load_base(recipe_mod.load(finished_run / "recipe.yaml").model.path),
                   load_for_inference(str(finished_run))[0]):
        ids = chat_prompt(loaded.tokenizer, "hello")
        expected.append(greedy(loaded.model, loaded.tokenizer, [ids], 8)[0])
    assert [base_text, tuned_text] == expected
    assert base_text != tuned_text  # the adapter changed the answer


async def _export(run_dir: Path, root: Path, out: Path) -> str:
    app = MacftApp(root=root)
    async with app.run_test(size=SIZE) as pilot:
        app.open_export(run_dir)
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, ExportScreen)
        screen.query_one("#export-target", Select).value = "hf"
        await pilot.pause()
        await type_into(pilot, "#export-out", str(out))
        await pilot.click("#export-write")
        return await wait_for(pilot, lambda: (t := text_of(screen.query_one(
            "#export-status"))).startswith("fused ") and t, what="the fused folder")


async def _export_gguf(run_dir: Path, root: Path, out: Path, quant: str) -> str:
    from textual.widgets import Select

    app = MacftApp(root=root)
    async with app.run_test(size=SIZE) as pilot:
        app.open_export(run_dir)
        await pilot.pause()
        screen = app.screen
        screen.query_one("#export-target", Select).value = "gguf"
        await pilot.pause()
        await type_into(pilot, "#export-out", str(out))
        screen.query_one("#export-quant", Select).value = quant
        await pilot.click("#export-write")
        return await wait_for(pilot, lambda: (t := text_of(screen.query_one(
            "#export-status"))).startswith("wrote ") and "macft chat" in t and t,
            what="the GGUF file")


def test_export_writes_a_gguf_that_reads_back(finished_run, home):
    from gguf import GGUFReader

    status = run(_export_gguf(finished_run, home, Path("tiny.gguf"), "q8_0"))
    assert status.splitlines()[0].startswith("wrote tiny.gguf (q8_0, ")
    assert "14 adapter layers fused" in status.splitlines()[0]
    assert status.splitlines()[-1] == "run it: macft chat tiny.gguf"
    reader = GGUFReader(home / "tiny.gguf")
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.0.attn_q.weight"] == "Q8_0"
    assert types["token_embd.weight"] in ("Q8_0", "F16", "F32")


def test_export_fuses_into_a_folder(finished_run, home):
    status = run(_export(finished_run, home, Path("fused")))
    assert status == "fused 14 adapter layers into fused"
    out = home / "fused"
    assert {"config.json", "model.safetensors", "macft.json", "tokenizer.json"} <= \
        {p.name for p in out.iterdir()}


# ----- the pieces under the screens ------------------------------------------------------------

def _step(n: int, total: int = 100, loss: float = 1.0) -> ev.Step:
    return ev.Step(n, total, loss, 1e-3, 10, 100.0, 0.1 * n, 1.0, 0.0, 0.0)


def test_run_state_forgets_steps_replayed_after_a_resume(tmp_path):
    started = dict(run_dir="r", model="m", method="lora", device="cpu", dtype="float32",
                   blas="x", total_steps=6, trainable_params=1, total_params=2,
                   train_examples=3)
    state = RunState("r")
    state.apply(ev.RunStarted(start_step=0, **started))
    for n in range(1, 6):
        state.apply(_step(n, 6, loss=10.0 - n))
    assert state.status == "running" and state.step == 5
    state.apply(ev.RunStarted(start_step=3, **started))   # killed after the step-3 checkpoint
    assert [s for s, _ in state.losses] == [1, 2, 3] and state.step == 3
    for n in range(4, 7):
        state.apply(_step(n, 6, loss=1.0))
    state.apply(ev.Finished(6, "completed", None, "a", 1.0))
    assert [s for s, _ in state.losses] == [1, 2, 3, 4, 5, 6]
    assert state.status == "finished" and len(state.learning_rates) == 6


def test_chart_bars_follow_the_loss():
    train = [(n, 4.0 - 0.1 * n) for n in range(1, 31)]
    lines = [line.plain for line in chart_lines(train, [(10, 3.5)], width=48, height=10,
                                                total_steps=60)]
    assert len(lines) == 10 and all(len(line) == 48 for line in lines)
    plot = [line[9:] for line in lines[:-1]]
    heights = [sum(row[c] != " " for row in plot) for c in range(39)]
    assert heights[0] == 9 and heights[0] > heights[18] > 0
    assert heights[20:] == [0] * 19                # steps 31-60 are still to come
    assert sum(row.count("●") for row in plot) == 1
    assert lines[0].startswith("    3.9 ┤") and lines[-1].endswith("60")
