"""Export: fuse a run's adapters into a Hugging Face folder, or write a GGUF for llama.cpp."""

from __future__ import annotations

from pathlib import Path

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import Button, Footer, Header, Input, Label, Select, Static

from macft.export.targets import quant_names
from macft.tui.bridge import StatusLine


class ExportScreen(Screen):
    BINDINGS = [Binding("escape", "app.pop_screen", "Back")]

    class Done(StatusLine):
        pass

    class Progress(StatusLine):
        pass

    def __init__(self, run_dir: Path):
        super().__init__()
        self.run_dir = Path(run_dir)

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(f"Fuse the adapters of {self.app.show_path(self.run_dir)} into its base "
                     "model and save a Hugging Face folder (mlx_lm.load opens it), or write a "
                     "GGUF file that llama.cpp, Ollama and LM Studio run.",
                     id="export-intro")
        with Horizontal(id="export-row"):
            yield Label("folder ", classes="bar-label")
            yield Input(str(self.run_dir / "fused"), id="export-out", compact=True)
            yield Button("Fuse", id="fuse", variant="primary", compact=True)
        with Horizontal(id="gguf-row"):
            yield Label("GGUF   ", classes="bar-label")
            yield Input(str(self.run_dir / f"{self.run_dir.name}.gguf"), id="gguf-out",
                        compact=True)
            yield Select([(q, q) for q in quant_names()], value="q8_0", allow_blank=False,
                         id="gguf-quant", compact=True)
            yield Button("Write GGUF", id="gguf", variant="primary", compact=True)
        yield Static("", id="export-status")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#export-out", Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.start("gguf" if event.input.id == "gguf-out" else "fuse")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.start(event.button.id)

    def _busy(self, busy: bool) -> None:
        for button in self.query(Button):
            button.disabled = busy

    def start(self, what: str) -> None:
        """Write what was asked; a file or folder that exists is overwritten only after a yes."""
        out = self.query_one("#gguf-out" if what == "gguf" else "#export-out",
                             Input).value.strip()
        path = Path(out)
        if out and path.exists() and (path.is_file() or any(path.iterdir())):
            from macft.tui.screens.confirm import ConfirmScreen

            self.app.push_screen(ConfirmScreen(f"{out} exists. Overwrite it?", yes="Overwrite",
                                               no="Cancel"),
                                 lambda yes: self._write(what, out) if yes else None)
            return
        self._write(what, out)

    def _write(self, what: str, out: str) -> None:
        status = self.query_one("#export-status", Static)
        status.set_class(False, "error")
        self._busy(True)
        if what == "gguf":
            quant = str(self.query_one("#gguf-quant", Select).value)
            status.update(f"writing {out} ({quant}) …")
            self.write_gguf(out, quant)
        else:
            status.update(f"fusing into {out} …")
            self.fuse(out)

    def _failed(self, exc: Exception) -> None:
        self.post_message(self.Done(str(exc).splitlines()[0] if str(exc) else
                                    type(exc).__name__, error=True))

    @work(thread=True, exclusive=True, group="export")
    def fuse(self, out: str) -> None:
        from macft.export.targets import fuse_to_folder

        try:
            n, folder = fuse_to_folder(self.run_dir, out)
        except Exception as exc:  # noqa: BLE001 - shown on the screen
            self._failed(exc)
            return
        self.post_message(self.Done(f"fused {n} adapter layers into {folder}"))

    @work(thread=True, exclusive=True, group="export")
    def write_gguf(self, out: str, quant: str) -> None:
        from macft.export.pipeline import export

        lines: list[str] = []

        def say(line: str) -> None:
            lines.append(line)
            self.post_message(self.Progress(line))

        try:
            export(str(self.run_dir), gguf=out, quant=quant, say=say, force=True)  # asked
        except Exception as exc:  # noqa: BLE001 - shown on the screen
            self._failed(exc)
            return
        self.post_message(self.Done("\n".join(lines) + f"\nrun it: macft chat {out}"))

    def on_export_screen_progress(self, message: Progress) -> None:
        self.query_one("#export-status", Static).update(message.text)

    def on_export_screen_done(self, message: Done) -> None:
        status = self.query_one("#export-status", Static)
        status.update(message.text)
        status.set_class(message.error, "error")
        self._busy(False)
