"""Typed training events, the sinks that receive them, and the stop/pause signal.

The training loop never prints: it emits these events to a list of sinks. The headless command
and the TUI differ only in which sinks they pass and where the stop signal comes from.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class Event:
    @property
    def kind(self) -> str:
        return type(self).__name__

    def to_json(self) -> dict:
        return {"event": self.kind, "time": time.time(), **dataclasses.asdict(self)}


@dataclass(frozen=True)
class RunStarted(Event):
    run_dir: str
    model: str
    method: str
    device: str
    dtype: str
    blas: str
    total_steps: int
    start_step: int
    trainable_params: int
    total_params: int
    train_examples: int
    data_stats: dict = field(default_factory=dict)


@dataclass(frozen=True)
class KernelCheck(Event):
    """Whether a device kernel is used by this run, from its parity check on this device."""

    kernel: str            # "attention.metal"
    verdict: str           # "passed", "failed" or "unchecked" (kernels: device)
    detail: str            # "24 cases", or the failed case and what differed
    cached: bool = False   # the verdict came from the cache folder

    def line(self) -> str:
        if self.verdict == "unchecked":
            return f"kernel {self.kernel}: used without a parity check (kernels: device)"
        detail = self.detail + (", cached" if self.cached else "")
        if self.verdict == "passed":
            return f"kernel {self.kernel}: passed its parity check here ({detail}); used"
        return (f"kernel {self.kernel}: failed its parity check here ({detail}); "
                "using the reference")


@dataclass(frozen=True)
class Step(Event):
    step: int
    total_steps: int
    loss: float
    learning_rate: float
    tokens: int            # trained-on input tokens in this step
    tokens_per_sec: float
    elapsed: float
    eta: float
    peak_memory_gb: float
    epoch: float
    metrics: dict = field(default_factory=dict)   # objective-specific (rewards, accuracy)
    memory_gb: float = 0.0     # memory in use after the step (peak_memory_gb: the run's most)


@dataclass(frozen=True)
class Eval(Event):
    step: int
    val_loss: float
    best_val_loss: float
    improved: bool
    metrics: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Sample(Event):
    step: int
    prompt: str
    text: str
    rewards: dict = field(default_factory=dict)   # GRPO: each reward's score, total


@dataclass(frozen=True)
class Checkpoint(Event):
    step: int
    path: str
    best: bool = False


@dataclass(frozen=True)
class Finished(Event):
    step: int
    reason: str            # "completed", "stopped", "early_stopping"
    best_val_loss: float | None
    adapter_path: str
    elapsed: float


@dataclass(frozen=True)
class Failed(Event):
    step: int
    error: str


@dataclass(frozen=True)
class Notice(Event):
    """One line the user should see that changes nothing about the run's outcome: a stale
    lock taken over, temporary files of a killed writer removed, a damaged checkpoint skipped,
    a step skipped for a non-finite loss."""

    step: int
    text: str


# The task of the Progress events of a validation pass: ``done`` of ``total`` batches.
EVALUATING = "evaluating"


@dataclass(frozen=True)
class Progress(Event):
    """A long preparation before the first step (e.g. DPO's reference log-probs) or a
    validation pass (task ``EVALUATING``), so the run does not look hung: ``done`` of
    ``total`` items."""

    task: str
    done: int
    total: int

    def line(self) -> str:
        return f"{self.task} {self.done}/{self.total}"


EVENT_TYPES = {cls.__name__: cls for cls in (RunStarted, KernelCheck, Step, Eval, Sample,
                                             Checkpoint, Finished, Failed, Notice, Progress)}


def event_from_json(row: dict) -> Event | None:
    """The typed event of one ``to_json`` row (None for an unknown or damaged one)."""
    cls = EVENT_TYPES.get(row.get("event", ""))
    if cls is None:
        return None
    names = {f.name for f in dataclasses.fields(cls)}
    try:
        return cls(**{k: v for k, v in row.items() if k in names})
    except TypeError:
        return None


class Sink(Protocol):
    def __call__(self, event: Event) -> None: ...


class StopSignal:
    """Checked by the loop every step; set from a signal handler, a UI key or a test."""

    def __init__(self):
        self._stop = threading.Event()
        self._resume = threading.Event()
        self._resume.set()
        self._save_now = threading.Event()

    def stop(self) -> None:
        self._stop.set()
        self._resume.set()

    def pause(self) -> None:
        self._resume.clear()

    def resume(self) -> None:
        self._resume.set()

    def request_checkpoint(self) -> None:
        self._save_now.set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    @property
    def paused(self) -> bool:
        return not self._resume.is_set()

    def wait_if_paused(self) -> None:
        self._resume.wait()

    def take_checkpoint_request(self) -> bool:
        if self._save_now.is_set():
            self._save_now.clear()
            return True
        return False


class MetricsFile:
    """Appends every event as one JSON line to ``<run>/metrics.jsonl``."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, event: Event) -> None:
        from macft.write_errors import reported

        with reported(self.path), self.path.open("a") as fh:
            fh.write(json.dumps(event.to_json()) + "\n")
            fh.flush()
            os.fsync(fh.fileno())


def read_metrics(path: str | Path) -> list[dict]:
    """Events of a run folder's metrics.jsonl (a torn last line from a kill is skipped)."""
    out = []
    p = Path(path)
    if not p.exists():
        return out
    for line in p.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def _fmt_time(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class ConsoleProgress:
    """The headless sink: a progress bar with loss, tokens/s and ETA on stderr."""

    def __init__(self, stream=None, width: int = 24):
        self.stream = stream or sys.stderr
        self.width = width
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._last_len = 0
        self._last_line_time = 0.0

    def _line(self, text: str) -> None:
        if self.tty:
            self.stream.write("\r" + text.ljust(self._last_len))
            self._last_len = len(text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def _newline(self, text: str) -> None:
        if self.tty and self._last_len:
            self.stream.write("\r" + " " * self._last_len + "\r")
            self._last_len = 0
        self.stream.write(text + "\n")
        self.stream.flush()

    def __call__(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            self._newline(f"run: {event.run_dir}")
            self._newline(f"model: {event.model} | method: {event.method} | trainable params: "
                          f"{event.trainable_params:,} of {event.total_params:,}")
            self._newline(f"device: {event.device} | dtype: {event.dtype} | BLAS: {event.blas}")
            stats = event.data_stats
            if stats:
                self._newline("data: " + ", ".join(f"{k} {v}" for k, v in stats.items()))
            if event.start_step:
                self._newline(f"resuming at step {event.start_step} of {event.total_steps}")
        elif isinstance(event, KernelCheck):
            self._newline(event.line())
        elif isinstance(event, Notice):
            self._newline(event.text)
        elif isinstance(event, Progress) and event.task == EVALUATING:
            if self.tty:                  # on the bar's line; the Eval line replaces it
                self._line(event.line())
        elif isinstance(event, Progress):
            now = time.monotonic()
            if self.tty or event.done == event.total or now - self._last_line_time >= 5.0:
                self._last_line_time = now
                (self._newline if event.done == event.total else self._line)(event.line())
        elif isinstance(event, Step):
            now = time.monotonic()
            last = event.step == event.total_steps
            if not self.tty and not last and now - self._last_line_time < 5.0:
                return
            self._last_line_time = now
            done = int(self.width * event.step / max(event.total_steps, 1))
            bar = "#" * done + "-" * (self.width - done)
            self._line(f"[{bar}] {event.step}/{event.total_steps} loss {event.loss:.4f} "
                       + (f"acc {event.metrics['accuracy']:.2f} " if "accuracy" in event.metrics
                          else "")
                       + (f"expert max share {event.metrics['moe_max_share']:.2f} "
                          if "moe_max_share" in event.metrics else "")
                       + f"lr {event.learning_rate:.2e} {event.tokens_per_sec:,.0f} tok/s "
                       f"elapsed {_fmt_time(event.elapsed)} eta {_fmt_time(event.eta)}")
        elif isinstance(event, Eval):
            mark = " (best)" if event.improved else ""
            extra = "".join(f", {k} {v:.3f}" for k, v in event.metrics.items()
                            if k in ("accuracy", "margin"))
            m = event.metrics
            if "general_perplexity" in m:
                extra += (f", general perplexity {m['general_perplexity']:.4g} (base "
                          f"{m['general_baseline']:.4g}"
                          + (", past the forgetting bound)" if m.get("general_over") else ")"))
            self._newline(f"step {event.step}: val loss {event.val_loss:.4f}{extra}{mark}")
        elif isinstance(event, Sample):
            text = event.text.replace("\n", " ")[:160]
            scores = "".join(f" [{k} {v:.2f}]" for k, v in event.rewards.items())
            self._newline(f"step {event.step} sample: {text}{scores}")
        elif isinstance(event, Checkpoint):
            self._newline(f"step {event.step}: checkpoint {event.path}")
        elif isinstance(event, Finished):
            best = f", best val loss {event.best_val_loss:.4f}" if event.best_val_loss else ""
            self._newline(f"finished ({event.reason}) at step {event.step} in "
                          f"{_fmt_time(event.elapsed)}{best}; adapter: {event.adapter_path}")
        # Failed is not printed here: the CLI reports the error itself, as one line.


class Collect:
    """Keeps every event in a list (tests, the TUI's history)."""

    def __init__(self):
        self.events: list[Event] = []

    def __call__(self, event: Event) -> None:
        self.events.append(event)

    def of(self, kind: type) -> list:
        return [e for e in self.events if isinstance(e, kind)]
