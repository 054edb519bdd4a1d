"""Atomic checkpoints of a run: adapter weights, optimizer state and loop state.

A checkpoint is written into a temporary folder and renamed into place, then the ``latest``
pointer is replaced; a kill at any moment leaves the previous checkpoint intact and loadable.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten, tree_unflatten

from macft.errors import MacftError
from macft.models.adapters import load_adapter_weights, save_adapters

KEEP = 2


def folder(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def save(run_dir: Path, step: int, model, optimizer, state: dict, adapter_cfg: dict) -> Path:
    root = folder(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:07d}"
    final, tmp = root / name, root / f".tmp-{name}"
    shutil.rmtree(tmp, ignore_errors=True)
    save_adapters(model, tmp, adapter_cfg)
    opt_state = dict(tree_flatten(optimizer.state))
    mx.save_safetensors(str(tmp / "optimizer.safetensors"), opt_state)
    _write_text(tmp / "state.json", json.dumps(dict(state, step=step), indent=2))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _write_text(root / "latest", name)
    _prune(root)
    return final


def _complete(root: Path) -> list[Path]:
    return sorted(p for p in root.glob("step-*") if (p / "state.json").exists())


def _prune(root: Path) -> None:
    for old in _complete(root)[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)


def latest(run_dir: Path) -> Path | None:
    root = folder(run_dir)
    if not root.exists():
        return None
    pointer = root / "latest"
    if pointer.exists():
        candidate = root / pointer.read_text().strip()
        if (candidate / "state.json").exists():
            return candidate
    done = _complete(root)
    return done[-1] if done else None


def restore(ckpt: Path, model, optimizer) -> dict:
    """Load adapter weights and optimizer state in place; return the saved loop state."""
    try:
        state = json.loads((ckpt / "state.json").read_text())
        load_adapter_weights(model, ckpt)
        opt = mx.load(str(ckpt / "optimizer.safetensors"))
    except (OSError, ValueError, json.JSONDecodeError) as exc:
        raise MacftError(f"{ckpt}: checkpoint is unreadable ({exc})".splitlines()[0]) from None
    optimizer.state = tree_unflatten(list(opt.items()))
    mx.eval(model.parameters(), optimizer.state)
    return state
