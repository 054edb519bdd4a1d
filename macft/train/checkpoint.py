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
from macft.models.adapters import save_adapters

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
    """Load adapter weights and optimizer state in place; return the saved loop state.
    Everything is read and checked before anything is applied, so a damaged checkpoint
    leaves the model and optimizer as they were."""
    state, weights, opt = _read(ckpt, model, optimizer)
    model.load_weights(list(weights.items()), strict=False)
    optimizer.state = tree_unflatten(list(opt.items()))
    mx.eval(model.parameters(), optimizer.state)
    return state


def restore_newest(run_dir: Path, model, optimizer) -> tuple[Path, dict, list[str]]:
    """Restore the newest intact checkpoint; returns it, its loop state, and one line per
    newer checkpoint that was skipped (which, and why). None intact: ``MacftError``."""
    skipped = []
    for ckpt in candidates(run_dir):
        try:
            return ckpt, restore(ckpt, model, optimizer), skipped
        except MacftError as exc:
            skipped.append(f"skipped checkpoint {ckpt.name}: {_why(exc, ckpt)}")
    reasons = "; ".join(line.removeprefix("skipped checkpoint ") for line in skipped)
    raise MacftError(f"{folder(run_dir)}: no intact checkpoint to resume from ({reasons})")


def candidates(run_dir: Path) -> list[Path]:
    """Checkpoint folders newest first, the one ``latest`` points at leading."""
    newest = latest(run_dir)
    rest = [p for p in reversed(runs.complete_checkpoints(run_dir)) if p != newest]
    return ([newest] if newest is not None else []) + rest


def _why(exc: MacftError, ckpt: Path) -> str:
    return str(exc).removeprefix(f"{ckpt}: ")


def _read(ckpt: Path, model, optimizer) -> tuple[dict, dict, dict]:
    state = _read_state(ckpt)
    weights = _load_tensors(ckpt / runs.ADAPTERS)
    opt = _load_tensors(ckpt / "optimizer.safetensors")
    _same_keys(ckpt / runs.ADAPTERS, weights, dict(tree_flatten(model.trainable_parameters())))
    _same_keys(ckpt / "optimizer.safetensors", opt, dict(tree_flatten(optimizer.state)))
    return state, weights, opt


def _read_state(ckpt: Path) -> dict:
    path = ckpt / "state.json"
    try:
        state = json.loads(path.read_text())
        int(state["step"])
    except FileNotFoundError:
        raise MacftError(f"{ckpt}: state.json is missing") from None
    except json.JSONDecodeError as exc:
        raise MacftError(f"{ckpt}: state.json:{exc.lineno}: invalid JSON ({exc.msg})") from None
    except (OSError, KeyError, TypeError, ValueError) as exc:
        raise MacftError(f"{ckpt}: state.json is unreadable ({type(exc).__name__}: "
                         f"{exc})") from None
    return state


def _load_tensors(path: Path) -> dict:
    if not path.exists():
        raise MacftError(f"{path.parent}: {path.name} is missing")
    try:
        out = mx.load(str(path))
        mx.eval(list(out.values()))
    except (OSError, ValueError, RuntimeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise MacftError(f"{path.parent}: {path.name} is unreadable ({first})") from None
    return out


def _same_keys(path: Path, got: dict, want: dict) -> None:
    """A checkpoint must hold every tensor the run trains, each in its shape."""
    for key, value in want.items():
        if key not in got:
            raise MacftError(f"{path.parent}: {path.name} lacks tensor '{key}'")
        if tuple(got[key].shape) != tuple(value.shape):
            raise MacftError(f"{path.parent}: {path.name}: tensor '{key}' has shape "
                             f"{tuple(got[key].shape)}, the run trains {tuple(value.shape)}")
