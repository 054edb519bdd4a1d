"""Compare: one prompt answered by the base model and by the tuned run, side by side."""

from __future__ import annotations

from pathlib import Path

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Header, Input, Static

from macft.report import saved_lines
from macft.tui.bridge import StatusLine


class CompareScreen(Screen):
    HELP = ("One prompt answered by the base model and by the tuned run, side by side, greedy "
            "(at most eval.max_tokens tokens). Type a prompt and press Enter; below, the last "
            "`macft compare` report saved in the run folder, if any.")
    BINDINGS = [Binding("escape", "app.pop_screen", "Back")]

    class Answer(Message):
        def __init__(self, side: str, text: str):
            super().__init__()
            self.side, self.text = side, text

    class Status(StatusLine):
        pass

    def __init__(self, run_dir: Path):
        super().__init__()
        self.run_dir = Path(run_dir)
        self._models = None  # (base Loaded, tuned Loaded, recipe), filled by the worker

    def compose(self) -> ComposeResult:
        yield Header()
        yield Input(placeholder="A prompt; Enter answers it with the base model and the run",
                    id="prompt")
        with Horizontal(id="answers"):
            with VerticalScroll(id="base-box", classes="answer-box"):
                yield Static("", id="base-answer")
            with VerticalScroll(id="tuned-box", classes="answer-box"):
                yield Static("", id="tuned-answer")
        yield Static("", id="compare-status")
        yield Static("\n".join(saved_lines(self.run_dir)) or
                     "no report yet: macft compare BASE RUN --data TEST", id="compare-report")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#base-box").border_title = "base model"
        self.query_one("#tuned-box").border_title = f"tuned: {self.app.show_path(self.run_dir)}"
        self.query_one("#prompt", Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        prompt = event.value.strip()
        if not prompt:
            return
        self.query_one("#base-answer", Static).update("…")
        self.query_one("#tuned-answer", Static).update("…")
        self.answer(prompt)

    @work(thread=True, exclusive=True, group="compare")
    def answer(self, prompt: str) -> None:
        from macft.generation import chat_prompt, greedy
        from macft.models.load import load_base, load_for_inference

        try:
            if self._models is None:
                self.post_message(self.Status("loading the base model and the run…"))
                tuned, recipe = load_for_inference(str(self.run_dir))
                m = recipe.model
                self._models = (load_base(m.path, m.revision, m.dtype), tuned, recipe)
            base, tuned, recipe = self._models
            for side, loaded in (("base", base), ("tuned", tuned)):
                self.post_message(self.Status(f"generating ({side})…"))
                ids = chat_prompt(loaded.tokenizer, prompt, recipe.data.system_prompt)
                text = greedy(loaded.model, loaded.tokenizer, [ids], recipe.eval.max_tokens)[0]
                self.post_message(self.Answer(side, text))
            self.post_message(self.Status(f"greedy, at most {recipe.eval.max_tokens} tokens "
                                          f"(eval.max_tokens)"))
        except Exception as exc:  # noqa: BLE001 - shown on the screen
            self.post_message(self.Status(str(exc).splitlines()[0] if str(exc) else
                                          type(exc).__name__, error=True))

    def on_compare_screen_answer(self, message: Answer) -> None:
        self.query_one(f"#{message.side}-answer", Static).update(message.text)

    def on_compare_screen_status(self, message: Status) -> None:
        status = self.query_one("#compare-status", Static)
        status.update(message.text)
        status.set_class(message.error, "error")
        if self._models is not None:
            self.query_one("#base-box").border_title = f"base: {self._models[2].model.path}"
