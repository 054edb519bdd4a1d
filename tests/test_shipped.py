"""Shipped recipes travel in the wheel; `macft init` copies one with its data into a folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from macft import recipe as recipe_mod, shipped
from macft.cli import main

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted(p.stem for p in (ROOT / "recipes").glob("*.yaml"))


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_the_package_finds_the_repository_recipes():
    assert list(shipped.recipes()) == SHIPPED == ["dpo-quickstart", "gemma3-quickstart",
                                                  "grpo-quickstart", "quickstart"]


@pytest.mark.parametrize("name,folder", [("quickstart", "q"), ("dpo-quickstart", None)])
def test_init_copies_the_recipe_and_its_data(tmp_path, monkeypatch, capsys, name, folder):
    monkeypatch.chdir(tmp_path)
    assert main(["init", name] + ([folder] if folder else [])) == 0
    dest = tmp_path / (folder or name)
    out = capsys.readouterr().out
    assert f"run it: cd {folder or name} && macft run recipe.yaml" in out
    text = (dest / "recipe.yaml").read_text()
    source = (ROOT / "recipes" / f"{name}.yaml").read_text()
    assert text.splitlines()[0] == (f"# macft run recipe.yaml   (this folder was made by "
                                    f"`macft init {name}`)")
    assert text.splitlines()[1:] == source.splitlines()[1:]
    monkeypatch.chdir(dest)         # the copied recipe's data paths lead to the copied data
    r = recipe_mod.load("recipe.yaml")
    paths = [getattr(r.data, k) for k in ("train", "valid", "test")]
    assert all(paths)
    for rel in paths:
        assert (dest / rel).read_bytes() == (ROOT / rel).read_bytes(), rel
    written = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    readme = [f"{Path(paths[0]).parent}/README.md"] \
        if (ROOT / Path(paths[0]).parent / "README.md").exists() else []
    assert written == sorted(["recipe.yaml", *paths, *readme])


def test_init_refuses_a_folder_that_is_not_empty(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "q").mkdir()
    (tmp_path / "q" / "notes.txt").write_text("mine")
    assert main(["init", "quickstart", "q"]) == 2
    assert one_error_line(capsys) == ("macft: error: q: already exists and is not empty; give "
                                      "`macft init` a new folder")
    assert [p.name for p in (tmp_path / "q").iterdir()] == ["notes.txt"]
    (tmp_path / "empty").mkdir()                       # an empty folder is fine
    assert main(["init", "quickstart", "empty"]) == 0
    assert (tmp_path / "empty" / "recipe.yaml").exists()


def test_init_of_an_unknown_name_lists_the_shipped_ones(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["init", "quikstart"]) == 2
    assert one_error_line(capsys) == ("macft: error: unknown recipe 'quikstart'; shipped "
                                      f"recipes: {', '.join(SHIPPED)}")
    assert not any(tmp_path.iterdir())


def _source_copy(dest: Path) -> Path:
    """The files a wheel is built from (the macft/shipped links kept as links)."""
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, dest / name)
    for name in ("macft", "recipes", "data"):
        shutil.copytree(ROOT / name, dest / name, symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def _build_isolation() -> list[str]:
    """The running interpreter's setuptools builds the wheel when it is new enough for
    pyproject's SPDX license field (no download then); else pip fetches one."""
    try:
        import setuptools

        new = int(setuptools.__version__.split(".")[0]) >= 77
    except ImportError:
        new = False
    return ["--no-build-isolation"] if new else []


@pytest.mark.slow
def test_a_plain_install_carries_the_recipes_and_init_runs_them(tmp_path, tiny_model_dir):
    """`pip install .` (not -e), then from an empty folder: `macft init quickstart q`,
    `cd q && macft run recipe.yaml train.steps=2` trains, and the TUI lists the recipes."""
    (tmp_path / "src").mkdir()
    src = _source_copy(tmp_path / "src")
    target = tmp_path / "site"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q",
                          *_build_isolation(), "--target", str(target), str(src)],
                         capture_output=True, text=True, timeout=600)
    assert pip.returncode == 0, pip.stderr[-3000:]
    shutil.rmtree(src)              # nothing of the source tree is left to find
    work = tmp_path / "empty"
    work.mkdir()
    # Only the installed package on the path: the checkout's macft must not be importable.
    env = dict(os.environ, PYTHONPATH=str(target), HF_HUB_OFFLINE="1")
    macft = [sys.executable, str(target / "bin" / "macft")]

    def run(args, cwd):
        proc = subprocess.run(macft + args, cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, (args, proc.stdout[-2000:], proc.stderr[-3000:])
        return proc.stdout

    run(["init", "quickstart", "q"], work)
    q = work / "q"
    run(["run", "recipe.yaml", "train.steps=2", f"model={tiny_model_dir}"], q)
    steps = [json.loads(line) for line in (q / "runs/quickstart/metrics.jsonl").open()
             if json.loads(line).get("event") == "Step"]
    assert [s["step"] for s in steps] == [1, 2]
    assert (q / "runs/quickstart/adapters.safetensors").exists()
    listing = ("import json, macft; from pathlib import Path; from macft.tui.app import "
               "MacftApp; app = MacftApp(root=Path.cwd()); print(json.dumps({'package': "
               "macft.__file__, 'recipes': [str(p) for p in app.recipes()], 'shown': "
               "[app.show_recipe(p) for p in app.recipes()]}))")
    proc = subprocess.run([sys.executable, "-c", listing], cwd=work, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert Path(seen["package"]).is_relative_to(target)
    assert [Path(p).stem for p in seen["recipes"]] == SHIPPED
    assert all(Path(p).is_relative_to(target.resolve()) for p in seen["recipes"])
    assert seen["shown"] == [f"{name}.yaml (shipped)" for name in SHIPPED]
