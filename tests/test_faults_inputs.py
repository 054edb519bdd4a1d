"""Issue 18, cases 4, 7, 8 and 9: numeric bounds, path-or-hub, custom model code, small inputs.

Each bad input ends in one line naming the key, flag, file or path, exit 2, and nothing runs
that the user did not ask for (no DNS lookup, no model-shipped Python).
"""

from __future__ import annotations

import json
import os
import pty
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from macft import recipe as recipe_mod
from macft.cli import main, options_table
from macft.errors import MacftError

ROOT = Path(__file__).resolve().parents[1]


def run_main(capsys, args) -> tuple[int, str]:
    code = main(args)
    return code, capsys.readouterr().err.strip()


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert lines[0].startswith("macft: error: ")
    return lines[0][len("macft: error: "):]


def chat_rows(path: Path, rows: list[list[tuple[str, str]]]) -> Path:
    path.write_text("".join(json.dumps({"messages": [{"role": r, "content": c} for r, c in row]})
                            + "\n" for row in rows))
    return path


@pytest.fixture()
def recipe_path(tmp_path) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(f"model: {tmp_path / 'no-model'}\ndata:\n  train: {tmp_path / 't.jsonl'}\n"
                    f"output: {tmp_path / 'run'}\n")
    return path


# --- case 8: numeric bounds --------------------------------------------------------------------

BAD = [
    ("train.seed=-1", "key 'train.seed' must be in [0, 4294967295], got -1"),
    ("train.steps=-5", "key 'train.steps' must be >= 0, got -5"),
    ("train.eval_every=-1", "key 'train.eval_every' must be >= 0, got -1"),
    ("lora.alpha=0", "key 'lora.alpha' must be > 0, got 0"),
    ("lora.layers=0", "key 'lora.layers' must be >= 1 or -1, got 0"),
    ("train.weight_decay=-1", "key 'train.weight_decay' must be >= 0, got -1"),
    ("train.min_lr_ratio=5", "key 'train.min_lr_ratio' must be in [0, 1], got 5"),
    ("train.max_grad_norm=-1", "key 'train.max_grad_norm' must be >= 0, got -1"),
    ("train.batch_size=0", "key 'train.batch_size' must be >= 1, got 0"),
    ("lora.dropout=1", "key 'lora.dropout' must be in [0, 1), got 1"),
    ("preference.label_smoothing=0.5",
     "key 'preference.label_smoothing' must be in [0, 0.5), got 0.5"),
    ("eval.max_tokens=0", "key 'eval.max_tokens' must be >= 1, got 0"),
    ("train.learning_rate=.nan", "key 'train.learning_rate' must be > 0, got nan"),
    ("train.max_grad_norm=.inf", "key 'train.max_grad_norm' must be >= 0, got inf"),
]


@pytest.mark.parametrize("override,message", BAD)
def test_out_of_range_override_is_one_line(recipe_path, capsys, override, message):
    code, err = run_main(capsys, ["run", str(recipe_path), override])
    assert code == 2
    assert one_line(err) == f"{recipe_path}: {message}"
    assert not (recipe_path.parent / "run").exists()       # refused before anything was made


