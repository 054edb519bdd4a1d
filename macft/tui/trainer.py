"""The trainer as a child process: `macft run` started by the TUI, followed through the run
folder's metrics.jsonl, steered with signals.

A thread inside the TUI shared the interpreter with MLX (an ``mx.compile``d function evaluated
in a thread aborts the interpreter at exit) and died with the terminal. A child in its own
session keeps training when the TUI quits or its terminal closes; the TUI (this one or a later
one) only reads the events the trainer appends. Signals: SIGTERM stops after the step with a
checkpoint (as Ctrl-C in `macft run`), SIGUSR1 asks for a checkpoint now, SIGSTOP/SIGCONT pause.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from macft import events as ev, recipe as recipe_mod, runs


class MetricsTail:
    """The events appended to a metrics.jsonl since the last read (whole lines only)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.offset = self.path.stat().st_size if self.path.exists() else 0

    def read(self) -> list[ev.Event]:
        try:
            with self.path.open("rb") as fh:
                if os.fstat(fh.fileno()).st_size < self.offset:
                    self.offset = 0                      # the file was started again
                fh.seek(self.offset)
                data = fh.read()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n") + 1                    # a line being written waits its turn
        self.offset += end
        out = []
        for line in data[:end].splitlines():
            try:
                event = ev.event_from_json(json.loads(line))
            except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
                continue
            if event is not None:
                out.append(event)
        return out


def _error_line(text: str, code: int) -> str:
    """The trainer's one-line error (`macft: error: ...`), else its exit code."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for line in reversed(lines):
        if line.startswith("macft: error: "):
            return line[len("macft: error: "):]
    return lines[-1] if lines else f"the trainer exited with code {code}"


class Trainer:
    """A process training one run folder, signalled by pid, followed through its metrics."""

    pid: int
    run_dir: Path

    def __init__(self):
        self.paused = self.stopping = self.ended = self.closed = False
        self.step = 0

    @staticmethod
    def host() -> str:
        """This machine's name, as the run lock writes it (signals reach only pids here)."""
        import socket

        return socket.gethostname()

    def _exited(self) -> int | None:
        """The exit code (or -1 when unknown) once the process is gone; None while it runs."""
        raise NotImplementedError

    def _error(self, code: int) -> str:
        return f"the trainer (pid {self.pid}) ended without a Finished event (exit {code})"

    def poll(self) -> list[ev.Event]:
        """New events. The run has ``ended`` once the process has exited (its lock and files
        released); without a Finished or Failed event, a Failed one with its error line
        closes the run."""
        code = self._exited()
        events = self.tail.read()
        for e in events:
            self.step = getattr(e, "step", self.step)
            self.closed = self.closed or isinstance(e, (ev.Finished, ev.Failed))
        if code is not None and not self.ended:
            if not self.closed:
                events.append(ev.Failed(self.step, self._error(code)))
            self._cleanup()
            self.ended = True
        return events

    def _cleanup(self) -> None:
        pass

    @property
    def alive(self) -> bool:
        return self._exited() is None

    def _signal(self, sig) -> None:
        if self.alive:
            os.kill(self.pid, sig)

    def pause(self) -> None:
        self._signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        self._signal(signal.SIGCONT)
        self.paused = False

    def stop(self) -> None:
        """Stop after the current step with a checkpoint (the trainer's SIGTERM)."""
        self._signal(signal.SIGTERM)
        self.stopping = True
        if self.paused:
            self.resume()

    def checkpoint(self) -> None:
        self._signal(signal.SIGUSR1)


class AttachedTrainer(Trainer):
    """A trainer this TUI did not start (`macft run` in a shell, or one an earlier TUI left
    training): the pid comes from the run's lock."""

    def __init__(self, run_dir: Path, pid: int):
        super().__init__()
        self.run_dir, self.pid = Path(run_dir), pid
        self.tail = MetricsTail(runs.metrics_path(self.run_dir))

    def _exited(self) -> int | None:
        holder = runs.trainer_alive(self.run_dir)
        return None if holder is not None and holder.pid == self.pid else -1


class TrainerProcess(Trainer):
    """One `macft run` child for one recipe; ``poll()`` returns its new events."""

    def __init__(self, recipe: recipe_mod.Recipe, cwd: Path | None = None):
        super().__init__()
        self.run_dir = Path(recipe.run_dir)
        fd, name = tempfile.mkstemp(prefix="macft-tui-", suffix=".yaml")
        os.close(fd)
        self.recipe_file = Path(name)
        recipe_mod.dump(recipe, self.recipe_file)       # the form's values, saved or not
        self.tail = MetricsTail(runs.metrics_path(self.run_dir))
        self.stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "macft", "run", str(self.recipe_file)], cwd=cwd,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self.stderr,
            start_new_session=True)   # not the terminal's: a hang-up leaves it training

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _exited(self) -> int | None:
        return self.proc.poll()

    def _error(self, code: int) -> str:
        self.stderr.seek(0)
        return _error_line(self.stderr.read().decode("utf-8", "replace"), code)

    def _cleanup(self) -> None:
        self.recipe_file.unlink(missing_ok=True)
