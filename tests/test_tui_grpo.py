"""The monitor of a GRPO run: the mean total reward per step as a chart beside the loss, and the
latest rewards in the stats panel. Other objectives' monitors keep their one loss chart."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import macft  # noqa: F401
from test_grpo import grpo_raw, write_prompts, COUNT_A
from test_tui_snapshots import SIZES, _shoot, check, normalise
from test_tui_support import run, text_of

from macft import events as ev
from macft.runs import RunState
from macft.tui.app import MacftApp
from macft.tui.screens import monitor as monitor_mod
from macft.tui.widgets.loss_chart import _fmt, chart_lines


@pytest.fixture(scope="module")
def grpo_run(tmp_path_factory) -> Path:
    """A real GRPO run of 4 steps on the tiny model, validated (greedy rewards) every 2."""
    from conftest import write_tiny_model

    from macft import recipe as recipe_mod
    from macft.train import loop

    d = tmp_path_factory.mktemp("tui-grpo")
    write_tiny_model(d / "model")
    write_prompts(d / "train.jsonl")
    write_prompts(d / "valid.jsonl", 4)
    (d / "count_a.py").write_text(COUNT_A)
    raw = grpo_raw(d, "run")
    raw["train"].update(steps=4, eval_every=2, save_every=0)
    raw["grpo"].update(sample_every=2, samples=1)
    done = loop.train(recipe_mod.from_dict(raw), [])
    assert done.reason == "completed" and done.step == 4
    return d / "run"


def _metrics(run_dir: Path, kind: str) -> list[dict]:
    return [e for e in ev.read_metrics(run_dir / "metrics.jsonl") if e["event"] == kind]


async def _open_monitor(run_dir: Path, size=(120, 36)):
    app = MacftApp(root=run_dir.parent)
    async with app.run_test(size=size) as pilot:
        app.open_run(run_dir)
        await pilot.pause()
        screen = app.screen
        chart = screen.query_one("#reward-chart")
        loss = screen.query_one("#chart")
        lines = chart_lines(chart.train, chart.val, chart.size.width, chart.size.height,
                            chart.total_steps)
        return (chart.display, list(chart.train), list(chart.val), loss.display,
                list(loss.train), list(loss.val), text_of(screen.query_one("#run-stats")),
                text_of(screen.query_one("#run-log")), [line.plain for line in lines],
                chart.size.width, list(screen.query_one("#zero-spread").data))


def test_monitor_charts_the_mean_rewards_of_a_grpo_run(grpo_run):
    steps = _metrics(grpo_run, "Step")
    evals = _metrics(grpo_run, "Eval")
    assert [s["step"] for s in steps] == [1, 2, 3, 4] and len(evals) == 2
    # Each validation pass reports the prompts it has answered, from none to all 4.
    passes = [(p["done"], p["total"]) for p in _metrics(grpo_run, "Progress")
              if p["task"] == ev.EVALUATING]
    assert passes[0] == (0, 4) and passes.count((4, 4)) == 2 and passes.count((0, 4)) == 2
    shown, train, val, loss_shown, losses, loss_val, stats, log, lines, width, zero = run(
        _open_monitor(grpo_run))
    assert shown and loss_shown and width > 20                   # side by side
    assert train == [(s["step"], pytest.approx(s["metrics"]["reward"])) for s in steps]
    assert val == [(e["step"], pytest.approx(e["metrics"]["reward"])) for e in evals]
    assert losses == [(s["step"], pytest.approx(s["loss"])) for s in steps]
    assert zero == [pytest.approx(s["metrics"]["zero_spread"]) for s in steps]
    assert loss_val == []            # GRPO's val "loss" is minus the val reward: not a loss
    assert f"step 2: val reward {evals[0]['metrics']['reward']:.4f}, accuracy " in log
    # the y axis spans what is drawn: the highest per-step or validation reward on top
    top = max([s["metrics"]["reward"] for s in steps] + [e["metrics"]["reward"] for e in evals])
    assert lines[0].startswith(_fmt(top))
    last = steps[-1]["metrics"]
    first_line, each, third = stats.splitlines()
    assert first_line == (f"reward {last['reward']:.4f} ±{last['reward_std']:.3f}  "
                          f"zero-spread {last['zero_spread']:.0%}")
    assert each == f"count_a {last['reward_count_a']:.3f}"
    assert third.startswith(f"loss {steps[-1]['loss']:.4f}  kl {last['kl']:.4f}  elapsed ")


def test_other_runs_keep_one_loss_chart():
    state = RunState("x")
    state.apply(ev.Step(1, 2, 1.5, 1e-3, 10, 100.0, 1.0, 1.0, 0.1, 0.5, {"accuracy": 0.5}))
    state.apply(ev.Eval(1, 1.4, 1.4, True, {"reward": 0.3}))
    assert state.rewards == {} and state.eval_rewards == []


def test_a_resumed_grpo_run_forgets_the_replayed_rewards():
    state = RunState("x")
    started = dict(run_dir="x", model="m", method="lora", device="cpu", dtype="float32",
                   blas="", total_steps=4, trainable_params=1, total_params=2,
                   train_examples=1)
    state.apply(ev.RunStarted(start_step=0, **started))
    for n in range(1, 4):
        state.apply(ev.Step(n, 4, 1.0, 1e-3, 10, 100.0, n, 1.0, 0.1, n / 4,
                            {"reward": n / 10, "reward_std": 0.1, "reward_a": n / 10,
                             "reward_a_std": 0.1, "zero_spread": 0.5, "kl": 0.0}))
    assert sorted(state.rewards) == ["reward", "reward_a", "zero_spread"]
    assert state.rewards["reward"] == [(1, 0.1), (2, 0.2), (3, 0.3)]
    state.apply(ev.RunStarted(start_step=2, **started))          # resumed from step 2
    assert state.rewards["reward"] == [(1, 0.1), (2, 0.2)]
    assert state.rewards["zero_spread"] == [(1, 0.5), (2, 0.5)]


# ----- snapshots of a hand-written, deterministic GRPO history ----------------------------------

def fake_grpo_run(root: Path, steps: int = 30, total: int = 40) -> Path:
    run_dir = root / "runs" / "grpo"
    run_dir.mkdir(parents=True)
    events = [dict(event="RunStarted", run_dir="runs/grpo", model="tiny-llama", method="lora",
                   device="cpu", dtype="float32", blas="openblas", total_steps=total,
                   start_step=0, trainable_params=32768, total_params=127296,
                   train_examples=24, data_stats={})]
    for n in range(1, steps + 1):
        reward = 0.2 + 0.6 * (1 - 0.93 ** n) + 0.05 * ((n * 7) % 5) / 5
        events.append(dict(event="Step", step=n, total_steps=total, loss=0.01 * ((n * 3) % 7),
                           learning_rate=1e-5, tokens=900, tokens_per_sec=1500.0,
                           elapsed=2.0 * n, eta=2.0 * (total - n), peak_memory_gb=0.5,
                           epoch=n / 6, metrics={
                               "reward": reward, "reward_std": 0.25, "reward_format": 0.3,
                               "reward_format_std": 0.0, "reward_correct": reward - 0.3,
                               "reward_correct_std": 0.3, "zero_spread": 0.5 * 0.9 ** n,
                               "kl": 0.001 * n, "clip_fraction": 0.0,
                               "completion_length": 40.0}))
        if n % 10 == 0:
            val = reward + 0.02
            events.append(dict(event="Eval", step=n, val_loss=-val, best_val_loss=-val,
                               improved=True, metrics={"reward": val, "accuracy": 0.1 * n / 10,
                                                       "reward_format": 0.3,
                                                       "reward_correct": val - 0.3}))
    events.append(dict(event="Sample", step=steps, prompt="What is 2 + 3?", text="5",
                       rewards={"format": 0.3, "correct": 1.0, "total": 1.3}))
    events.append(dict(event="Finished", step=steps, reason="stopped", best_val_loss=-0.8,
                       adapter_path="runs/grpo", elapsed=2.0 * steps))
    metrics = run_dir / "metrics.jsonl"
    metrics.write_text("".join(json.dumps(dict(e, time=0.0)) + "\n" for e in events))
    os.utime(metrics, (2_000_000_000, 2_000_000_000))
    return run_dir


@pytest.mark.parametrize("size", SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
def test_monitor_grpo_snapshot(tmp_path, monkeypatch, size):
    root = tmp_path / "project"
    root.mkdir()
    fake_grpo_run(root)
    monkeypatch.chdir(root)
    monkeypatch.setattr(monitor_mod, "machine_gb", lambda: 24.0)   # the same on every machine

    async def prepare(app, pilot):
        app.open_run(root / "runs" / "grpo")
        await pilot.pause()

    check("monitor-grpo", normalise(run(_shoot(root, prepare, size)), root), tmp_path, size)


def test_a_grpo_run_trained_in_the_tui_fills_the_reward_chart_live(tmp_path):
    """The same chart while the TUI trains the run: every step's event reaches it."""
    from conftest import write_tiny_model

    from macft import recipe as recipe_mod
    from test_tui_support import wait_for

    write_tiny_model(tmp_path / "model")
    write_prompts(tmp_path / "train.jsonl")
    (tmp_path / "count_a.py").write_text(COUNT_A)
    raw = grpo_raw(tmp_path, "live")
    raw["data"].pop("valid")
    raw["train"].update(steps=3, save_every=0)
    recipe = recipe_mod.from_dict(raw)

    async def go():
        app = MacftApp(root=tmp_path)
        async with app.run_test(size=(100, 30)) as pilot:
            state = app.start_training(recipe)
            app.open_run(recipe.run_dir)
            await wait_for(pilot, lambda: state.status == "finished", 120, "the run to finish")
            await pilot.pause()
            screen = app.screen
            return (list(screen.query_one("#reward-chart").train),
                    screen.query_one("#reward-chart").display,
                    text_of(screen.query_one("#run-stats")))

    train, shown, stats = run(go())
    steps = _metrics(tmp_path / "live", "Step")
    assert shown and [s for s, _ in train] == [1, 2, 3]
    assert train == [(s["step"], pytest.approx(s["metrics"]["reward"])) for s in steps]
    assert stats.startswith(f"reward {steps[-1]['metrics']['reward']:.4f} ")
