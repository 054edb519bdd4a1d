"""Data inspector: rows as training will see them, before a run starts.

The selected example is rendered through the chat template token by token; trained tokens
(mask 1) are highlighted, masked ones dimmed, and tokens past ``max_length`` struck out.
"""

from __future__ import annotations

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static

from macft import recipe as recipe_mod
from macft.data_report import (STATUS_OK, DataReport, data_path, histogram, inspect_data,
                                   load_tokenizer, summary_lines, token_pieces)

TRAINED = "bold #d7ffaf on #2f4f2f"
MASKED = "#8a8a8a"
CUT = "strike #d75f5f"


def render_example(pieces: list[str], mask, max_length: int) -> Text:
    text = Text()
    for j, (piece, m) in enumerate(zip(pieces, mask)):
        if j == max_length:
            text.append(f"✂ max_length {max_length} ✂", style="bold #d75f5f")
        style = CUT if j >= max_length else TRAINED if m else MASKED
        text.append(piece, style=style)
    return text


def legend() -> Text:
    text = Text("tokens: ")
    text.append("trained", style=TRAINED)
    text.append("  ")
    text.append("not trained", style=MASKED)
    text.append("  ")
    text.append("cut by max_length", style=CUT)
    return text


class DataScreen(Screen):
    HELP = ("The recipe's data as training will see it, before a run starts: each row through "
            "the model's chat template token by token, the tokens the loss is trained on "
            "highlighted, masked ones dimmed, those past data.max_length struck out; lengths "
            "and the rows that would be cut or rejected.")
    BINDINGS = [
        Binding("v", "switch_split", "Train/valid"),
        Binding("escape", "app.pop_screen", "Back"),
    ]

    class Ready(Message):
        def __init__(self, report: DataReport | None, tokenizer, error: str = ""):
            super().__init__()
            self.report, self.tokenizer, self.error = report, tokenizer, error

    def __init__(self, recipe: recipe_mod.Recipe, split: str = "train"):
        super().__init__()
        self.recipe = recipe
        self.split = split
        self.report: DataReport | None = None
        self.tokenizer = None

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("", id="data-summary")
        with Horizontal(id="data-body"):
            with Vertical(id="data-left"):
                yield DataTable(id="data-rows", cursor_type="row", zebra_stripes=True)
                yield Static("", id="histogram")
            with VerticalScroll(id="example"):
                yield Static(legend(), id="legend")
                yield Static("", id="example-text")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#data-rows", DataTable).add_columns("line", "tokens", "trained",
                                                           "status")
        self.query_one("#histogram").border_title = "lengths (tokens)"
        self.query_one("#example").border_title = "example"
        self.load()

    def load(self) -> None:
        path = data_path(self.recipe.data, self.split)
        self.query_one("#data-summary", Static).update(
            f"{self.split}: {path or '(none)'} · reading with the tokenizer of "
            f"{self.recipe.model.path} …")
        self.query_one("#data-rows", DataTable).clear()
        if path:
            self._inspect(path, self.tokenizer)

    @work(thread=True, exclusive=True, group="inspect")
    def _inspect(self, path: str, tokenizer) -> None:
        try:
            tokenizer = tokenizer or load_tokenizer(self.recipe.model)
            report = inspect_data(path, tokenizer, self.recipe.data)
        except Exception as exc:  # noqa: BLE001 - MacftError or a tokenizer problem: show it
            self.post_message(self.Ready(None, tokenizer, str(exc).splitlines()[0]))
            return
        self.post_message(self.Ready(report, tokenizer))

    def on_data_screen_ready(self, message: Ready) -> None:
        self.tokenizer = message.tokenizer
        summary = self.query_one("#data-summary", Static)
        if message.report is None:
            summary.update(Text(f"{self.split}: {message.error}", style="bold red"))
            return
        self.report = report = message.report
        spec = self.recipe.data
        summary.update(f"{self.split}: {self.app.show_path(report.path)} · " +
                       "\n".join(summary_lines(report, spec)))
        table = self.query_one("#data-rows", DataTable)
        for i, row in enumerate(report.rows):
            style = "" if row.status == STATUS_OK else "bold #d75f5f"
            table.add_row(str(row.line), str(row.tokens), str(row.trained),
                          Text(row.status, style=style), key=str(i))
        lengths = [r.tokens for r in report.rows if r.ids]
        self.query_one("#histogram", Static).update(
            "\n".join(histogram(lengths, spec.max_length, bins=6, width=18)))
        if report.rows:
            self.show_row(0)

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if self.report is not None and event.row_key.value is not None:
            self.show_row(int(event.row_key.value))

    def show_row(self, index: int) -> None:
        row = self.report.rows[index]
        box = self.query_one("#example-text", Static)
        self.query_one("#example").border_title = f"line {row.line} · {row.status}"
        if not row.ids:
            box.update(Text(row.message, style="bold red"))
            return
        limit = self.recipe.data.max_length
        shown = render_example(token_pieces(self.tokenizer, row.ids), row.mask, limit)
        if row.rejected_ids:          # a preference pair: both answers after the same prompt
            shown = Text.assemble(("chosen\n", "bold"), shown, ("\n\nrejected\n", "bold"),
                                  render_example(token_pieces(self.tokenizer, row.rejected_ids),
                                                 row.rejected_mask, limit))
        box.update(shown)

    def action_switch_split(self) -> None:
        self.split = "valid" if self.split == "train" else "train"
        self.report = None
        self.load()
