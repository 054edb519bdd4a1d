"""`?` on any screen: what that screen is for and its keys, read from its bindings.

The paragraph is the screen's ``HELP`` (Textual's own class variable for help text), else the
first paragraph of its module's docstring; the keys are the screen's bindings (its
``BINDINGS`` and any bound at run time) and then the app's, so the help never lists a key the
screen does not have or misses one it has.
"""

from __future__ import annotations

import inspect
import re
import sys

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingsMap
from textual.containers import VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import Static


def about(screen: Screen) -> str:
    """One paragraph on what ``screen`` is for."""
    text = type(screen).HELP or inspect.getdoc(sys.modules[type(screen).__module__]) or ""
    first = text.strip().split("\n\n")[0]
    return re.sub(r"``?([^`]+)``?", r"\1", " ".join(first.split()))


def _textual_defaults() -> set[tuple[str, str]]:
    """(key, action) of the bindings every Textual screen and app has (tab, ctrl+q, ...)."""
    from textual.app import App

    return {(key, b.action) for cls in (Screen, App) for key, b in BindingsMap(cls.BINDINGS)}


def keys(screen: Screen) -> list[tuple[str, str, bool]]:
    """(keys as shown, what they do, whether it works now) for each binding of ``screen``,
    then the app's, then Textual's own (tab, ...); hidden bindings too (the footer has no room
    for them). Keys doing the same (q and ctrl+q: Quit) share a row."""
    app = screen.app
    active = screen.active_bindings
    generic = _textual_defaults()
    rows: dict[tuple[str, str], list] = {}
    seen = set()
    for textual in (False, True):
        for node in (screen, app):
            for key, binding in node._bindings:
                if key in seen or ((key, binding.action) in generic) != textual or \
                        binding.system or not binding.description:
                    continue
                seen.add(key)
                now = key in active and active[key].enabled and active[key].binding is binding
                row = rows.setdefault((binding.action, binding.description), [[], False])
                row[0].append(app.get_key_display(binding))
                row[1] = row[1] or now
    return [("/".join(shown), what, now) for (_, what), (shown, now) in rows.items()]


class HelpScreen(ModalScreen[None]):
    """The help of the screen under it; Esc (or ? again) closes it."""

    BINDINGS = [Binding("escape", "close", "Close"),
                Binding("question_mark", "close", "Close", show=False)]

    def __init__(self, screen: Screen):
        super().__init__()
        self.title_text = type(screen).__name__.removesuffix("Screen") or "Screen"
        self.about = about(screen)
        self.keys = keys(screen)

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-box"):      # scrolls where the screen is short
            yield Static(Text(f"{self.title_text}: help", style="bold"), id="help-title")
            yield Static(self.about, id="help-about")
            yield Static(self.key_table(), id="help-keys")
            yield Static(Text("esc closes", style="dim"), id="help-close")

    def key_table(self) -> Text:
        """One line a key: the key, what it does, "(not now)" where it does nothing here now."""
        width = max((len(shown) for shown, _, _ in self.keys), default=0) + 2
        lines = []
        for shown, what, now in self.keys:
            line = Text(shown.ljust(width), style="bold")
            line.append(what + ("" if now else "  (not now)"), style="" if now else "dim")
            lines.append(line)
        return Text("\n").join(lines)

    def action_close(self) -> None:
        self.dismiss(None)
