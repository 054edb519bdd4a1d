"""The monitor's phase line, memory gauge and end-of-run bell; `?` help on every screen; the
export screen's targets (an Ollama folder written by the CLI's own export), its overwrite
question, and chat with the written GGUF. Driven with Textual's Pilot (issue 20)."""

from __future__ import annotations

from pathlib import Path

import pytest

import macft  # noqa: F401  (BLAS before mlx)
from test_tui_support import SIZE, linked_home, make_workdir, run, text_of, \
    train_tiny_run, type_into, wait_for
from textual.widgets import Button, Select

from macft import events as ev, recipe as recipe_mod
from macft.tui import app as app_mod
from macft.tui.app import MacftApp
from macft.tui.screens import monitor as monitor_mod
from macft.tui.screens.chat import ChatScreen
from macft.tui.screens.confirm import ConfirmScreen
from macft.tui.screens.export import ExportScreen
from macft.tui.screens.help import HelpScreen
from macft.tui.screens.home import HomeScreen
from macft.tui.screens.monitor import MonitorScreen


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return make_workdir(tmp_path_factory.mktemp("monitor-export"))


@pytest.fixture
def home(tmp_path, monkeypatch, work) -> Path:
    monkeypatch.chdir(tmp_path)
    return linked_home(tmp_path, work)


# ----- a trainer that sends the events a test gives it ------------------------------------------

class FedTrainer:
    """Stands in for ``TrainerProcess``: ``poll()`` returns what the test queued."""

    made: list["FedTrainer"] = []

    def __init__(self, recipe, cwd=None):
        self.queue: list[ev.Event] = []
        self.paused = self.stopping = self.ended = False
        FedTrainer.made.append(self)

    def poll(self) -> list[ev.Event]:
        out, self.queue = self.queue, []
        return out


def started(total: int) -> ev.RunStarted:
    return ev.RunStarted(run_dir="runs/fed", model="model", method="lora", device="cpu",
                         dtype="float32", blas="openblas", total_steps=total, start_step=0,
                         trainable_params=10, total_params=100, train_examples=24)


def step(n: int, total: int, eta: float = 83.0, memory: float = 6.0, peak: float = 9.0):
    return ev.Step(step=n, total_steps=total, loss=2.0 - n / total, learning_rate=1e-3,
                   tokens=100, tokens_per_sec=1000.0, elapsed=float(n), eta=eta,
                   peak_memory_gb=peak, epoch=n / 100, memory_gb=memory)


async def _fed_monitor(root: Path, monkeypatch, feed, ending: list[ev.Event] | None = None):
    """Start a recipe with the fed trainer, feed ``feed`` and return the monitor's status line
    and gauge; with ``ending``, feed those, end the trainer and poll twice more."""
    monkeypatch.setattr(app_mod, "TrainerProcess", FedTrainer)
    monkeypatch.setattr(monitor_mod, "machine_gb", lambda: 24.0)
    app = MacftApp(root=root)
    bells, notes = [], []
    async with app.run_test(size=(120, 36)) as pilot:
        app.bell = lambda: bells.append(1)
        app.notify = lambda message, **kw: notes.append((message, kw.get("severity")))
        recipe = recipe_mod.from_dict({"name": "fed", "model": "model",
                                       "data": {"train": "train.jsonl"},
                                       "output": "runs/fed"})
        app.start_training(recipe)
        app.open_run(recipe.run_dir)
        await pilot.pause()
        trainer = FedTrainer.made[-1]
        shown = []
        for events in feed:
            trainer.queue += events
            app.poll_live()
            await pilot.pause()
            screen = app.screen
            assert isinstance(screen, MonitorScreen)
            shown.append((text_of(screen.query_one("#run-status")),
                          text_of(screen.query_one("#memory"))))
        if ending is not None:
            trainer.queue += ending
            trainer.ended = True
            for _ in range(3):          # the ending is seen once, however often polled
                app.poll_live()
                await pilot.pause()
        return shown, bells, notes


