"""The engine never imports the UI; `macft tui` works in a real terminal (tmux)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEADLESS = ["macft", "macft.recipe", "macft.events", "macft.train", "macft.train.loop",
            "macft.data", "macft.models", "macft.models.load", "macft.export", "macft.cli"]


def test_headless_modules_do_not_import_textual():
    code = ("import json, sys\n"
            f"for name in {HEADLESS!r}:\n"
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
