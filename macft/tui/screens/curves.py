"""Loss curves: several runs' training and validation losses on one chart, one colour each."""

from __future__ import annotations

from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Footer, Header, Static

from macft.runs import RunState
from macft.tui.widgets.loss_chart import LossChart, Series, series_for


class CurvesScreen(Screen):
    BINDINGS = [Binding("escape", "app.pop_screen", "Back")]

    def __init__(self, run_dirs: list[Path]):
        super().__init__()
        self.run_dirs = [Path(p) for p in run_dirs]

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("", id="curves-title", classes="section-title")
        yield LossChart(id="curves")
        yield Footer()

    def on_mount(self) -> None:
        series = self.series()
        names = ", ".join(s.name for s in series)
        self.query_one("#curves-title", Static).update(f"Loss curves of {names}")
        self.query_one("#curves", LossChart).update_series(series)

    def series(self) -> list[Series]:
        runs = []
        for run_dir in self.run_dirs:
            state = RunState.from_folder(run_dir)
            runs.append((self.app.show_path(run_dir), state.losses, state.evals,
                         state.total_steps))
        return series_for(runs)
