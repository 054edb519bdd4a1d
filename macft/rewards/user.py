"""A user reward: a function in a Python file the recipe names, loaded from that file only.

This runs the user's own code, as ``python my_rewards.py`` would: the file is the one the recipe
names (relative to the recipe's folder), never a path taken from the data.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path


def resolve(file: str, base_dir: Path) -> Path:
    path = Path(file).expanduser()
    return path if path.is_absolute() else Path(base_dir) / path


def load_function(path: Path, function: str, ctx):
    """``function`` from the file at ``path``; one-line errors name the recipe key."""
    if not path.is_file():
        raise ctx.error("file", f"names {path}, which does not exist")
    # A name of its own per file, so two reward files with the same stem do not collide.
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
    name = f"macft_user_reward_{path.stem}_{digest}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 (the user's code: any error is reported in one line)
        sys.modules.pop(name, None)
        raise ctx.error("file", f"names {path}, which failed to import: "
                                f"{type(exc).__name__}: {exc}") from None
    fn = getattr(module, function, None)
    if not callable(fn):
        raise ctx.error("function", f"'{function}' is not a function in {path}")
    return fn
