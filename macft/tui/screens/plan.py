"""Plan: will the form's recipe fit? `macft plan` in a child process, its report, its advice."""

from __future__ import annotations

import time

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import Button, Static

from macft import recipe as recipe_mod
from macft.errors import MacftError
from macft.plan import Plan, Setting
from macft.tui.planner import PlanProcess


class PlanScreen(ModalScreen[Setting | None]):
    """Dismissed with the advised Setting when the person takes it, else None."""

    BINDINGS = [Binding("escape", "close", "Back"),
                Binding("a", "apply", "Use the advice")]

    class Done(Message):
        def __init__(self, plan: Plan | None, error: str = ""):
            super().__init__()
            self.plan, self.error = plan, error

    def __init__(self, recipe: recipe_mod.Recipe, label: str):
        super().__init__()
        self.recipe, self.label = recipe, label
        self.plan: Plan | None = None
        self.error = ""
        self._process: PlanProcess | None = None
        self._closed = False
        self._started = time.monotonic()
        self._ticker = None

    def compose(self) -> ComposeResult:
        with Vertical(id="plan-box"):
            yield Static(f"Plan of {self.recipe.name}", classes="section-title")
            yield Static("", id="plan-status")
            yield Static("", id="plan-report")
            with Horizontal(id="plan-buttons"):
                yield Button("Use the advice  a", id="plan-apply", compact=True, disabled=True)
                yield Button("Back  esc", id="plan-back", compact=True)

    def on_mount(self) -> None:
        self._tick()
        self._ticker = self.set_interval(1.0, self._tick)   # only while the child measures
        self._measure()

    def _tick(self) -> None:
        seconds = time.monotonic() - self._started
        self.query_one("#plan-status", Static).update(
            f"planning: two training steps on the longest batch, in a child process ... "
            f"{seconds:.0f} s")

    @work(thread=True, exclusive=True)
    def _measure(self) -> None:
        """The child runs in a thread's wait, so the UI stays responsive; the result comes
        back as a message."""
        try:
            self._process = PlanProcess(self.recipe)
            if self._closed:            # Esc came before the child started
                self._process.cancel()
            self.post_message(self.Done(self._process.result()))
        except (MacftError, OSError) as exc:
            self.post_message(self.Done(None, str(exc)))

    def on_plan_screen_done(self, message: Done) -> None:
        if self._ticker is not None:
            self._ticker.stop()
        self.plan, self.error = message.plan, message.error
        status = self.query_one("#plan-status", Static)
        if message.plan is None:
            status.update(Text(f"plan failed: {message.error}", style="bold red"))
            return
        plan = message.plan
        verdict = Text("fits the budget" if plan.fits else "does NOT fit the budget",
                       style="bold green" if plan.fits else "bold red")
        status.update(verdict)
        self.query_one("#plan-report", Static).update("\n".join(plan.report(self.label)))
        self.query_one("#plan-apply", Button).disabled = plan.advice is None

    def action_apply(self) -> None:
        if self.plan is not None and self.plan.advice is not None:
            self.dismiss(self.plan.advice.setting)

    def action_close(self) -> None:
        self._closed = True
        if self._process is not None:
            self._process.cancel()
        self.dismiss(None)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        (self.action_apply if event.button.id == "plan-apply" else self.action_close)()
