"""Recipe values as people write them: 1e-4 is a float, on/off are words, in files and overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from macft import recipe as recipe_mod
from macft.errors import MacftError

RECIPE = """\
name: "off"
data:
  train: train.jsonl
  packing: yes
  train_on_prompt: off
  system_prompt: no
train:
  learning_rate: 1e-4
  min_lr_ratio: 5E-5
  weight_decay: 1.5e-2
  max_grad_norm: +2e+0
  compile: off
  grad_checkpoint: true
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def test_a_file_reads_exponent_floats_and_on_off_words(tmp_path):
    r = recipe_mod.load(write(tmp_path, RECIPE))
    t = r.train
    assert (t.learning_rate, t.min_lr_ratio, t.weight_decay, t.max_grad_norm) == \
        (1e-4, 5e-5, 0.015, 2.0)
    assert all(type(v) is float for v in (t.learning_rate, t.min_lr_ratio, t.max_grad_norm))
    assert t.compile == "off" and t.grad_checkpoint is True
    # A bool field takes YAML 1.1's words; a text field keeps them as written.
    assert r.data.packing is True and r.data.train_on_prompt is False
    assert r.data.system_prompt == "no" and r.name == "off"


@pytest.mark.parametrize("override,key,want", [
    ("train.learning_rate=3e-4", "train.learning_rate", 3e-4),
    ("train.learning_rate=5E-5", "train.learning_rate", 5e-5),
    ("train.learning_rate=0.0002", "train.learning_rate", 2e-4),
    ("train.compile=on", "train.compile", "on"),
    ("train.compile=off", "train.compile", "off"),
    ("train.compile=auto", "train.compile", "auto"),
    ("train.grad_checkpoint=true", "train.grad_checkpoint", True),
    ("train.grad_checkpoint=False", "train.grad_checkpoint", False),
    ("data.packing=on", "data.packing", True),
    ("data.system_prompt=yes", "data.system_prompt", "yes"),
])
def test_overrides_read_values_as_a_file_does(tmp_path, override, key, want):
    r = recipe_mod.load(write(tmp_path, "data: {train: t.jsonl}\n"), [override])
    got = dict(recipe_mod.describe_values(r))[key]
    assert got == want and type(got) is type(want)


@pytest.mark.parametrize("text,message", [
    ("train:\n  learning_rate: 1e-4x\n", "key 'train.learning_rate' must be float, got '1e-4x'"),
    ("train:\n  compile: maybe\n", "key 'train.compile' must be one of auto, on, off; "
                                   "got 'maybe'"),
    ("train:\n  compile: true\n", "key 'train.compile' must be str, got True"),
    ("data:\n  packing: sometimes\n", "key 'data.packing' must be bool, got 'sometimes'"),
])
def test_a_bad_value_in_a_file_names_the_key(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(MacftError) as err:
        recipe_mod.load(path)
    assert str(err.value) == f"{path}: {message}"


def test_a_bad_override_is_one_line_naming_the_key(tmp_path, capsys):
    from macft.cli import main

    path = write(tmp_path, "data: {train: t.jsonl}\n")
    assert main(["run", str(path), "train.learning_rate=3e-4e"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"macft: error: {path}: key 'train.learning_rate' must be float, "
                   "got '3e-4e'")
    assert main(["plan", str(path), "train.compile=yes!"]) == 2
    assert capsys.readouterr().err.strip().endswith(
        "key 'train.compile' must be one of auto, on, off; got 'yes!'")


def test_a_saved_recipe_reads_back_the_same(tmp_path):
    """A run folder's recipe.yaml: words and numbers-as-text stay what they were."""
    r = recipe_mod.from_dict({"name": "1e5", "data": {"train": "t.jsonl", "system_prompt": "on"},
                              "train": {"learning_rate": 1e-5, "compile": "off"}})
    recipe_mod.dump(r, tmp_path / "saved.yaml")
    assert recipe_mod.load(tmp_path / "saved.yaml") == r


def test_the_tui_form_reads_text_with_the_same_rule():
    from macft.recipe_form import form_fields, from_text, values_to_recipe

    fields = {f.key: f for f in form_fields()}
    typed = {"train.learning_rate": "3e-4", "train.min_lr_ratio": "5E-5",
             "data.packing": "yes", "data.train": "t.jsonl", "name": "on"}
    values = {k: from_text(v, fields[k]) for k, v in typed.items()}
    r = values_to_recipe(values, "form")
    assert (r.train.learning_rate, r.train.min_lr_ratio) == (3e-4, 5e-5)
    assert r.data.packing is True and r.name == "on"
    with pytest.raises(MacftError, match=r"^form: key 'train.learning_rate' must be float, "
                                         r"got 'fast'$"):
        values_to_recipe({"train.learning_rate": from_text("fast", fields[
            "train.learning_rate"])}, "form")
