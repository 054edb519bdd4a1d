"""The engine never imports the UI; `macft tui` works in a real terminal (tmux)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def headless_modules() -> list[str]:
    """Every module of the package outside ``macft.tui`` (found by walking it, not a list)."""
    import pkgutil

    import macft

    names = ["macft"] + [m.name for m in pkgutil.walk_packages(macft.__path__, "macft.")]
    return [n for n in names if n != "macft.tui" and not n.startswith("macft.tui.")
            and n != "macft.__main__"]


def test_headless_modules_do_not_import_textual():
    modules = headless_modules()
    assert {"macft.cli", "macft.runs", "macft.train.loop", "macft.train.objectives.sft",
            "macft.export.writer", "macft.models.load"} <= set(modules)
    code = ("import json, sys\n"
            f"for name in {modules!r}:\n"
            "    __import__(name)\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'textual' "
            "or m.startswith('macft.tui'))))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_tmux_session_trains_and_the_chart_moves(tmp_path):
    script = ROOT / "scripts" / "tui_tmux_check.sh"
    out = subprocess.run(["bash", str(script), str(tmp_path)], capture_output=True, text=True,
                         cwd=ROOT, timeout=180)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "chart moved" in out.stdout
