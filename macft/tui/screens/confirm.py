"""Questions over the current screen: yes/no (overwrite a file, drop unsaved edits), a
choice among a few answers (quit while a run trains) and a name to type with the choice
(rename or duplicate a run, start a new run beside an old one)."""

from __future__ import annotations

from typing import Any, Callable

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Static


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
            yield from self.body()
            with Horizontal(id="confirm-buttons"):
                for i, (key, label, _) in enumerate(self.choices):
                    shown = "esc" if key == "escape" else key
                    yield Button(f"{label}  {shown}", id=f"choice-{i}", compact=True,
                                 variant="warning" if i == 0 else "default")

    def body(self) -> ComposeResult:
        """What a subclass shows between the question and the buttons."""
        yield from ()

    def on_mount(self) -> None:
        self.first_focus().focus()

    def first_focus(self):
        return self.query_one(f"#choice-{len(self.choices) - 1}", Button)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.action_answer(int(event.button.id.rpartition("-")[2]))

    def action_answer(self, index: int) -> None:
        self.dismiss(self.choices[index][2])


class ConfirmScreen(ChoiceScreen):
    """Dismissed with True for yes (y), False for no (n, Esc)."""

    BINDINGS = [Binding("escape", "answer(1)", "No")]

    def __init__(self, question: str, yes: str = "Yes", no: str = "No"):
        super().__init__(question, [("y", yes, True), ("n", no, False)])


class NameScreen(ChoiceScreen):
    """A choice with a name box. The choices whose value is in ``named`` dismiss with
    (value, name), and only once ``check(name)`` returns "" (else its line is shown under the
    box); Enter in the box takes the first of them. ``focus_name``: the box has the focus
    first (else the last button, so the letter keys work at once)."""

    def __init__(self, question: str, name: str, choices: list[tuple[str, str, Any]],
                 check: Callable[[str], str], named: tuple = (), focus_name: bool = True):
        super().__init__(question, choices)
        self.default, self.check, self.named = name, check, named
        self.focus_name = focus_name

    def body(self) -> ComposeResult:
        yield Input(self.default, id="name-input", compact=True)
        yield Static("", id="name-error", classes="error")

    def first_focus(self):
        return self.query_one("#name-input", Input) if self.focus_name else \
            super().first_focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        first = next(i for i, c in enumerate(self.choices) if c[2] in self.named)
        self.action_answer(first)

    def action_answer(self, index: int) -> None:
        value = self.choices[index][2]
        if value not in self.named:
            self.dismiss(value)
            return
        name = self.query_one("#name-input", Input).value.strip()
        error = self.check(name)
        if error:
            self.query_one("#name-error", Static).update(error)
            self.query_one("#name-input", Input).focus()
            return
        self.dismiss((value, name))
