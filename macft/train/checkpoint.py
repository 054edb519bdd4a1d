"""Atomic checkpoints of a run: adapter weights, optimizer state and loop state.

A checkpoint is written into a temporary folder and renamed into place, then the ``latest``
pointer is replaced; a kill at any moment leaves the previous checkpoint intact and loadable.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten, tree_unflatten

from macft import runs
from macft.errors import MacftError
from macft.models.adapters import load_adapter_weights, save_adapters

KEEP = 2


def folder(run_dir: Path) -> Path:
    return runs.checkpoints_dir(run_dir)


def save(run_dir: Path, step: int, model, optimizer, state: dict, adapter_cfg: dict) -> Path:
    root = folder(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    name = runs.checkpoint_name(step)
    final = root / name
    with runs.atomic_path(final) as tmp:
        save_adapters(model, tmp, adapter_cfg)
        opt_state = dict(tree_flatten(optimizer.state))
        mx.save_safetensors(str(tmp / "optimizer.safetensors"), opt_state)
        runs.atomic_write(tmp / "state.json", json.dumps(dict(state, step=step), indent=2))
    runs.atomic_write(root / runs.LATEST, name)
    _prune(run_dir)
    return final


def _prune(run_dir: Path) -> None:
    for old in runs.complete_checkpoints(run_dir)[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)


def latest(run_dir: Path) -> Path | None:
    return runs.latest_checkpoint(run_dir)


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