def test_phase_line_shows_training_then_evaluation_with_its_eta(home, monkeypatch):
    total = 400
    feed = [[started(total)] + [step(n, total) for n in range(1, 121)],
            [ev.Progress(ev.EVALUATING, 2, 4)],
            [ev.Progress(ev.EVALUATING, 4, 4), ev.Eval(120, 1.5, 1.5, True)],
            [step(121, total, eta=60.0)]]
    shown, _, _ = run(_fed_monitor(home, monkeypatch, feed))
    assert [status for status, _ in shown] == [
        "● running   training 120/400   ETA 01:23   epoch 1.20",
        "● running   evaluating 2/4   ETA 01:23   epoch 1.20",
        "● running   training 120/400   ETA 01:23   epoch 1.20",
        "● running   training 121/400   ETA 01:00   epoch 1.21"]


def test_memory_gauge_against_the_machine(home, monkeypatch):
    feed = [[started(10), step(1, 10, memory=6.0, peak=9.0)],
            [step(2, 10, memory=12.0, peak=12.0)]]
    shown, _, _ = run(_fed_monitor(home, monkeypatch, feed))
    assert [gauge for _, gauge in shown] == [
        "memory ██▒▒░░░░░░ 6.0 / 24.0 GB  peak 9.0",
        "memory █████░░░░░ 12.0 / 24.0 GB"]


def test_memory_gauge_of_a_run_recorded_without_current_memory_and_of_a_tiny_one():
    # Step events written before memory_gb existed: the peak stands for the current value.
    assert monitor_mod.memory_gauge(0.0, 3.0, 24.0, width=8).plain == \
        "memory █░░░░░░░ 3.0 / 24.0 GB"
    assert monitor_mod.memory_gauge(0.012, 0.0304, 24.0, width=8).plain == \
        "memory ░░░░░░░░ 12 MB / 24.0 GB  peak 30 MB"
    # Too narrow for the peak (a monitor at 80 columns): the bar and the numbers stay.
    assert monitor_mod.memory_gauge(0.012, 0.0304, 24.0, width=8, fit=36).plain == \
        "memory ░░░░░░░░ 12 MB / 24.0 GB"


@pytest.mark.parametrize("end, said, severity", [
    (ev.Finished(10, "completed", 1.25, "runs/fed", 5.0),
     "runs/fed finished at step 10, best val loss 1.2500", None),
    (ev.Failed(3, "out of memory"), "runs/fed failed: out of memory", "error")])
def test_bell_and_notification_once_when_a_run_ends(home, monkeypatch, end, said, severity):
    feed = [[started(10)] + [step(n, 10) for n in range(1, 4)]]
    _, bells, notes = run(_fed_monitor(home, monkeypatch, feed, ending=[end]))
    assert bells == [1]
    assert [n for n in notes if "runs/fed" in n[0]] == [(said, severity)]


# ----- the chart: validation as a line, smoothing -------------------------------------------------

def test_ema_is_debiased():
    from macft.tui.widgets.loss_chart import ema

    assert ema([(1, 1.0), (2, 0.0), (3, 0.0)], weight=0.5) == \
        [(1, 1.0), (2, pytest.approx(1 / 3)), (3, pytest.approx(1 / 7))]


def test_validation_is_a_line_and_smoothing_draws_the_average_over_faint_bars():
    from macft.tui.widgets.loss_chart import FAINT, TRAIN, chart_lines

    train = [(n, 4.0 - 0.05 * n + (0.5 if n % 2 else 0.0)) for n in range(1, 41)]
    val = [(10, 3.8), (20, 3.4), (40, 2.6)]
    plain = chart_lines(train, val, width=49, height=11, total_steps=40)
    plot = [line.plain[9:] for line in plain[:-1]]          # 40 columns: one a step
    assert sum(row.count("●") for row in plot) == 3
    columns = {c for row in plot for c, ch in enumerate(row) if ch == "·"}
    assert columns == set(range(10, 19)) | set(range(20, 39))   # between the evaluations
    assert not any("━" in row for row in plot)
    smooth = chart_lines(train, [], width=49, height=11, total_steps=40, smooth=True)
    rows = [line.plain[9:] for line in smooth[:-1]]
    assert [sum(row[c] == "━" for row in rows) for c in range(40)] == [1] * 40
    styles = {str(span.style) for line in smooth[:-1] for span in line.spans}
    assert FAINT in styles and TRAIN not in styles           # the raw bars: faint
    # The average moves less from step to step than the raw loss.
    height = {c: next(r for r, row in enumerate(rows) if row[c] == "━") for c in range(40)}
    assert max(abs(height[c + 1] - height[c]) for c in range(39)) <= 1


