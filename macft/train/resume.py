"""What a resumed run must match: the recipe and the data files it started with.

A run records ``started.json`` in its folder when it starts from scratch: every option's value
(the normalised recipe, not the file's bytes, so reformatting the YAML changes nothing) and the
size and sha256 of each data file. A resume compares the recipe and data it is given with that
record and refuses with a one-line diff (``lora.rank: 4 -> 8``, ``data.train changed: PATH``),
except for the options in ``SAFE_CHANGES`` (train longer, evaluate or save at another cadence)
or when the user passes ``--allow-changes`` (``allow=True``). A preference run whose data
changed is refused even then: its reference log-probs belong to the old pairs.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from macft import recipe as recipe_mod, runs
from macft.errors import MacftError
from macft.recipe import Recipe

# Options a resume may change freely: how long to train, how often to evaluate, save and
# sample, where the folder is, which kernels compute the same ops.
SAFE_CHANGES = frozenset({
    "train.steps", "train.epochs", "train.patience", "train.eval_every", "train.save_every",
    "train.sample_every", "train.sample_prompts", "train.sample_max_tokens", "output",
    "kernels", "eval.max_tokens", "eval.batch_size"})
DATA_KEYS = ("data.train", "data.valid")


def digest_path_of(path: str | Path) -> dict | None:
    """Size and sha256 of a data file, or of every file of a data folder (save_to_disk)."""
    p = Path(path)
    files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file()) \
        if p.is_dir() else []
    if not files:
        return None
    h, size = hashlib.sha256(), 0
    for f in files:
        if p.is_dir():
            h.update(str(f.relative_to(p)).encode() + b"\0")
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
                size += len(block)
    return {"size": size, "sha256": h.hexdigest()}


# Options naming files or folders: compared as resolved paths, so a resume from another
# working directory, or with `runs/x` for `/abs/runs/x`, is the same run.
PATH_KEYS = frozenset({"model.path", "model.chat_template", "data.train", "data.valid",
                       "data.test", "init_adapter", "output"})


def _normalised(key: str, value):
    if key in PATH_KEYS and isinstance(value, str) and value and Path(value).exists():
        return str(Path(value).resolve())
    return value


def snapshot(recipe: Recipe) -> dict:
    values = {k: _normalised(k, v) for k, v in recipe_mod.describe_values(recipe)}
    data = {k: digest_path_of(values[k]) for k in DATA_KEYS if values.get(k)}
    return {"recipe": json.loads(json.dumps(values, default=str)), "data": data}


def record(run_dir: Path, recipe: Recipe) -> None:
    """Remember the recipe and data this run (re)starts with."""
    runs.atomic_write(runs.started_path(run_dir), json.dumps(snapshot(recipe), indent=1))


def read_record(run_dir: Path) -> dict | None:
    return runs.read_json_record(runs.started_path(run_dir))


def changes(old: dict, new: dict) -> tuple[list[str], list[str]]:
    """(option changes as 'key: old -> new', data changes as 'data.x changed: PATH')."""
    opts = [f"{k}: {_show(old['recipe'].get(k))} -> {_show(v)}"
            for k, v in new["recipe"].items()
            if k not in SAFE_CHANGES and not _same(k, old["recipe"].get(k), v)]
    data = [f"{k} changed: {new['recipe'].get(k)}" for k in sorted(set(old["data"]) |
                                                                    set(new["data"]))
            if old["data"].get(k) != new["data"].get(k)]
    return opts, data


def _same(key: str, old, new) -> bool:
    """Equal values; for a path that no longer exists (a moved base model), the same path
    spelt relative to here: the load that follows names what is missing."""
    if old == new:
        return True
    return (key in PATH_KEYS and isinstance(new, str) and isinstance(old, str) and bool(new)
            and not Path(new).exists() and os.path.abspath(new) == old)


def _show(value) -> str:
    return json.dumps(value) if isinstance(value, (str, list, dict)) or value is None \
        else str(value)


def check(run_dir: Path, recipe: Recipe, allow: bool = False) -> bool:
    """Refuse a resume whose recipe or data differ from the record (see the module's doc);
    returns True when it accepted changes (the caller records the new state)."""
    old = read_record(run_dir)
    if old is None:
        return False                 # a folder from before records: nothing to compare
    opts, data = changes(old, snapshot(recipe))
    if not (opts or data):
        return False
    diff = ", ".join(opts + data)
    from macft.train.objectives.preference import LOSSES, needs_reference

    dpo_like = recipe.objective in LOSSES and needs_reference(recipe.objective)
    if data and dpo_like and runs.reference_path(run_dir).exists():
        raise MacftError(f"{run_dir}: {diff}; its reference log-probs "
                         f"({runs.REFERENCE_LOGPS}) were computed on the old pairs: train "
                         "into another folder")
    if not allow:
        raise MacftError(f"{run_dir}: the run started with another recipe or data ({diff}); "
                         "resume with --allow-changes to accept that, or train into another "
                         "folder")
    return True
