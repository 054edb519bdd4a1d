"""The package's layer order, checked on the source (an AST walk over every module).

kernels < models < train: a lower layer never imports a higher one; evaluation uses the losses,
never the trainer; the engine never imports the UI (only the CLI opens it, lazily).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "macft"
ENGINE_ONLY = ("macft.train.loop", "macft.train.checkpoint", "macft.train.distributed")

# module prefix -> imports it must not make
RULES = {
    "macft.kernels": ("macft.models", "macft.train", "macft.data", "macft.export",
                      "macft.evaluation", "macft.plan", "macft.cli", "macft.tui", "macft.gguf"),
    "macft.models": ("macft.train", "macft.export", "macft.evaluation", "macft.plan",
                     "macft.cli", "macft.tui"),
    "macft.data": ("macft.models", "macft.train", "macft.export", "macft.tui"),
    "macft.gguf": ("macft.models", "macft.train", "macft.export", "macft.tui"),
    "macft.evaluation": ENGINE_ONLY + ("macft.tui",),
    "macft.runs": ("macft.models", "macft.train", "macft.tui"),
    # recipe load checks reward lists: no MLX, no model, no trainer
    "macft.rewards": ("mlx", "macft.models", "macft.train", "macft.export", "macft.tui"),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every module an import statement in ``path`` names (lazy ones inside functions too)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def violations() -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = module_name(path)
        forbidden = [bad for prefix, bads in RULES.items() if _under(name, prefix)
                     for bad in bads]
        if not _under(name, "macft.tui") and name != "macft.cli":
            forbidden += ["macft.tui", "textual"]
        for imported in sorted(imports_of(path)):
            hit = next((bad for bad in forbidden if _under(imported, bad)), None)
            if hit:
                found.append(f"{name} imports {imported}")
    return found


def test_no_import_runs_against_the_layer_order():
    assert violations() == []


def test_the_check_sees_a_wrong_way_import(tmp_path, monkeypatch):
    """The walk itself: a kernel importing a model module is reported."""
    fake = tmp_path / "macft"
    (fake / "kernels").mkdir(parents=True)
    (fake / "kernels" / "bad.py").write_text("def f():\n    from macft.models.quantized "
                                             "import _cached_float\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", fake)
    assert violations() == ["macft.kernels.bad imports macft.models.quantized",
                            "macft.kernels.bad imports macft.models.quantized._cached_float"]
