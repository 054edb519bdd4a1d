"""A progress bar on stderr that appears only once work has taken longer than a second."""

from __future__ import annotations

import sys
import time


class StderrBar:
    def __init__(self, stream=None, delay: float = 1.0):
        self.stream = stream or sys.stderr
        self.delay = delay
        self.start = time.monotonic()
        self.label = None
        self.drawn = 0.0

    def __call__(self, label: str, done: int, total: int) -> None:
        now = time.monotonic()
        if label != self.label:
            self.finish()
            self.label, self.start = label, now
        if now - self.start < self.delay or (done < total and now - self.drawn < 0.1):
            return
        self.drawn = now
        filled = int(24 * done / max(total, 1))
        self.stream.write(f"\r{label} [{'#' * filled}{'.' * (24 - filled)}] {done}/{total}")
        self.stream.flush()

    def finish(self) -> None:
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()
        self.drawn = 0.0
