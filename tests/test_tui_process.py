"""The TUI and `macft run` on one run folder (issue 20): training is a process of its own, the
run lock lets one trainer in and the second refuses in one line, the TUI attaches to (and
steers) a trainer it did not start, and quitting can leave the run training in the background.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import macft  # noqa: F401  (BLAS before mlx)
from test_tui_support import SIZE, make_workdir, press_now, run, text_of, wait_for

from macft import events as ev, recipe as recipe_mod, runs
from macft.tui.app import MacftApp
from macft.tui.screens.monitor import MonitorScreen
from macft.tui.screens.recipe import RecipeScreen

pytestmark = pytest.mark.slow    # `macft run` children: MLX import and model load each time
ROOT = Path(__file__).resolve().parents[1]
RECIPE = ("name: long\nmodel: model\nlora: {rank: 4}\n"
          "data: {train: train.jsonl, max_length: 64}\n"
          "train: {steps: 100000, batch_size: 2, save_every: 0, eval_every: 0}\n")


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    make_workdir(tmp_path)
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "long.yaml").write_text(RECIPE)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def cli_run(home: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    return subprocess.Popen([sys.executable, "-m", "macft", "run", "recipes/long.yaml"],
                            cwd=home, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def wait_until(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)
    return value


def steps(run_dir: Path) -> list[int]:
    return [e["step"] for e in ev.read_metrics(runs.metrics_path(run_dir))
            if e["event"] == "Step"]


async def _tui_meets_a_shell_run(home: Path, pid: int) -> tuple[str, object]:
    run_dir = home / "runs" / "long"
    app = MacftApp(root=home)
    async with app.run_test(size=SIZE) as pilot:
        app.open_recipe(home / "recipes" / "long.yaml")
        await pilot.pause()
        await press_now(pilot, "ctrl+r")
        assert isinstance(app.screen, RecipeScreen) and app.live is None
        refusal = text_of(app.screen.query_one("#form-error"))
        # Home lists it as running; opening it attaches to the shell's trainer.
        await press_now(pilot, "escape")
        app.open_run(run_dir)
        await pilot.pause()
        monitor = app.screen
        assert isinstance(monitor, MonitorScreen)
        assert app.live is not None and app.live.trainer.pid == pid
        seen = monitor.state.step
        await wait_for(pilot, lambda: monitor.state.step > seen, 60, "a new step")
        await press_now(pilot, "s")                 # steer it: stop with a checkpoint
        await wait_for(pilot, lambda: app.live is None, 120, "the shell's run to stop")
        return refusal, monitor.state.status


def test_a_shell_run_refuses_a_second_trainer_and_the_tui_steers_it(home):
    cli = cli_run(home)
    run_dir = home / "runs" / "long"
    try:
        holder = wait_until(lambda: runs.trainer_alive(run_dir), 120, "the CLI's lock")
        assert holder.pid == cli.pid
        wait_until(lambda: steps(run_dir), 120, "the CLI's first step")
        refusal, status = run(_tui_meets_a_shell_run(home, cli.pid))
    finally:
        try:
            cli.wait(60)                    # it exits by itself once stopped
        except subprocess.TimeoutExpired:
            cli.send_signal(signal.SIGTERM)
            cli.wait(120)
    assert refusal.startswith("recipes/long.yaml: ") or refusal.startswith(str(home)), refusal
    assert f"already being trained by pid {cli.pid}" in refusal and "\n" not in refusal
    assert status == "stopped"
    assert cli.returncode == 128 + signal.SIGTERM           # stopped by the TUI's SIGTERM
    done = [e for e in ev.read_metrics(runs.metrics_path(run_dir)) if e["event"] == "Finished"]
    assert [e["reason"] for e in done] == ["stopped"]
    assert (run_dir / "checkpoints" / "latest").read_text() == f"step-{done[0]['step']:07d}"


async def train_long(app, pilot, home: Path, steps: int):
    """Start recipes/long.yaml from the app, open its monitor, wait for ``steps`` steps."""
    recipe = recipe_mod.load(home / "recipes" / "long.yaml")
    state = app.start_training(recipe)
    app.open_run(recipe.run_dir)
    await wait_for(pilot, lambda: state.step >= steps, 120, f"{steps} step(s)")
    return state


async def _start_then_keep(home: Path) -> int:
    app = MacftApp(root=home)
    async with app.run_test(size=SIZE) as pilot:
        await train_long(app, pilot, home, 1)
        pid = app.live.trainer.pid
        # The shell cannot train the same folder meanwhile: one line, non-zero exit.
        second = cli_run(home)
        _, err = second.communicate(timeout=120)
        assert second.returncode != 0
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert len(lines) == 1 and f"already being trained by pid {pid}" in lines[0], err
        await press_now(pilot, "q")
        await wait_for(pilot, lambda: "Keep training" in str(
            app.screen.query_one("#confirm-buttons").children[0].label), 10, "the question")
        await press_now(pilot, "k")                  # keep training in the background
        await wait_for(pilot, lambda: app.return_code is not None, 30, "the app to exit")
    return pid


async def _reopen_and_stop(home: Path, pid: int) -> str:
    app = MacftApp(root=home)
    async with app.run_test(size=SIZE) as pilot:
        rows = app.screen.query_one("#runs")
        assert [str(c) for c in rows.get_row_at(0)[:2]] == ["runs/long", "running"]
        app.open_run(home / "runs" / "long")
        await pilot.pause()
        assert app.live is not None and app.live.trainer.pid == pid     # reattached
        await press_now(pilot, "s")
        await wait_for(pilot, lambda: app.live is None, 120, "the background run to stop")
        return app.screen.state.status


def test_quit_keeps_the_run_training_and_a_new_tui_reattaches(home):
    pid = run(_start_then_keep(home))
    run_dir = home / "runs" / "long"
    try:
        assert runs.trainer_alive(run_dir).pid == pid         # still training, no TUI
        before = len(steps(run_dir))
        wait_until(lambda: len(steps(run_dir)) > before, 60, "steps without a TUI")
        assert run(_reopen_and_stop(home, pid)) == "stopped"
    finally:
        if runs.trainer_alive(run_dir) is not None:
            os.kill(pid, signal.SIGTERM)
            wait_until(lambda: runs.trainer_alive(run_dir) is None, 120, "the trainer to end")
    assert (run_dir / "checkpoints" / "latest").is_file()


def _tmux(sock: str, *args: str) -> str:
    return subprocess.run(["tmux", "-L", sock, *args], capture_output=True, text=True,
                          check=True).stdout


@pytest.mark.skipif(subprocess.run(["which", "tmux"], capture_output=True).returncode != 0,
                    reason="tmux is not installed")
def test_killing_the_terminal_mid_run_leaves_it_training_and_a_reopened_tui_stops_it(home):
    """tmux kill-session while the TUI trains: the trainer (its own session) carries on;
    `macft tui runs/long` in a new terminal attaches, and s stops it with a checkpoint."""
    sock = f"macft-h20-{os.getpid()}"
    run_dir = home / "runs" / "long"
    env = f"PYTHONPATH={ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    tui = f"cd {home} && env {env} {sys.executable} -m macft tui"
    try:
        _tmux(sock, "new-session", "-d", "-s", "a", "-x", "120", "-y", "36",
              f"{tui} recipes/long.yaml")
        wait_until(lambda: "Start run" in _tmux(sock, "capture-pane", "-p", "-t", "a"), 60,
                   "the recipe form")
        _tmux(sock, "send-keys", "-t", "a", "C-r")
        holder = wait_until(lambda: runs.trainer_alive(run_dir), 120, "the trainer's lock")
        wait_until(lambda: steps(run_dir), 120, "the first step")
        _tmux(sock, "kill-session", "-t", "a")              # the terminal goes away
        time.sleep(2.0)
        before = len(steps(run_dir))
        assert runs.trainer_alive(run_dir).pid == holder.pid
        wait_until(lambda: len(steps(run_dir)) > before, 60, "steps after the hang-up")
        _tmux(sock, "new-session", "-d", "-s", "b", "-x", "120", "-y", "36",
              f"{tui} runs/long")
        wait_until(lambda: "● running" in _tmux(sock, "capture-pane", "-p", "-t", "b"), 60,
                   "the reattached monitor")
        wait_until(lambda: "s Stop" in _tmux(sock, "capture-pane", "-p", "-t", "b"), 30,
                   "the Stop key (the run is steered, not only followed)")
        _tmux(sock, "send-keys", "-t", "b", "s")
        wait_until(lambda: runs.trainer_alive(run_dir) is None, 120, "the trainer to stop")
        wait_until(lambda: "● stopped" in _tmux(sock, "capture-pane", "-p", "-t", "b"), 30,
                   "the stopped monitor")
    finally:
        if (h := runs.trainer_alive(run_dir)) is not None:
            os.kill(h.pid, signal.SIGTERM)
        subprocess.run(["tmux", "-L", sock, "kill-server"], capture_output=True)
    done = [e for e in ev.read_metrics(runs.metrics_path(run_dir)) if e["event"] == "Finished"]
    assert [e["reason"] for e in done] == ["stopped"]
    assert (run_dir / "checkpoints" / "latest").read_text() == f"step-{done[0]['step']:07d}"


# Defect 2: training in a thread of the TUI's interpreter (a compiled step evaluated off the
# main thread) made `q` end with "terminate called without an active exception", exit 134.
# The script trains a short run from the TUI with the compiled step, waits for it to finish,
# quits with q and exits its interpreter; it prints the trainer's pid and its own.
QUIT_AFTER_TRAINING = r"""
import asyncio, os, sys
sys.path.insert(0, sys.argv[1])
from test_tui_support import SIZE, press_now, wait_for
from macft import recipe as recipe_mod
from macft.tui.app import MacftApp