def test_out_of_range_value_in_the_file(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("train:\n  seed: -1\n")
    with pytest.raises(MacftError) as exc:
        recipe_mod.load(path)
    assert str(exc.value) == f"{path}: key 'train.seed' must be in [0, 4294967295], got -1"


@pytest.mark.parametrize("override,field,value", [
    ("train.steps=0", "steps", 0),                 # 0: derive the steps from epochs
    ("train.max_grad_norm=0", "max_grad_norm", 0.0),   # 0: no clipping
    ("train.eval_every=0", "eval_every", 0),       # 0: only at the end
    ("train.seed=4294967295", "seed", 4294967295),
    ("train.min_lr_ratio=1", "min_lr_ratio", 1.0),
])
def test_documented_special_values_still_load(recipe_path, override, field, value):
    assert getattr(recipe_mod.load(recipe_path, [override]).train, field) == value


def test_all_blocks_is_still_minus_one(recipe_path):
    assert recipe_mod.load(recipe_path, ["lora.layers=-1"]).lora.layers == -1
    assert recipe_mod.load(recipe_path, ["lora.layers=2"]).lora.layers == 2


def test_a_stage_is_checked_against_the_same_bounds(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("stages:\n  - objective: sft\n  - objective: dpo\n    train:\n"
                    "      learning_rate: -1\n")
    with pytest.raises(MacftError) as exc:
        recipe_mod.load(path)
    assert str(exc.value) == (f"{path}: stages[1]: key 'train.learning_rate' must be > 0, "
                              "got -1")


def test_bounds_are_declared_once_and_shown_by_options():
    assert recipe_mod.bounds_of("train.seed").describe() == "in [0, 4294967295]"
    assert recipe_mod.bounds_of("lora.layers").describe() == ">= 1 or -1"
    assert recipe_mod.bounds_of("data.format") is None
    table = {line.split()[0]: line for line in options_table(False)}
    assert table["train.min_lr_ratio"].endswith("Allowed: in [0, 1].")
    assert table["lora.alpha"].endswith("Allowed: > 0.")
    md = "\n".join(options_table(True))
    assert "| `train.steps` | int | `0` | Optimizer steps; 0 means derive them from epochs. " \
           "Allowed: >= 0. |" in md


def test_the_tui_form_reports_the_same_bound():
    from macft import recipe_form

    field = next(f for f in recipe_form.form_fields() if f.key == "train.weight_decay")
    assert field.bounds is recipe_mod.bounds_of("train.weight_decay")
    assert field.bounds.describe() == ">= 0"
    values = {"train.weight_decay": recipe_form.from_text("-1", field)}
    with pytest.raises(MacftError) as exc:
        recipe_form.values_to_recipe(values, "<new recipe>")
    assert str(exc.value) == "<new recipe>: key 'train.weight_decay' must be >= 0, got -1"


@pytest.mark.parametrize("args,message", [
    (["eval", "nowhere", "--data", "x.jsonl", "--limit", "-3"], "--limit must be >= 0, got -3"),
    (["eval", "nowhere", "--data", "x.jsonl", "--max-tokens", "-1"],
     "--max-tokens must be >= 1, got -1"),
    (["eval", "nowhere", "--data", "x.jsonl", "--batch-size", "0"],
     "--batch-size must be >= 1, got 0"),
    (["generate", "nowhere", "--prompt", "hi", "--max-tokens", "-1"],
     "--max-tokens must be >= 1, got -1"),
    (["chat", "nowhere.gguf", "--ctx", "0"], "--ctx must be >= 1, got 0"),
    (["chat", "nowhere.gguf", "--temp", "-0.5"], "--temp must be >= 0, got -0.5"),
    (["data", "split", "x.jsonl", "--out", "o", "--valid", "1.5"],
     "--valid must be in [0, 1), got 1.5"),
    (["data", "clean", "x.jsonl", "--out", "o", "--near", "-1"],
     "--near must be in [0, 1], got -1"),
    (["data", "stats", "x.jsonl", "--max-length", "0"], "--max-length must be >= 1, got 0"),
])
def test_numeric_flags_are_checked_before_anything_loads(capsys, args, message):
    code, err = run_main(capsys, args)
    assert code == 2
    assert one_line(err) == message


# --- case 7: a path is a path ------------------------------------------------------------------

@pytest.fixture()
def no_dns(monkeypatch):
    calls = []

    def refuse(*args, **kwargs):
        calls.append(args)
        raise OSError("the test forbids DNS lookups")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    return calls


def test_a_relative_path_under_an_existing_folder_is_not_a_hub_id(tmp_path, monkeypatch,
                                                                 capsys, no_dns):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "scratch").mkdir()
    code, err = run_main(capsys, ["generate", "scratch/nothere", "--prompt", "hi"])
    assert code == 2
    assert one_line(err) == "scratch/nothere: model path not found"
    assert no_dns == []


def test_a_run_whose_base_moved_never_goes_to_the_hub(tmp_path, monkeypatch, capsys, no_dns):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    run = tmp_path / "run"
    run.mkdir()
    (run / "recipe.yaml").write_text("model: moved/model\ndata:\n  train: t.jsonl\n")
    code, err = run_main(capsys, ["generate", str(run), "--prompt", "hi"])
    assert code == 2
    assert one_line(err) == ("moved/model: the run's base model is neither a folder here nor "
                             "in the local Hugging Face cache (moved or deleted?)")
    assert no_dns == []


def test_an_owner_slash_name_without_such_folder_is_still_a_hub_id(tmp_path, monkeypatch):
    from macft.models.load import _looks_like_path

    monkeypatch.chdir(tmp_path)
    assert not _looks_like_path("HuggingFaceTB/SmolLM2-135M-Instruct")
    (tmp_path / "HuggingFaceTB").mkdir()
    assert _looks_like_path("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert _looks_like_path("~/models/x") and _looks_like_path("a\\b")


# --- case 4: no custom code, ever ---------------------------------------------------------------

EVIL = """import pathlib
pathlib.Path({marker!r}).write_text("custom code ran")
from transformers import PreTrainedTokenizerFast
class EvilTokenizer(PreTrainedTokenizerFast):
    pass
"""


@pytest.fixture()
def evil_model(tmp_path, tiny_model_dir) -> tuple[Path, Path]:
    folder = tmp_path / "evil"
    shutil.copytree(tiny_model_dir, folder)
    marker = tmp_path / "MARKER"
    (folder / "evil.py").write_text(EVIL.format(marker=str(marker)))
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    cfg["auto_map"] = {"AutoTokenizer": [None, "evil.EvilTokenizer"]}
    cfg["tokenizer_class"] = "EvilTokenizer"
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    return folder, marker


def test_auto_map_in_tokenizer_config_is_refused(evil_model, capsys):
    folder, marker = evil_model
    code, err = run_main(capsys, ["generate", str(folder), "--prompt", "hi"])
    assert code == 2
    assert one_line(err) == (f"{folder / 'tokenizer_config.json'}: key 'auto_map' asks to run "
                             "the model's own Python code; macft never runs custom code "
                             "(trust_remote_code is off)")
    assert not marker.exists()


def test_model_file_in_config_is_refused(tmp_path, tiny_model_dir):
    from macft.models.load import resolve

    folder = tmp_path / "custom"
    shutil.copytree(tiny_model_dir, folder)
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(dict(cfg, model_file="arch.py")))
    with pytest.raises(MacftError, match=r"config.json: key 'model_file' asks to run"):
        resolve(str(folder))


def test_in_a_terminal_answering_yes_runs_nothing(evil_model, tmp_path):
    """With a terminal, transformers would ask "[y/N]"; macft asks nothing and runs nothing,
    even when the answer typed ahead is y."""
    folder, marker = evil_model
    leader, follower = pty.openpty()
    os.write(leader, b"y\ny\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-m", "macft", "generate", str(folder), "--prompt",
                           "hi"], stdin=follower, capture_output=True, text=True, env=env,
                          timeout=300)
    os.close(follower)
    os.close(leader)
    assert proc.returncode == 2, proc.stderr
    assert "key 'auto_map' asks to run the model's own Python code" in proc.stderr
    assert "[y/N]" not in proc.stdout + proc.stderr
    assert not marker.exists()


