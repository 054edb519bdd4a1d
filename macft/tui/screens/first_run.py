"""First run: pick a model and a data file (with a preview of its rows and format), write
recipes/<name>.yaml, then plan and start it from the recipe form."""

from __future__ import annotations

import json

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Button, DataTable, Footer, Header, Input, Label, Static

from macft import first_run
from macft.errors import MacftError

KIND = {"folder": "model folder here", "gguf": "GGUF file here", "alias": "macft alias",
        "cache": "Hugging Face cache"}


class FirstRunScreen(Screen):
    BINDINGS = [
        Binding("ctrl+s", "write", "Write recipe", priority=True),
        Binding("escape", "app.pop_screen", "Back"),
    ]

    class Previewed(Message):
        def __init__(self, preview: first_run.DataPreview | None, error: str = ""):
            super().__init__()
            self.preview, self.error = preview, error

    def __init__(self):
        super().__init__()
        self.model: str | None = None
        self.data: str | None = None
        self.format = ""

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("A first run: choose a model and a data file; the recipe is written to "
                     "recipes/<name>.yaml and opens in the form (^l plans it, ^r starts it).",
                     id="first-help")
        yield Label("1. Model", classes="section-title")
        yield DataTable(id="first-models", cursor_type="row", zebra_stripes=True)
        yield Label("2. Data (.jsonl files in this folder)", classes="section-title")
        yield DataTable(id="first-data", cursor_type="row", zebra_stripes=True)
        yield Static("", id="first-preview")
        with Horizontal(id="first-bar"):
            yield Label("name ", classes="bar-label")
            yield Input("first", id="first-name", compact=True)
            yield Button("Write recipe  ^s", id="first-write", variant="primary", compact=True)
        yield Footer()

    def on_mount(self) -> None:
        models = self.query_one("#first-models", DataTable)
        models.add_columns("model", "from", "note")
        for choice in first_run.model_choices(self.app.root):
            models.add_row(choice.value, KIND[choice.kind], choice.note, key=choice.value)
        data = self.query_one("#first-data", DataTable)
        data.add_columns("file")
        for path in first_run.data_choices(self.app.root):
            data.add_row(path, key=path)
        if not data.row_count:
            self._show_preview(Text("no .jsonl file in this folder: add one (one JSON object "
                                    "a line: messages, prompt/completion or text)",
                                    style="yellow"))
        models.focus()

    @on(DataTable.RowHighlighted, "#first-models")
    def _model(self, event: DataTable.RowHighlighted) -> None:
        self.model = event.row_key.value

    @on(DataTable.RowHighlighted, "#first-data")
    def _data(self, event: DataTable.RowHighlighted) -> None:
        self.data, self.format = event.row_key.value, ""
        self._show_preview(Text(f"reading {self.data} ...", style="dim"))
        self._read(self._path(self.data))

    def _path(self, shown: str) -> str:
        return str(self.app.root / shown)

    @work(thread=True, exclusive=True)
    def _read(self, path: str) -> None:
        try:
            self.post_message(self.Previewed(first_run.preview(path)))
        except MacftError as exc:
            self.post_message(self.Previewed(None, str(exc)))

    def on_first_run_screen_previewed(self, message: Previewed) -> None:
        if message.preview is None:
            self._show_preview(Text(message.error, style="bold red"))
            return
        p = message.preview
        if self.data is None or self._path(self.data) != p.path:
            return                               # an older file's answer
        self.format = p.format
        text = Text()
        text.append(f"{self.data}: {p.rows} rows, format {p.format}\n", style="bold")
        for row in p.first:
            text.append(json.dumps(row, ensure_ascii=False)[:300] + "\n")
        self._show_preview(text)

    def _show_preview(self, text: Text) -> None:
        self.query_one("#first-preview", Static).update(text)

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        # Enter on a model moves on to the data; Enter on the data to the name.
        target = "#first-data" if event.data_table.id == "first-models" else "#first-name"
        self.query_one(target).focus()

    def action_write(self) -> None:
        if self.model is None or self.data is None:
            self.notify("choose a model and a data file first", severity="warning")
            return
        name = self.query_one("#first-name", Input).value.strip()
        changes = first_run.recipe_changes(name, self.model, self.data, self.format)
        target = first_run.recipe_target(self.app.root, name)
        if target.exists():
            from macft.tui.screens.confirm import ConfirmScreen

            self.app.push_screen(
                ConfirmScreen(f"{self.app.show_path(target)} exists. Overwrite it?",
                              yes="Overwrite", no="Cancel"),
                lambda yes: self._write(changes) if yes else None)
            return
        self._write(changes)

    def _write(self, changes: dict) -> None:
        try:
            path = first_run.write_recipe(self.app.root, changes)
        except (MacftError, OSError) as exc:
            self.notify(str(exc), severity="error", timeout=10)
            return
        self.app.pop_screen()
        self.app.open_recipe(path)
        self.notify(f"wrote {self.app.show_path(path)}: ^l plans it, ^r starts it")

    @on(Button.Pressed, "#first-write")
    def _write_pressed(self) -> None:
        self.action_write()