async def main():
    app = MacftApp(root=os.getcwd())
    async with app.run_test(size=SIZE) as pilot:
        recipe = recipe_mod.load("recipes/short.yaml")
        state = app.start_training(recipe)
        app.open_run(recipe.run_dir)
        await wait_for(pilot, lambda: app.live is not None, 60, "the trainer")
        print("trainer", app.live.trainer.pid, "ui", os.getpid(), flush=True)
        await wait_for(pilot, lambda: app.live is None, 300, "the trainer to end")
        await press_now(pilot, "q")
        await wait_for(pilot, lambda: app.return_code is not None, 30, "the app to exit")
    print("status", state.status, "step", state.step, flush=True)

asyncio.run(main())
"""


def test_quitting_after_a_compiled_training_run_exits_cleanly(home):
    (home / "recipes" / "short.yaml").write_text(
        RECIPE.replace("name: long", "name: short").replace("steps: 100000", "steps: 3")
        .replace("eval_every: 0}", "eval_every: 0, compile: on}"))
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    env.pop("MACFT_FAST_EXP", None)                  # the fast exp is what the crash needed
    done = subprocess.run([sys.executable, "-c", QUIT_AFTER_TRAINING, str(ROOT / "tests")],
                          cwd=home, env=env, capture_output=True, text=True, timeout=600)
    assert "terminate called" not in done.stderr, done.stderr[-2000:]
    assert done.returncode == 0, done.stderr[-2000:]
    said = dict(line.split(" ", 1) for line in done.stdout.splitlines() if " " in line)
    trainer, ui = said["trainer"].split(" ui ")
    assert trainer != ui                               # the run trained in its own process
    assert said["status"] == "finished step 3"
    steps_done = steps(home / "runs" / "short")
    assert steps_done == [1, 2, 3]


async def _training_monitor_at(home: Path, size) -> str:
    from test_tui_defects import screen_text

    app = MacftApp(root=home)
    async with app.run_test(size=size) as pilot:
        await train_long(app, pilot, home, 2)
        await pilot.pause(0.3)
        shown = screen_text(app)
        await press_now(pilot, "s")
        await wait_for(pilot, lambda: app.live is None, 120, "the run to stop")
    return shown


def test_a_training_monitor_at_80x24_keeps_eta_stop_back_and_quit(home):
    """Defect 8: at 80 columns a training run's footer lost Back and Quit (and ETA)."""
    shown = run(_training_monitor_at(home, (80, 24)))
    assert "● running" in shown and "ETA " in shown, shown
    for key in ("s Stop", "esc Back", "q Quit"):
        assert key in shown, (key, shown)