async def _smooth_key(root: Path):
    app = MacftApp(root=root)
    async with app.run_test(size=SIZE) as pilot:
        app.open_run(root / "runs" / "demo")
        await pilot.pause()
        chart = app.screen.query_one("#chart")
        seen = [(chart.smooth, str(chart.border_title))]
        await pilot.press("m")
        seen.append((chart.smooth, str(chart.border_title)))
        await pilot.press("m")
        seen.append((chart.smooth, str(chart.border_title)))
        return seen


def test_m_toggles_smoothing_in_the_monitor(home):
    from test_tui_snapshots import fake_run

    fake_run(home, "demo", 20, 20, "completed", 2_000_000_000)
    (off, title_off), (on, title_on), (again, _) = run(_smooth_key(home))
    assert (off, on, again) == (False, True, False)
    assert "average" in title_on and "raw" in title_on and "average" not in title_off


# ----- ? help ------------------------------------------------------------------------------------

async def _help(root: Path, open_screen):
    app = MacftApp(root=root)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        open_screen(app)
        await pilot.pause()
        under = app.screen
        under.set_focus(None)           # an Input would take the ? as text
        await pilot.press("question_mark")
        await pilot.pause()
        shown = app.screen
        assert isinstance(shown, HelpScreen)
        keys = text_of(shown.query_one("#help-keys"))
        about = text_of(shown.query_one("#help-about"))
        await pilot.press("escape")
        await pilot.pause()
        return type(under), keys, about, app.screen is under


def _descriptions(screen_type) -> set[str]:
    return {b.description for b in screen_type.BINDINGS if b.description}


def test_help_lists_the_monitor_keys_and_closes_with_esc(home):
    from test_tui_snapshots import fake_run

    fake_run(home, "demo", 20, 20, "completed", 2_000_000_000)
    under, keys, about, back = run(_help(home, lambda app: app.open_run(home / "runs/demo")))
    assert under is MonitorScreen and back
    lines = keys.splitlines()
    for description in _descriptions(MonitorScreen) | {"Quit", "Help"}:
        assert any(line.split(None, 1)[1].startswith(description) for line in lines), \
            (description, keys)
    by_key = {line.split(None, 1)[0]: line.split(None, 1)[1] for line in lines}
    assert by_key["m"] == "Smooth" and by_key["v"] == "Evaluate"     # hidden in the footer
    assert by_key["p"] == "Pause  (not now)"        # a recorded run: nothing to pause
    assert by_key["esc"] == "Back" and by_key["q/^q"] == "Quit" and by_key["?"] == "Help"
    assert about == " ".join(MonitorScreen.HELP.split())


def test_help_on_home_and_export_lists_their_own_keys(home):
    from test_tui_snapshots import fake_run

    fake_run(home, "demo", 5, 5, "completed", 2_000_000_000)
    under, keys, about, _ = run(_help(home, lambda app: None))
    assert under is HomeScreen
    assert _descriptions(HomeScreen) <= {line.split(None, 1)[1].removesuffix("  (not now)")
                                         for line in keys.splitlines()}
    assert about.startswith("Home: the shipped and local recipes")
    under, keys, about, _ = run(_help(home, lambda app: app.open_export(home / "runs/demo")))
    assert under is ExportScreen and "Pause" not in keys and "Back" in keys
    assert about.startswith("Writes this run's model where you run it")


# ----- export --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def finished_run(work, tmp_path_factory) -> Path:
    return train_tiny_run(work, tmp_path_factory.mktemp("finished") / "runs" / "tiny", 4)


