"""Bad input ends in one line naming the file, line or key, a non-zero exit, no traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from macft.cli import main

ROOT = Path(__file__).resolve().parents[1]


def recipe_file(tmp_path: Path, model: str, train: str, extra: str = "") -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(f"model: {model}\nmethod: lora\ndata:\n  train: {train}\n"
                    f"train:\n  steps: 2\n{extra}output: {tmp_path / 'run'}\n")
    return path


def run_main(capsys, args) -> tuple[int, str]:
    code = main(args)
    err = capsys.readouterr().err.strip()
    return code, err


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert lines[0].startswith("macft: error: ")
    return lines[0]


@pytest.fixture()
def model_dir(tiny_model_dir) -> Path:
    return tiny_model_dir


def test_malformed_jsonl_line(tmp_path, capsys, model_dir):
    data = tmp_path / "train.jsonl"
    good = json.dumps({"text": "hello world"})
    data.write_text(f"{good}\n{good}\n{{\"text\": oops}}\n")
    code, err = run_main(capsys, ["run", str(recipe_file(tmp_path, model_dir, data))])
    assert code == 2
    assert f"{data}:3: invalid JSON" in one_line(err)


def test_row_missing_messages(tmp_path, capsys, model_dir):
    data = tmp_path / "train.jsonl"
    rows = [{"messages": [{"role": "user", "content": "hi"},
                          {"role": "assistant", "content": "yo"}]},
            {"prompt": "no messages here"}]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    code, err = run_main(capsys, ["run", str(recipe_file(tmp_path, model_dir, data))])
    assert code == 2
    line = one_line(err)
    assert f"{data}:2" in line and "'messages'" in line


def test_empty_file(tmp_path, capsys, model_dir):
    data = tmp_path / "train.jsonl"
    data.write_text("")
    code, err = run_main(capsys, ["run", str(recipe_file(tmp_path, model_dir, data))])
    assert code == 2
    assert f"{data}: no rows" in one_line(err)


def test_unknown_recipe_key_with_suggestion(tmp_path, capsys, model_dir):
    path = recipe_file(tmp_path, model_dir, tmp_path / "x.jsonl", "  lerning_rate: 0.1\n")
    code, err = run_main(capsys, ["run", str(path)])
    assert code == 2
    assert one_line(err) == (f"macft: error: {path}: unknown key 'train.lerning_rate' "
                             f"(did you mean 'train.learning_rate'?)")


def test_unknown_override_key(tmp_path, capsys, model_dir):
    path = recipe_file(tmp_path, model_dir, tmp_path / "x.jsonl")
    code, err = run_main(capsys, ["run", str(path), "train.bach_size=4"])
    assert code == 2
    assert "unknown key 'train.bach_size' (did you mean 'train.batch_size'?)" in one_line(err)


def test_overrides_after_the_options_are_overrides(tmp_path, capsys, model_dir):
    """argparse alone stops filling the overrides at the first option; macft takes them anyway."""
    path = recipe_file(tmp_path, model_dir, tmp_path / "x.jsonl")
    code, err = run_main(capsys, ["run", str(path), "--force", "train.bach_size=4"])
    assert code == 2
    assert "unknown key 'train.bach_size' (did you mean 'train.batch_size'?)" in one_line(err)

    with pytest.raises(SystemExit) as exc:          # a stray word is still argparse's error
        main(["run", str(path), "--force", "stray"])
    assert exc.value.code == 2
    assert "unrecognized arguments: stray" in capsys.readouterr().err


def test_missing_paths(tmp_path, capsys, model_dir):
    code, err = run_main(capsys, ["run", str(tmp_path / "nope.yaml")])
    assert code == 2 and f"{tmp_path / 'nope.yaml'}: recipe file not found" in one_line(err)

    missing = tmp_path / "missing.jsonl"
    code, err = run_main(capsys, ["run", str(recipe_file(tmp_path, model_dir, missing))])
    assert code == 2 and f"{missing}: file not found" in one_line(err)

    code, err = run_main(capsys, ["run", str(recipe_file(tmp_path, tmp_path / "no-model",
                                                         missing))])
    assert code == 2 and f"{tmp_path / 'no-model'}: model path not found" in one_line(err)


def test_uncached_hub_model_while_offline(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps({"text": "hi"}) + "\n")
    path = recipe_file(tmp_path, "someorg/not-a-cached-model", data)
    code, err = run_main(capsys, ["run", "--offline", str(path)])
    assert code == 2
    assert one_line(err) == ("macft: error: model 'someorg/not-a-cached-model' is not in the "
                             "local Hugging Face cache and offline mode is on "
                             "(HF_HUB_OFFLINE=1 or --offline)")


def test_bad_input_in_a_real_process(tmp_path):
    """The same errors from the console command: exit 2, one line on stderr, no traceback."""
    data = tmp_path / "train.jsonl"
    data.write_text('{"text": "a"}\n{"text": \n')
    path = recipe_file(tmp_path, tmp_path / "no-model", data)
    proc = subprocess.run([sys.executable, "-m", "macft", "run", str(path)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"macft: error: {tmp_path / 'no-model'}: model path not found"]


def test_eval_of_missing_data_file(tmp_path, capsys, model_dir):
    code, err = run_main(capsys, ["eval", str(model_dir), "--data", str(tmp_path / "t.jsonl")])
    assert code == 2 and f"{tmp_path / 't.jsonl'}: file not found" in one_line(err)


def test_readme_option_table_matches_the_recipe_dataclasses():
    from macft.cli import options_table

    readme = (ROOT / "README.md").read_text()
    block = readme.split("<!-- options:start -->\n")[1].split("\n<!-- options:end -->")[0]
    assert block.splitlines() == options_table(True)


def test_every_shipped_recipe_loads_and_names_its_command():
    from macft import recipe as recipe_mod

    recipes = sorted((ROOT / "recipes").glob("*.yaml"))
    assert recipes
    for path in recipes:
        first = path.read_text().splitlines()[0]
        assert first == f"# macft run recipes/{path.name}"
        r = recipe_mod.load(path)
        for key in ("train", "valid", "test"):
            value = getattr(r.data, key)
            assert value is None or (ROOT / value).exists(), (path, key)


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    block = readme.split("Set up and run the tests")[1].split("```sh\n")[1].split("\n```")[0]
    assert block.startswith("python3 -m venv .venv") and block.endswith("python -m pytest -q")
    assert block in (ROOT / ".ci" / "run").read_text().splitlines()
