"""From the training thread to the UI: a sink that only posts Textual messages.

The loop calls the sink in its own thread. The sink never touches a widget: it wraps events in
``RunEvents`` messages and hands them to ``post`` (``App.post_message``, which is thread-safe).
Step events are batched so that at most ``rate`` messages a second reach the UI however fast
the loop runs; every step still arrives (the chart needs them all), and any other event first
flushes the steps before it, so order is kept.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

from textual.message import Message

from macft.events import Event, Failed, Finished, Step


class StatusLine(Message):
    """A one-line status (or error) from a screen's worker thread."""

    def __init__(self, text: str, error: bool = False):
        super().__init__()
        self.text, self.error = text, error


class RunEvents(Message):
    """Engine events of one run, in the order the loop emitted them."""

    def __init__(self, run_dir: str, events: tuple[Event, ...]):
        super().__init__()
        self.run_dir = run_dir
        self.events = events


class UiSink:
    def __init__(self, run_dir: str, post: Callable[[Message], object], rate: float = 10.0,
                 clock: Callable[[], float] = time.monotonic):
        self.run_dir = run_dir
        self.post = post
        self.interval = 1.0 / rate
        self.clock = clock
        self._lock = threading.Lock()
        self._pending: list[Step] = []
        self._last_post = float("-inf")
        self._timer: threading.Timer | None = None
        self.ended = False          # a Finished or Failed went out
        self.posted = 0             # messages posted (tests check the throttle with it)

    def __call__(self, event: Event) -> None:
        if isinstance(event, Step):
            with self._lock:
                self._pending.append(event)
                wait = self._last_post + self.interval - self.clock()
                if wait > 0:
                    self._arm(wait)
                    return
            self.flush()
            return
        if isinstance(event, (Finished, Failed)):
            self.ended = True
        self.flush(event)

    def _arm(self, wait: float) -> None:
        # The last steps before a pause must still show up: flush them when the interval ends.
        if self._timer is None:
            self._timer = threading.Timer(wait, self.flush)
            self._timer.daemon = True
            self._timer.start()

    def flush(self, extra: Event | None = None) -> None:
        with self._lock:
            batch = tuple(self._pending) + ((extra,) if extra is not None else ())
            self._pending.clear()
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if not batch:
                return
            self._last_post = self.clock()
            self.posted += 1
            # Posted under the lock so that a timer flush cannot overtake a later batch.
            self.post(RunEvents(self.run_dir, batch))
