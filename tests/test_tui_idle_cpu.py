"""Idle CPU of `macft tui` in a real terminal (a pty): on Home and on a finished run's monitor
the process uses under 1% of a core over 10 s (issue 20, acceptance 5).

The TUI runs as a child process (`python -m macft tui`) attached to a pseudo-terminal of
120x36, its output drained by a thread the way a terminal reads it. CPU time is read from
/proc/PID/stat (user + system ticks) once the first screen is drawn, and again 10 s later.
"""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import pytest

from test_tui_snapshots import fake_run

ROOT = Path(__file__).resolve().parents[1]
WINDOW = 10.0
pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(),
                                reason="needs /proc (Linux) to read a process's CPU time")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])       # fields 14 and 15 of stat(5)
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


class Terminal:
    """A child process on a pty; everything it writes is kept (and so drained)."""

    def __init__(self, args: list[str], cwd: Path, size=(120, 36)):
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", size[1], size[0], 0, 0))
        env = dict(os.environ, TERM="xterm-256color", PYTHONPATH=str(ROOT),
                   COLUMNS=str(size[0]), LINES=str(size[1]))
        self.proc = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, cwd=cwd,
                                     env=env, start_new_session=True, close_fds=True)
        os.close(slave)
        self.master, self.out = master, bytearray()
        self.reader = threading.Thread(target=self._drain, daemon=True)
        self.reader.start()

    def _drain(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:
                return
            if not chunk:
                return
            self.out += chunk

    def wait_for(self, text: str, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while text.encode() not in self.out:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} on the screen; last output: "
                                     f"{bytes(self.out[-500:])!r}")
            time.sleep(0.1)

    def close(self) -> None:
        if self.proc.poll() is None:
            os.write(self.master, b"q")
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        os.close(self.master)


@pytest.fixture
def project(tmp_path, tiny_model_dir) -> Path:
    (tmp_path / "model").symlink_to(tiny_model_dir)
    fake_run(tmp_path, "demo", 40, 40, "completed", 2_000_000_000)
    # A run that failed before its first step (no total known): the bar must not animate.
    failed = tmp_path / "runs" / "broken"
    failed.mkdir()
    (failed / "recipe.yaml").write_text("name: broken\nmodel: nowhere\n")
    (failed / "metrics.jsonl").write_text(
        '{"event": "Failed", "step": 0, "error": "nowhere: model path not found", "time": 0}\n')
    return tmp_path


def test_idle_tui_uses_under_one_percent_of_a_core(project):
    """Home, a finished and a failed monitor, side by side (CPU time is per process)."""
    cmd = [sys.executable, "-m", "macft", "tui"]
    shown = {"home": ([], "Recent runs"), "finished monitor": (["runs/demo"],
                                                              "completed at step 40"),
             "failed monitor": (["runs/broken"], "model path not found")}
    terms = {name: Terminal(cmd + extra, project) for name, (extra, _) in shown.items()}
    try:
        for name, term in terms.items():
            term.wait_for(shown[name][1])
        time.sleep(1.0)                      # the first frames settle
        start = {name: cpu_seconds(t.proc.pid) for name, t in terms.items()}
        time.sleep(WINDOW)
        used = {name: (cpu_seconds(t.proc.pid) - start[name]) / WINDOW
                for name, t in terms.items()}
        assert all(t.proc.poll() is None for t in terms.values())
    finally:
        for term in terms.values():
            term.close()
    print(f"idle CPU over {WINDOW:.0f} s: " +
          ", ".join(f"{k} {v:.2%} of a core" for k, v in used.items()))
    assert all(v < 0.01 for v in used.values()), used
