"""From a screen's worker thread to the UI: messages only (``post_message`` is thread-safe).

Training no longer runs in a thread of the UI (``tui.trainer`` starts it as a child process and
follows its metrics.jsonl), so what is left here is the one-line status of the compare and
export workers.
"""

from __future__ import annotations

from textual.message import Message


class StatusLine(Message):
    """A one-line status (or error) from a screen's worker thread."""

    def __init__(self, text: str, error: bool = False):
        super().__init__()
        self.text, self.error = text, error
