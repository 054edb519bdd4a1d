"""Export: write a run as a GGUF file, its adapter alone, a folder Ollama or LM Studio runs, or
a Hugging Face folder; optionally verified against llama.cpp; then chat with the GGUF.

The choices are the export-target registry's (``export.targets``) and the writing is
``pipeline.export``, as `macft export` does: what the CLI refuses without --force, this screen
asks about first.
"""

from __future__ import annotations

from pathlib import Path

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import Button, Checkbox, Footer, Header, Input, Label, ProgressBar, \
    Select, Static

from macft.export.targets import APPS, DEFAULT_QUANT, TARGETS, export_arguments, quant_names
from macft.tui.bridge import StatusLine


def choices() -> list[tuple[str, str]]:
    """(label, name) of every target: the GGUF ones, the apps, then the rest (HF folder)."""
    fused = [(t.label, t.name) for t in TARGETS.values() if t.verifiable]
    return fused + [(a.label, a.name) for a in APPS.values()] + \
        [(t.label, t.name) for t in TARGETS.values() if not t.verifiable]


def quantized(name: str) -> bool:
    return name in APPS or TARGETS[name].quantized


def verifiable(name: str) -> bool:
    return name in APPS or TARGETS[name].verifiable


class ExportScreen(Screen):
    HELP = ("Writes this run's model where you run it: a GGUF file for llama.cpp, the LoRA "
            "adapter alone, an Ollama folder (the GGUF and a Modelfile with the chat template; "
            "then run the `ollama create` line shown), LM Studio's models folder layout, or a "
            "Hugging Face folder for MLX. Verify loads the file in llama.cpp and compares it "
            "with MLX. Nothing is overwritten without asking; Chat talks to the written GGUF.")
    BINDINGS = [Binding("escape", "app.pop_screen", "Back")]

    class Done(StatusLine):
        def __init__(self, text: str, error: bool = False, path: str = ""):
            super().__init__(text, error)
            self.path = path        # the GGUF written, for Chat ("" when none)

    class Progress(StatusLine):
        pass

    def __init__(self, run_dir: Path):
        super().__init__()
        self.run_dir = Path(run_dir)
        self.chat_path: Path | None = None       # the GGUF written last (Chat opens it)

    def compose(self) -> ComposeResult:
        first = choices()[0][1]
        yield Header()
        yield Static(f"Export {self.app.show_path(self.run_dir)}: the base model with the "
                     "run's adapters fused, or the adapter alone.", id="export-intro")
        with Horizontal(classes="export-row"):
            yield Label("target ", classes="bar-label")
            yield Select(choices(), value=first, allow_blank=False, id="export-target",
                         compact=True)
            yield Label(" quant ", classes="bar-label")
            yield Select([(q, q) for q in quant_names()], value=DEFAULT_QUANT,
                         allow_blank=False, id="export-quant", compact=True)
            yield Checkbox("verify with llama.cpp", id="export-verify", compact=True)
        with Horizontal(classes="export-row"):
            yield Label("path   ", classes="bar-label")
            yield Input(str(self.default_out(first)), id="export-out", compact=True)
            yield Button("Write", id="export-write", variant="primary", compact=True)
            yield Button("Chat", id="export-chat", compact=True, disabled=True)
        yield ProgressBar(id="export-progress", show_eta=False, show_percentage=False)
        yield Static("", id="export-status")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#export-progress").display = False
        self.query_one("#export-out", Input).focus()

    # ----- the form -------------------------------------------------------------------------
    @property
    def target(self) -> str:
        return str(self.query_one("#export-target", Select).value)

    def default_out(self, name: str) -> Path:
        """Where a target goes unless told: beside the run, LM Studio's own models folder."""
        run = self.run_dir
        lmstudio = Path.home() / ".lmstudio" / "models"
        return {"gguf": run / f"{run.name}.gguf", "gguf-adapter": run / f"{run.name}-lora.gguf",
                "hf": run / "fused", "ollama": run / "ollama",
                "lmstudio": lmstudio if lmstudio.is_dir() else run / "lmstudio"}.get(
            name, run / name)

    def on_select_changed(self, event: Select.Changed) -> None:
        if event.select.id != "export-target":
            return
        name = self.target
        self.query_one("#export-out", Input).value = str(self.default_out(name))
        self.query_one("#export-quant", Select).disabled = not quantized(name)
        verify = self.query_one("#export-verify", Checkbox)
        verify.disabled = not verifiable(name)
        if verify.disabled:
            verify.value = False

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "export-out":
            self.start()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "export-write":
            self.start()
        elif event.button.id == "export-chat" and self.chat_path is not None:
            from macft.tui.screens.chat import ChatScreen

            self.app.push_screen(ChatScreen(self.chat_path))

    # ----- writing --------------------------------------------------------------------------
    def arguments(self) -> dict:
        """``pipeline.export``'s arguments for what the form says (force aside)."""
        name, out = self.target, self.query_one("#export-out", Input).value.strip()
        quant = str(self.query_one("#export-quant", Select).value)
        return {**export_arguments(name, out), "quant": quant,
                "verify": verifiable(name) and self.query_one("#export-verify", Checkbox).value}

    def start(self) -> None:
        """Write what the form says; what exists is overwritten only after a yes (the CLI's
        --force)."""
        from macft.export import pipeline

        args = self.arguments()
        if not self.query_one("#export-out", Input).value.strip():
            self._show("give a path to write to", error=True)
            return
        existing = [p for p in pipeline.outputs(str(self.run_dir), args.get("gguf"),
                                                args.get("adapter_gguf"), args.get("hf"),
                                                args.get("to"), args["quant"])
                    if pipeline.occupied(p)]
        if not existing:
            self._write(args, force=False)
            return
        from macft.tui.screens.confirm import ConfirmScreen

        names = ", ".join(str(p) for p in existing)
        self.app.push_screen(
            ConfirmScreen(f"{names} {'exists' if len(existing) == 1 else 'exist'}. "
                          "Overwrite?", yes="Overwrite", no="Cancel"),
            lambda yes: self._write(args, force=True) if yes else self._show("nothing written"))

    def _busy(self, busy: bool) -> None:
        for button in self.query(Button):
            button.disabled = busy or (button.id == "export-chat" and self.chat_path is None)
        bar = self.query_one("#export-progress", ProgressBar)
        bar.display = busy          # its animation runs only while something is written
        bar.update(total=None if busy else 1, progress=0 if busy else 1)

    def _show(self, text: str, error: bool = False) -> None:
        status = self.query_one("#export-status", Static)
        status.update(text)
        status.set_class(error, "error")

    def _write(self, args: dict, force: bool) -> None:
        from macft.export import pipeline

        self.chat_path = None
        self._busy(True)
        self._show(f"writing {self.query_one('#export-out', Input).value.strip()} …")
        gguf = pipeline.written_gguf(str(self.run_dir), args.get("gguf"), args.get("to"),
                                     args["quant"])
        self.write_files(args, force, gguf)

    @work(thread=True, exclusive=True, group="export")
    def write_files(self, args: dict, force: bool, gguf: Path | None) -> None:
        from macft.export.pipeline import export

        lines: list[str] = []

        def say(line: str) -> None:
            lines.append(line)
            self.post_message(self.Progress("\n".join(lines)))

        try:
            export(str(self.run_dir), say=say, force=force, **args)
        except Exception as exc:  # noqa: BLE001 - shown on the screen
            text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            self.post_message(self.Done("\n".join(lines + [text]), error=True))
            return
        if gguf is not None:
            lines.append(f"run it: macft chat {gguf}")
        self.post_message(self.Done("\n".join(lines), path=str(gguf or "")))

    def on_export_screen_progress(self, message: Progress) -> None:
        self._show(message.text)

    def on_export_screen_done(self, message: Done) -> None:
        self.chat_path = Path(message.path) if message.path and not message.error else None
        self._show(message.text, message.error)
        self._busy(False)
