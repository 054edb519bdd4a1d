"""The recipes shipped with macft and the data they train on, and ``macft init``'s copy of them.

``recipes/`` and ``data/`` here link to the repository's top-level folders, so a checkout and an
installed wheel (which holds real copies, as package data) find them at the same place. A
shipped recipe names its data relative to this folder (``data/quickstart/train.jsonl``), the
way the README's commands use it from the repository root.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from macft import recipe as recipe_mod
from macft.errors import MacftError

HOME = Path(__file__).resolve().parent
RECIPES = (HOME / "recipes").resolve()
DATA_KEYS = ("train", "valid", "test")


def recipes() -> dict[str, Path]:
    """Shipped recipe name (the file's stem) -> its file."""
    return {p.stem: p for p in sorted(RECIPES.glob("*.yaml"))}


def data_paths(raw: dict) -> list[str]:
    """The data files a raw recipe names, its stages' included, each once, in order."""
    sections = [raw.get("data") or {}] + [s.get("data") or {} for s in raw.get("stages") or []]
    out = []
    for section in sections:
        for key in DATA_KEYS:
            value = section.get(key)
            if value and value not in out:
                out.append(value)
    return out


def _empty_folder(dest: Path) -> Path:
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise MacftError(f"{dest}: already exists and is not empty; give `macft init` a new "
                         "folder")
    return dest


def _copy_data(paths: list[str], dest: Path) -> list[Path]:
    """Copy each data file (and its folder's README.md) to the same relative place in dest."""
    copied = []
    for rel in paths:
        src = (HOME / rel).resolve()
        if Path(rel).is_absolute() or ".." in Path(rel).parts or not src.is_file():
            raise MacftError(f"{rel}: a shipped recipe names data that is not shipped")
        for one in (src, src.parent / "README.md"):
            target = dest / Path(rel).parent / one.name
            if one.is_file() and not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(one, target)
                copied.append(target)
    return copied


def init(name: str, dest: str | Path | None = None) -> list[Path]:
    """Copy shipped recipe ``name`` to ``dest``/recipe.yaml (default folder: ``name``) with its
    data beside it; return the files written. The copy keeps the data's relative paths, so
    the recipe runs with ``cd dest && macft run recipe.yaml``."""
    known = recipes()
    if name not in known:
        raise MacftError(f"unknown recipe '{name}'; shipped recipes: {', '.join(known)}")
    dest = _empty_folder(Path(dest or name))
    text = known[name].read_text()
    raw = recipe_mod.parse_yaml(text)
    recipe_mod.from_dict(raw, str(known[name]))     # a broken shipped recipe fails here
    dest.mkdir(parents=True, exist_ok=True)
    copied = _copy_data(data_paths(raw), dest)
    (dest / "recipe.yaml").write_text(_retitled(text, name))
    return [dest / "recipe.yaml", *copied]


def _retitled(text: str, name: str) -> str:
    """The recipe's first line names the command that runs it: here, from its own folder."""
    first, _, rest = text.partition("\n")
    if first.startswith("# macft run "):
        first = f"# macft run recipe.yaml   (this folder was made by `macft init {name}`)"
    return f"{first}\n{rest}"
