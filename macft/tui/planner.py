"""`macft plan --json` as a child process, for the form's Plan key.

The plan trains two steps (``mx.compile`` included) and reads MLX's peak memory: inside the TUI
it would count the UI's own buffers, leave compiled graphs behind and, run in a thread, abort
the interpreter at exit (see ``trainer``). A fresh interpreter measures what `macft plan`
measures; the TUI gets the numbers back as a ``plan.Plan`` and shows its ``report``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from macft import recipe as recipe_mod
from macft.errors import MacftError
from macft.plan import Plan
from macft.tui.trainer import _error_line


class PlanProcess:
    """One `macft plan` child for one recipe (the form's values, saved or not)."""

    def __init__(self, recipe: recipe_mod.Recipe, cwd: Path | None = None):
        self.recipe = recipe
        fd, name = tempfile.mkstemp(prefix="macft-plan-", suffix=".yaml")
        os.close(fd)
        self.recipe_file = Path(name)
        recipe_mod.dump(recipe, self.recipe_file)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "macft", "plan", str(self.recipe_file), "--json"], cwd=cwd,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def result(self) -> Plan:
        """Wait for the child; its Plan, or MacftError with its one-line error."""
        try:
            out, err = self.proc.communicate()
        finally:
            self.recipe_file.unlink(missing_ok=True)
        last = out.decode("utf-8", "replace").strip().splitlines()[-1:]
        try:
            return Plan.from_json(self.recipe, json.loads(last[0]))
        except (IndexError, ValueError, KeyError, TypeError):
            raise MacftError(_error_line(err.decode("utf-8", "replace"),
                                         self.proc.returncode)) from None

    def cancel(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