def test_the_loaders_are_told_trust_remote_code_false(evil_model, monkeypatch):
    """Second line of defence: even past the folder check, transformers is never allowed to
    import the folder's Python (it raises instead of asking)."""
    from macft.models import load

    folder, marker = evil_model
    monkeypatch.setattr(load, "refuse_custom_code", lambda folder: None)
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True, raising=False)
    with pytest.raises(ValueError, match="trust_remote_code"):
        load._load_hf(folder)
    assert not marker.exists()


# --- case 9: the smaller items ------------------------------------------------------------------

def test_conversation_opening_with_an_assistant_turn(tmp_path, tiny_tokenizer):
    from macft.data import encode_rows, load_rows

    path = chat_rows(tmp_path / "d.jsonl", [[("user", "hi"), ("assistant", "yo")],
                                            [("assistant", "hello"), ("user", "hi")]])
    with pytest.raises(MacftError) as exc:
        encode_rows(load_rows(path), tiny_tokenizer, recipe_mod.DataSpec(), path)
    assert str(exc.value) == (f"{path}:2: the conversation opens with an assistant turn "
                              "(messages[0]); it needs a system or user message before it")


def test_every_assistant_turn_empty_is_refused_for_training(tmp_path, tiny_model_dir, capsys):
    data = chat_rows(tmp_path / "d.jsonl", [[("user", "hi"), ("assistant", "")],
                                            [("user", "ho"), ("assistant", "  ")]])
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {tiny_model_dir}\ndata:\n  train: {data}\ntrain:\n  steps: 1\n"
                      f"output: {tmp_path / 'run'}\n")
    code, err = run_main(capsys, ["run", str(recipe)])
    assert code == 2
    assert one_line(err) == (f"{data}: every assistant turn is empty, so only end-of-turn "
                             "tokens would be trained (fill in the answers, or set "
                             "data.train_on_prompt)")


def test_one_empty_answer_among_others_still_trains(tmp_path, tiny_tokenizer):
    from macft.data import check_answers, load_rows

    path = chat_rows(tmp_path / "d.jsonl", [[("user", "hi"), ("assistant", "")],
                                            [("user", "ho"), ("assistant", "yes")]])
    check_answers(load_rows(path), "chat", recipe_mod.DataSpec(), path)   # no error


@pytest.mark.parametrize("name", ["../x", "/tmp/abs", "a/b", "..", "a\\b", "~x"])
def test_run_names_cannot_escape_runs(recipe_path, capsys, name):
    code, err = run_main(capsys, ["run", str(recipe_path), f"name={name}"])
    assert code == 2
    assert one_line(err) == (f"{recipe_path}: key 'name' must be a plain folder name (no '/', "
                             f"'\\', '..' or '~'), got {name!r}; use output=PATH to choose the "
                             "folder")


