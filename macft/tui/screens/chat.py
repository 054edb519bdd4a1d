"""Chat: talk to a GGUF file through llama.cpp, as `macft chat FILE.gguf` does in a terminal.

The same pieces as the command (``export.llamacpp.open_gguf`` and ``export.chat.answer``, which
renders the file's own chat template), run in a worker thread; the reply streams in.
"""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Header, Input, Static

from macft.tui.bridge import StatusLine


class ChatScreen(Screen):
    HELP = ("Talks to the GGUF file through llama.cpp (llama-cpp-python), the way `macft chat "
            "FILE` and other llama.cpp front ends see it: its own chat template, greedy "
            "answers. Type a message and press Enter; ctrl+l forgets the conversation.")
    BINDINGS = [Binding("escape", "app.pop_screen", "Back"),
                Binding("ctrl+l", "reset", "Forget", priority=True)]

    class Reply(Message):
        """The assistant's reply so far (``done`` once complete); a newer one replaces it."""

        def __init__(self, text: str, done: bool = False, failed: bool = False):
            super().__init__()
            self.text, self.done, self.failed = text, done, failed

        def can_replace(self, message: Message) -> bool:
            return isinstance(message, ChatScreen.Reply) and not message.done

    class Status(StatusLine):
        pass

    def __init__(self, gguf: str | Path):
        super().__init__()
        self.gguf = Path(gguf)
        self.messages: list[dict] = []
        self._llm = None

    def compose(self) -> ComposeResult:
        yield Header()
        with VerticalScroll(id="chat-log"):
            yield Static("", id="chat-text")
        yield Input(placeholder="A message; Enter sends it", id="chat-input")
        yield Static("", id="chat-status")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#chat-log").border_title = f"{self.gguf.name} in llama.cpp"
        self.query_one("#chat-input", Input).focus()

    def transcript(self, pending: str | None = None) -> Text:
        out = Text()
        for m in self.messages + ([{"role": "assistant", "content": pending}]
                                  if pending is not None else []):
            you = m["role"] == "user"
            out.append("you  " if you else "model  ", style="bold cyan" if you else "bold")
            out.append(m["content"] + "\n\n")
        return out

    def on_input_submitted(self, event: Input.Submitted) -> None:
        text = event.value.strip()
        if not text:
            return
        event.input.value = ""
        self.messages.append({"role": "user", "content": text})
        self.query_one("#chat-text", Static).update(self.transcript(""))
        event.input.disabled = True
        self.reply(list(self.messages))

    @work(thread=True, exclusive=True, group="chat")
    def reply(self, messages: list[dict]) -> None:
        from macft.export.chat import answer
        from macft.export.llamacpp import open_gguf
        from macft.generation import MAX_TOKENS

        parts: list[str] = []

        def emit(piece: str) -> None:
            parts.append(piece)
            self.post_message(self.Reply("".join(parts)))

        try:
            if self._llm is None:
                self.post_message(self.Status(f"loading {self.gguf.name} …"))
                self._llm = open_gguf(self.gguf, n_ctx=4096)
            self.post_message(self.Status("answering …"))
            text = answer(self._llm, messages, MAX_TOKENS, 0.0, emit)
        except Exception as exc:  # noqa: BLE001 - shown on the screen
            self.post_message(self.Status(str(exc).splitlines()[0] if str(exc) else
                                          type(exc).__name__, error=True))
            self.post_message(self.Reply("", done=True, failed=True))
            return
        self.post_message(self.Status(f"greedy, at most {MAX_TOKENS} tokens"))
        self.post_message(self.Reply(text, done=True))

    def on_chat_screen_reply(self, message: Reply) -> None:
        if not message.done:
            self.query_one("#chat-text", Static).update(self.transcript(message.text))
            return
        if message.failed:
            self.messages.pop()          # not answered: not part of the conversation
        else:
            self.messages.append({"role": "assistant", "content": message.text})
        self.query_one("#chat-text", Static).update(self.transcript())
        self.query_one("#chat-log", VerticalScroll).scroll_end(animate=False)
        box = self.query_one("#chat-input", Input)
        box.disabled = False
        box.focus()

    def on_chat_screen_status(self, message: Status) -> None:
        status = self.query_one("#chat-status", Static)
        status.update(message.text)
        status.set_class(message.error, "error")

    def action_reset(self) -> None:
        self.messages = []
        self.query_one("#chat-text", Static).update("")
        self.query_one("#chat-status", Static).update("conversation forgotten")