async def _export(run_dir: Path, root: Path, target: str, out: str, answer: str | None = None,
                  chat: str | None = None, verify: bool = False):
    """Write ``target`` to ``out`` from the export screen (``verify``: ticked); ``answer`` the
    overwrite question (y/n) if one comes; ``chat``: then send this from the Chat screen."""
    app = MacftApp(root=root)
    async with app.run_test(size=SIZE) as pilot:
        app.open_export(run_dir)
        await pilot.pause()
        screen = app.screen
        screen.query_one("#export-target", Select).value = target
        await pilot.pause()
        if verify:
            await pilot.click("#export-verify")
        await type_into(pilot, "#export-out", out)
        await pilot.click("#export-write")
        await pilot.pause()
        question = None
        if isinstance(app.screen, ConfirmScreen):
            question = text_of(app.screen.query_one("#confirm-question"))
            await pilot.press(answer)
            await pilot.pause()
        status = await wait_for(pilot, lambda: not screen.query_one("#export-write",
                                                                    Button).disabled and
                                text_of(screen.query_one("#export-status")), 120,
                                "the export to end")
        replies = None
        if chat is not None and not screen.query_one("#export-chat", Button).disabled:
            await pilot.click("#export-chat")
            await pilot.pause()
            assert isinstance(app.screen, ChatScreen)
            chat_screen = app.screen
            await pilot.press(*chat, "enter")
            await wait_for(pilot, lambda: len(chat_screen.messages) == 2, 120, "the reply")
            replies = [m["content"] for m in chat_screen.messages]
        return question, status, screen.chat_path, replies


def test_export_writes_an_ollama_folder_as_the_cli_does(finished_run, home):
    from macft.cli import main

    question, status, chat_path, _ = run(_export(finished_run, home, "ollama", "ollama-tui"))
    assert question is None
    out = home / "ollama-tui"
    lines = status.splitlines()
    assert lines[0].startswith("wrote ollama-tui/tiny.gguf (f16, "), status
    assert lines[-2] == "load it into Ollama: ollama create tiny -f ollama-tui/Modelfile", status
    assert lines[-1] == "run it: macft chat ollama-tui/tiny.gguf"
    modelfile = (out / "Modelfile").read_text()
    assert modelfile.splitlines()[0] == "FROM ./tiny.gguf"
    assert any(line.startswith('TEMPLATE """') for line in modelfile.splitlines()), modelfile
    assert "<|im_end|>" in modelfile                   # the tiny model's ChatML stop
    assert chat_path == Path("ollama-tui/tiny.gguf") and (out / "tiny.gguf").stat().st_size
    # The same registry and writer as `macft export RUN --to ollama DIR`: the same bytes.
    assert main(["export", str(finished_run), "--to", "ollama", str(home / "ollama-cli")]) == 0
    assert (home / "ollama-cli" / "Modelfile").read_text() == modelfile
    assert (home / "ollama-cli" / "tiny.gguf").read_bytes() == (out / "tiny.gguf").read_bytes()


def test_overwriting_asks_and_no_leaves_the_file_alone(finished_run, home):
    target = home / "m.gguf"
    target.write_bytes(b"keep me")
    question, status, chat_path, _ = run(_export(finished_run, home, "gguf", "m.gguf", "n"))
    assert question == "m.gguf exists. Overwrite?"
    assert status == "nothing written" and chat_path is None
    assert target.read_bytes() == b"keep me"
    question, status, _, _ = run(_export(finished_run, home, "gguf", "m.gguf", "y"))
    assert question == "m.gguf exists. Overwrite?"
    assert status.startswith("wrote m.gguf (f16, ") and target.read_bytes()[:4] == b"GGUF"


def test_an_ollama_folder_with_a_modelfile_asks_too(finished_run, home):
    (home / "o").mkdir()
    (home / "o" / "Modelfile").write_text("FROM elsewhere\n")
    question, status, _, _ = run(_export(finished_run, home, "ollama", "o", "n"))
    assert question == "o/Modelfile exists. Overwrite?"
    assert (home / "o" / "Modelfile").read_text() == "FROM elsewhere\n"
    assert not (home / "o" / "tiny.gguf").exists()