def test_stage_names_cannot_escape_the_run(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("stages:\n  - name: ../../elsewhere\n")
    with pytest.raises(MacftError, match=r"stages\[0\]: key 'name' must be a plain folder name"):
        recipe_mod.load(path)


def test_dpo_reference_pass_reports_progress(tmp_path):
    from conftest import write_tiny_model
    from macft.events import Collect, ConsoleProgress, Progress
    from macft.train.loop import train
    from test_preference import write_pairs

    import io

    write_tiny_model(tmp_path / "model")
    write_pairs(tmp_path / "train.jsonl", 10)
    write_pairs(tmp_path / "valid.jsonl", 3, seed=1)
    recipe = recipe_mod.from_dict({
        "model": str(tmp_path / "model"), "objective": "dpo", "lora": {"rank": 4},
        "data": {"train": str(tmp_path / "train.jsonl"), "valid": str(tmp_path / "valid.jsonl"),
                 "max_length": 64},
        "train": {"steps": 1, "batch_size": 4, "eval_every": 0}, "output": str(tmp_path / "r")})
    sink, text = Collect(), io.StringIO()
    train(recipe, [sink, ConsoleProgress(text)])
    done = [(e.done, e.total) for e in sink.of(Progress) if e.task == "reference log-probs"]
    assert done == [(4, 13), (8, 13), (10, 13), (13, 13)]     # train batches, then valid
    assert "reference log-probs 13/13" in text.getvalue().splitlines()


RUNAWAY = "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}"
SILENT = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"


@pytest.mark.parametrize("template", [RUNAWAY, SILENT])
def test_a_runaway_template_stops_in_one_line_while_encoding(tmp_path, tiny_tokenizer,
                                                             monkeypatch, template):
    import time
    from copy import deepcopy

    from macft.data import encode_rows, load_rows
    from macft.data import template_guard

    monkeypatch.setattr(template_guard, "LIMIT_SECONDS", 1.0)
    tok = deepcopy(tiny_tokenizer)
    tok.chat_template = template
    path = chat_rows(tmp_path / "d.jsonl", [[("user", "hi"), ("assistant", "yo")]])
    start = time.monotonic()
    with pytest.raises(MacftError) as exc:
        encode_rows(load_rows(path), tok, recipe_mod.DataSpec(), path)
    assert time.monotonic() - start < 30
    assert str(exc.value) == (f"{path}:1: the chat template failed: stopped after 1 s of "
                              "rendering (runaway loops in the template?)")


def test_a_runaway_template_cannot_hang_generate(tmp_path, tiny_model_dir, monkeypatch, capsys):
    from macft.data import template_guard

    monkeypatch.setattr(template_guard, "LIMIT_SECONDS", 1.0)
    folder = tmp_path / "slow"
    shutil.copytree(tiny_model_dir, folder)
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps(dict(cfg, chat_template=RUNAWAY)))
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    code, err = run_main(capsys, ["generate", str(folder), "--prompt", "hi"])
    assert code == 2
    assert one_line(err) == ("the chat template failed: stopped after 1 s of rendering "
                             "(runaway loops in the template?)")


def test_an_ordinary_template_renders_as_before(tiny_tokenizer):
    from copy import deepcopy

    from macft.data import template_guard

    plain = deepcopy(tiny_tokenizer)
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    want = plain.apply_chat_template(messages, tokenize=False)
    template_guard.guard(plain)
    assert plain.apply_chat_template(messages, tokenize=False) == want
    assert want.startswith("<|im_start|>user\nhi<|im_end|>")


def test_resuming_a_run_whose_base_moved_never_goes_to_the_hub(tmp_path, tiny_model_dir,
                                                               monkeypatch, capsys, no_dns):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    shutil.copytree(tiny_model_dir, tmp_path / "m" / "tiny")
    data = chat_rows(tmp_path / "d.jsonl", [[("user", "hi"), ("assistant", "yo")]] * 4)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: m/tiny\nlora: {{rank: 2}}\ndata:\n  train: {data}\n"
                      "train:\n  steps: 4\n  save_every: 2\n  batch_size: 2\noutput: run\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT), MACFT_DEBUG_KILL_AFTER_STEP="3")
    killed = subprocess.run([sys.executable, "-m", "macft", "run", str(recipe)], env=env,
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert killed.returncode == -9, killed.stderr
    (tmp_path / "m").rename(tmp_path / "moved")
    code, err = run_main(capsys, ["run", "run"])
    assert code == 2
    # The killed trainer's lock file is still there: the resume says it took it over.
    notice, _, err = err.partition("\n")
    assert notice.startswith("run: took over the lock of pid ") and "no longer runs" in notice
    assert one_line(err) == ("m/tiny: the run's base model is neither a folder here nor in the "
                             "local Hugging Face cache (moved or deleted?)")
    assert no_dns == []
