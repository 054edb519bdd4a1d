"""Export: fuse a run's adapters into its base and save a Hugging Face folder."""

from __future__ import annotations

from pathlib import Path

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import Button, Footer, Header, Input, Label, Static

from macft.tui.bridge import StatusLine

GGUF_PLACEHOLDER = ("GGUF export arrives with the GGUF issue: it is not in this build yet. "
                    "Until then, fuse to a folder and convert it with llama.cpp's "
                    "convert_hf_to_gguf.py.")


class ExportScreen(Screen):
    BINDINGS = [Binding("escape", "app.pop_screen", "Back")]

    class Done(StatusLine):
        pass

    def __init__(self, run_dir: Path):
        super().__init__()
        self.run_dir = Path(run_dir)

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(f"Fuse the adapters of {self.app.show_path(self.run_dir)} into its base "
                     "model and save a Hugging Face folder (mlx_lm.load opens it).",
                     id="export-intro")
        with Horizontal(id="export-row"):
            yield Label("folder ", classes="bar-label")
            yield Input(str(self.run_dir / "fused"), id="export-out", compact=True)
            yield Button("Fuse", id="fuse", variant="primary", compact=True)
        yield Static("", id="export-status")
        yield Static(GGUF_PLACEHOLDER, id="gguf")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#gguf").border_title = "GGUF"
        self.query_one("#export-out", Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.start()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.start()

    def start(self) -> None:
        out = self.query_one("#export-out", Input).value.strip()
        self.query_one("#export-status", Static).update(f"fusing into {out} …")
        self.query_one("#fuse", Button).disabled = True
        self.fuse(out)

    @work(thread=True, exclusive=True, group="export")
    def fuse(self, out: str) -> None:
        from macft.models.fuse import fuse_in_place, save_folder
        from macft.models.load import load_for_inference

        try:
            loaded, _ = load_for_inference(str(self.run_dir))
            n = fuse_in_place(loaded.model)
            folder = save_folder(loaded.model, loaded.tokenizer, loaded.config, Path(out))
        except Exception as exc:  # noqa: BLE001 - shown on the screen
            self.post_message(self.Done(str(exc).splitlines()[0] if str(exc) else
                                        type(exc).__name__, error=True))
            return
        self.post_message(self.Done(f"fused {n} adapter layers into {folder}"))

    def on_export_screen_done(self, message: Done) -> None:
        status = self.query_one("#export-status", Static)
        status.update(message.text)
        status.set_class(message.error, "error")
        self.query_one("#fuse", Button).disabled = False
