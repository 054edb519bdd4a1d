"""Questions over the current screen: yes/no (overwrite a file, drop unsaved edits) and a
choice among a few answers (quit while a run trains)."""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Static


class ChoiceScreen(ModalScreen[Any]):
    """``choices``: (key, label, value); pressing the key or the button dismisses with value.
    The last choice is focused first (the harmless one: "No", "Cancel")."""

    HELP = ("A question before something that cannot be undone: press the key shown on a "
            "button (or click it); Esc gives the harmless answer.")

    def __init__(self, question: str, choices: list[tuple[str, str, Any]]):
        super().__init__()
        self.question, self.choices = question, choices
        for i, (key, label, _) in enumerate(choices):
            self._bindings.bind(key, f"answer({i})", label)

    def compose(self) -> ComposeResult:
        with Vertical(id="confirm-box"):
            yield Static(self.question, id="confirm-question")
            with Horizontal(id="confirm-buttons"):
                for i, (key, label, _) in enumerate(self.choices):
                    shown = "esc" if key == "escape" else key
                    yield Button(f"{label}  {shown}", id=f"choice-{i}", compact=True,
                                 variant="warning" if i == 0 else "default")

    def on_mount(self) -> None:
        self.query_one(f"#choice-{len(self.choices) - 1}", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.action_answer(int(event.button.id.rpartition("-")[2]))

    def action_answer(self, index: int) -> None:
        self.dismiss(self.choices[index][2])


class ConfirmScreen(ChoiceScreen):
    """Dismissed with True for yes (y), False for no (n, Esc)."""

    BINDINGS = [Binding("escape", "answer(1)", "No")]

    def __init__(self, question: str, yes: str = "Yes", no: str = "No"):
        super().__init__(question, [("y", yes, True), ("n", no, False)])