def test_hf_folder_export_asks_like_the_cli_and_replaces_only_a_fused_folder(finished_run,
                                                                              home, capsys):
    from macft.cli import main

    out = home / "hf"
    assert main(["export", str(finished_run), "--hf", str(out)]) == 0
    weights = out / "model.safetensors"
    before = weights.stat().st_mtime_ns
    capsys.readouterr()
    assert main(["export", str(finished_run), "--hf", str(out)]) == 2
    assert capsys.readouterr().err.strip() == \
        f"macft: error: {out}: exists; pass --force to overwrite it"
    question, status, chat_path, _ = run(_export(finished_run, home, "hf", "hf", "y"))
    assert question == "hf exists. Overwrite?"
    assert status == "fused 14 adapter layers into hf" and chat_path is None
    assert weights.stat().st_mtime_ns != before
    mine = home / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    assert main(["export", str(finished_run), "--hf", str(mine), "--force"]) == 2
    assert "not a folder macft fused (no macft.json)" in capsys.readouterr().err
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


def test_verify_checks_the_written_gguf_against_llama_cpp(finished_run, home):
    pytest.importorskip("llama_cpp", exc_type=ImportError)
    _, status, _, _ = run(_export(finished_run, home, "gguf", "v.gguf", verify=True))
    lines = status.splitlines()
    assert lines[0].startswith("wrote v.gguf (f16, ") and \
        lines[1] == "verified with llama.cpp (f16 vs MLX):", status
    assert lines[-1] == "run it: macft chat v.gguf"


def test_the_hf_folder_cannot_be_verified(finished_run, home):
    async def go():
        app = MacftApp(root=home)
        async with app.run_test(size=SIZE) as pilot:
            app.open_export(finished_run)
            await pilot.pause()
            screen = app.screen
            seen = []
            for target in ("gguf", "hf", "ollama"):
                screen.query_one("#export-target", Select).value = target
                await pilot.pause()
                seen.append((screen.query_one("#export-verify").disabled,
                             screen.query_one("#export-quant").disabled,
                             screen.query_one("#export-out").value))
            return seen
    run_dir = finished_run
    assert run(go()) == [(False, False, str(run_dir / "tiny.gguf")),
                         (True, True, str(run_dir / "fused")),
                         (False, False, str(run_dir / "ollama"))]


def test_chat_answers_with_the_written_gguf_as_macft_chat_does(finished_run, home):
    pytest.importorskip("llama_cpp", exc_type=ImportError)
    from macft.export.chat import chat

    _, _, chat_path, replies = run(_export(finished_run, home, "gguf", "c.gguf", chat="hello"))
    pieces: list[str] = []
    assert chat(home / "c.gguf", prompt="hello", emit=pieces.append) == 0
    assert replies == ["hello", "".join(pieces).removesuffix("\n")] and replies[1].strip()


# ----- the engine side: a validation pass reports its batches -----------------------------------

def test_validation_reports_its_batches_and_the_eta_counts_it(work, tmp_path):
    from macft.events import Collect, Eval, Progress, Step
    from macft.train.loop import evals_left, train

    recipe = recipe_mod.from_dict({
        "model": str(work / "model"), "lora": {"rank": 4},
        "data": {"train": str(work / "train.jsonl"), "valid": str(work / "valid.jsonl"),
                 "max_length": 64},
        "train": {"steps": 6, "batch_size": 4, "eval_every": 3, "save_every": 0},
        "output": str(tmp_path / "r")})
    sink = Collect()
    train(recipe, [sink])
    kinds = [(type(e).__name__, getattr(e, "step", None), getattr(e, "done", None))
             for e in sink.events if isinstance(e, (Step, Progress, Eval))]
    # 6 validation rows in batches of 4: two batches, each pass from 0/2 to 2/2.
    for at in (3, 6):
        i = kinds.index(("Step", at, None))
        assert kinds[i + 1] == ("Progress", None, 0), kinds
        j = kinds.index(("Eval", at, None))
        assert kinds[j - 1] == ("Progress", None, 2), kinds
    assert {(e.task, e.total) for e in sink.of(Progress)} == {(ev.EVALUATING, 2)}
    # Passes still to come, the one at this step included (its Step is sent first).
    assert [evals_left(s, 6, 3) for s in range(1, 7)] == [2, 2, 2, 1, 1, 1]
    assert [evals_left(s, 10, 4) for s in (1, 4, 5, 8, 9, 10)] == [3, 3, 2, 2, 1, 1]
    assert evals_left(1, 5, 0) == 1
