"""Run monitor: live (or recorded) loss chart, the reward chart of a GRPO run, learning rate,
speed, the phase (training or evaluating) and its ETA, memory against the machine's, samples.

Keys: p pause/resume, s stop (the loop writes a checkpoint), c checkpoint now, r resume a
stopped run to the end, m smooth the loss. A run trained by another process is followed
through metrics.jsonl.
"""

from __future__ import annotations

import functools
from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Header, Label, ProgressBar, Sparkline, Static

from macft import recipe as recipe_mod, runs
from macft.errors import MacftError
from macft.runs import RunState
from macft.tui.widgets.loss_chart import LossChart

STATUS_STYLE = {"running": "bold green", "starting": "green", "paused": "bold yellow",
                "stopping": "yellow", "stopped": "yellow", "finished": "bold cyan",
                "failed": "bold red", "interrupted": "magenta", "new": "dim"}


TRAINING = ("starting", "running", "paused", "stopping")   # a trainer is at work
GAUGE_WIDTH = 10


def clock(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    return f"{h}:{rem // 60:02d}:{rem % 60:02d}" if h else f"{rem // 60:02d}:{rem % 60:02d}"


def phase_line(state: RunState) -> str:
    """What the trainer does now: "training 120/400", "evaluating 2/4", "reference log-probs
    30/128"; "step 120/400" while paused or once no trainer works on it."""
    if state.status in TRAINING and state.phase is not None:
        return state.phase.line()
    verb = "training" if state.status == "running" and state.step else "step"
    return f"{verb} {state.step}/{state.total_steps}"


@functools.cache
def machine_gb() -> float:
    """The machine's memory (what MLX may use, on a Mac) in GB; read once."""
    from macft.plan import machine_memory

    return machine_memory() / 1e9


def size_text(gb: float) -> str:
    """GB with one decimal; under 1 GB in MB (a tiny model's 0.01 GB is not "0.0")."""
    return f"{gb:.1f}" if gb >= 1 else f"{gb * 1000:.0f} MB"


def memory_gauge(current: float, peak: float, total: float, width: int = GAUGE_WIDTH,
                 fit: int = 0) -> Text:
    """A bar of the run's memory against the machine's, filled to what it uses after its last
    step and shaded to its peak, then "1.2 / 24.0 GB" and the peak when it is higher (unless
    that makes the line longer than ``fit`` cells)."""
    current = current or peak           # runs recorded before Step events had memory_gb
    used = min(width, round(width * current / total)) if total else 0
    high = max(used, min(width, round(width * peak / total))) if total else 0
    share = peak / total if total else 0.0
    style = "red" if share > 0.9 else "yellow" if share > 0.75 else "green"
    out = Text("memory ", style="bold")
    out.append("█" * used, style=style)
    out.append("▒" * (high - used), style=style)
    out.append("░" * (width - high), style="dim")
    out.append(f" {size_text(current)} / {total:.1f} GB")
    more = f"  peak {size_text(peak)}"
    if size_text(peak) != size_text(current) and not (fit and len(out) + len(more) > fit):
        out.append(more, style="dim")
    return out


# Below this many columns a training run's footer drops Compare and Export until the run ends.
NARROW = 100


class MonitorScreen(Screen):
    HELP = ("Follows one training run: the loss (bars) and validation loss (the line), what the "
            "trainer does now and when it should be done, memory against this machine's, the "
            "last events and the model's answers to the sample prompts (newest first; Tab "
            "there and scroll). A run keeps training when you leave this screen or quit; "
            "reopen it from Home.")
    BINDINGS = [
        Binding("p", "pause", "Pause"),
        Binding("s", "stop", "Stop"),
        Binding("c", "checkpoint", "Checkpoint"),
        Binding("r", "resume", "Resume"),
        Binding("t", "compare", "Compare"),
        Binding("e", "export", "Export"),
        Binding("m", "smooth", "Smooth", show=False),        # 80 columns
        Binding("v", "evaluate", "Evaluate", show=False),   # a finished run; 80 columns
        Binding("escape", "app.pop_screen", "Back"),
    ]

    def __init__(self, run_dir: Path):
        super().__init__()
        self.run_dir = Path(run_dir)
        self.key = str(self.run_dir.resolve())
        self.state: RunState | None = None
        self._follow = None
        self._keys = None

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("", id="run-title")
        with Horizontal(id="status-row"):
            yield Static("", id="run-status")
            yield ProgressBar(id="run-progress", show_eta=False)
        with Horizontal(id="charts"):
            yield LossChart(id="chart")
            yield LossChart(id="reward-chart")   # GRPO runs only: shown by show_state
        with Horizontal(id="lower"):
            with Vertical(id="numbers"):
                yield Static("", id="run-stats")
                yield Static("", id="memory")
                yield Label("learning rate", classes="small-title")
                yield Sparkline([], id="lr")
                yield Label("zero-spread share", id="zs-title",
                            classes="small-title")        # these two: GRPO runs only
                yield Sparkline([], id="zero-spread")
            yield Static("", id="run-log")
        with VerticalScroll(id="samples-box"):
            yield Static("", id="samples")
        yield Footer()

    def on_mount(self) -> None:
        self._title_chart()
        self.query_one("#reward-chart").border_title = \
            "reward  [#5fafd7]█ mean total[/]  [#ffaf00]● val[/]"
        self.query_one("#run-log").border_title = "events"
        self.query_one("#samples-box").border_title = "samples (newest first)"
        self.show_state(self.app.state_for(self.run_dir))
        if self.state.status == "running" and not self.state.live and \
                not self.app.attach(self.run_dir):
            self._follow = self.set_interval(1.0, self._reload)  # followed, not steered

    def _title_chart(self) -> None:
        smooth = self.query_one("#chart", LossChart).smooth
        train = "[#5fafd7]━ train (average)[/] [#2f4f5f]█ raw[/]" if smooth else \
            "[#5fafd7]█ train[/]"
        val = "" if self.state is not None and self.state.rewards else "  [#ffaf00]●· val[/]"
        self.query_one("#chart").border_title = f"loss  {train}{val}"

    def _reload(self) -> None:
        before = self.state.status if self.state is not None else None
        state = self.app.state_for(self.run_dir)
        self.show_state(state)
        self.app.announce(state, before)
        if state.status != "running" and self._follow is not None:
            self._follow.stop()

    # ----- drawing ----------------------------------------------------------------------------
    def show_state(self, state: RunState) -> None:
        self.state = state
        if not self.query("#run-title"):
            return      # the app's poller reached this screen before it composed: on_mount draws
        title = self.app.show_path(state.run_dir)
        if state.started is not None:
            title += f" · {state.started.method} · {state.started.model}"
        self.query_one("#run-title", Static).update(Text(title, style="bold"))
        total = state.total_steps or None
        status = Text(f"● {state.status}", style=STATUS_STYLE.get(state.status, ""))
        status.append(f"   {phase_line(state)}")
        if state.last is not None:
            if state.status != "finished":   # before the epoch, so 80 columns still show it
                status.append(f"   ETA {clock(state.last.eta)}")
            status.append(f"   epoch {state.last.epoch:.2f}")
        self.query_one("#run-status", Static).update(status)
        # An unknown total draws ProgressBar's animated stripes: only while a run is starting.
        if total is None and state.status not in ("starting", "running"):
            total = max(state.step, 1)
        self.query_one("#run-progress", ProgressBar).update(total=total, progress=state.step)
        chart = self.query_one("#chart", LossChart)
        rewards = self.query_one("#reward-chart", LossChart)
        rewards.display = bool(state.rewards)
        if state.rewards:   # GRPO: its val "loss" is minus the val reward, drawn beside
            self._title_chart()
            chart.update_points(state.losses, [], state.total_steps)
            rewards.update_points(state.rewards.get("reward", []), state.eval_rewards,
                                  state.total_steps)
        else:
            chart.update_points(state.losses, state.evals, state.total_steps)
        zero = self.query_one("#zero-spread", Sparkline)
        zero.display = self.query_one("#zs-title").display = "zero_spread" in state.rewards
        if zero.display:
            zero.data = [v for _, v in state.rewards["zero_spread"][-200:]]
        self.query_one("#run-stats", Static).update(self._stats(state))
        gauge = self.query_one("#memory", Static)
        gauge.update(memory_gauge(state.last.memory_gb, state.last.peak_memory_gb, machine_gb(),
                                  fit=gauge.size.width) if state.last is not None else
                     Text("memory: no steps yet", style="dim"))
        self.query_one("#lr", Sparkline).data = state.learning_rates[-200:]
        self.query_one("#run-log", Static).update(self._log(state))
        self.query_one("#samples", Static).update(self._samples(state))
        keys = (state.status, state.live)
        if keys != self._keys:  # the footer redraws itself on this: not on every step
            self._keys = keys
            self.refresh_bindings()

    @staticmethod
    def _stats(state: RunState) -> str:
        s = state.last
        if s is None:
            return "no steps yet"
        if state.rewards:
            return MonitorScreen._reward_stats(state)
        val = f"{state.evals[-1][1]:.4f}" if state.evals else "-"
        best = f"{state.best_val:.4f}" if state.best_val is not None else "-"
        extra = "".join(f"   {k} {v:.3f}" for k, v in getattr(s, "metrics", {}).items()
                        if isinstance(v, (int, float)))  # objective-specific, e.g. accuracy
        return (f"loss {s.loss:.4f}  val {val}  best {best}{extra}\n"
                f"lr {s.learning_rate:.2e}  {s.tokens_per_sec:,.0f} tok/s\n"
                f"elapsed {clock(s.elapsed)}")

    @staticmethod
    def _reward_stats(state: RunState) -> str:
        """A GRPO run's latest rewards: the mean total, each reward's mean, the zero-spread
        share (groups whose completions all scored alike, which teach nothing)."""
        s, m = state.last, state.last.metrics
        line = f"reward {m.get('reward', 0.0):.4f} ±{m.get('reward_std', 0.0):.3f}"
        if "zero_spread" in m:
            line += f"  zero-spread {m['zero_spread']:.0%}"
        each = "  ".join(f"{k[len('reward_'):]} {v:.3f}" for k, v in m.items()
                         if k.startswith("reward_") and not k.endswith("_std")
                         and isinstance(v, (int, float)))
        kl = f"  kl {m['kl']:.4f}" if isinstance(m.get("kl"), (int, float)) else ""
        return f"{line}\n{each}\nloss {s.loss:.4f}{kl}  elapsed {clock(s.elapsed)}"

    @staticmethod
    def _log(state: RunState) -> Text:
        """The last events, the failure among them in red (once: it is one of the events)."""
        out = Text()
        for i, line in enumerate(state.log[-6:]):
            failed = bool(state.error) and line.startswith("failed at step")
            out.append(("\n" if i else "") + line, style="bold red" if failed else "")
        return out

    @staticmethod
    def _samples(state: RunState) -> Text:
        if not state.samples:
            return Text("none yet (set train.sample_every and train.sample_prompts)",
                        style="dim")
        lines = []
        for sample in reversed(state.samples):      # the newest first
            line = Text(f"step {sample.step} ", style="dim")
            line.append(f"{sample.prompt[:60]} → ", style="bold")
            line.append(" ".join(sample.text.split())[:400])
            lines.append(line)
        return Text("\n").join(lines)

    # ----- keys -------------------------------------------------------------------------------
    def on_resize(self) -> None:
        self.refresh_bindings()

    def check_action(self, action: str, parameters) -> bool | None:
        state, live = self.state, self.app.live
        mine = live is not None and live.key == self.key
        if action in ("pause", "stop"):              # hidden: they need a live run here
            return True if mine else False
        if action == "checkpoint":                   # once the trainer listens for it
            return True if mine and state is not None and state.status in (
                "running", "paused") else False
        if action == "resume":
            if mine:                                 # hidden while it trains (80 columns)
                return False
            return True if state is not None and state.resumable else None
        if action in ("compare", "export") and mine and self.app.size.width < NARROW:
            return False                             # a narrow footer keeps Back and Quit
        if action == "evaluate":
            return True if state is not None and state.status == "finished" else False
        return True

    def action_pause(self) -> None:
        trainer, state = self.app.live.trainer, self.state
        if trainer.paused:
            trainer.resume()
            state.status = "running"
        else:
            trainer.pause()
            state.status = "paused"
        self.show_state(state)

    def action_stop(self) -> None:
        self.app.live.trainer.stop()
        self.state.status = "stopping"
        self.notify("stopping after this step; a checkpoint will be written")
        self.show_state(self.state)

    def action_checkpoint(self) -> None:
        self.app.live.trainer.checkpoint()
        self.notify("a checkpoint will be written after this step")

    def action_resume(self) -> None:
        try:
            recipe = recipe_mod.load(runs.recipe_path(self.run_dir), [f"output={self.run_dir}"])
        except MacftError as exc:
            self.notify(str(exc), severity="error")
            return
        if self._follow is not None:
            self._follow.stop()
        self.app.start_training(recipe)

    def action_compare(self) -> None:
        self.app.open_compare(self.run_dir)

    def action_export(self) -> None:
        self.app.open_export(self.run_dir)

    def action_evaluate(self) -> None:
        self.app.open_evaluate(self.run_dir)

    def action_smooth(self) -> None:
        chart = self.query_one("#chart", LossChart)
        chart.set_smooth(not chart.smooth)
        self._title_chart()
