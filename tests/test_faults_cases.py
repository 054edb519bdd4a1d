"""Issue 18, case 6 (disk full, read-only) and the cases that already held, each kept by a test.

A write that fails for lack of space or permission ends in one line naming the file and the
reason, a non-zero exit, the files written before it unchanged byte for byte, and no temporary
file left. Real full disks are small tmpfs mounts (this needs root; skipped with the reason
otherwise); the other tests make the writer fail the way MLX or the OS does.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import mlx.core as mx

from conftest import write_tiny_model
from macft import recipe as recipe_mod
from macft import write_errors
from macft.cli import main
from macft.errors import MacftError
from macft.events import Checkpoint, Collect
from macft.train.loop import train

ROOT = Path(__file__).resolve().parents[1]


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err and lines[0].startswith("macft: error: ")
    return lines[0][len("macft: error: "):]


def digests(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder``, by relative path (not the run lock: it names the
    trainer holding the folder, and goes with it)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".lock"}


def temp_files(folder: Path) -> list[str]:
    return [str(p) for p in folder.rglob("*") if ".tmp" in p.name]


@contextlib.contextmanager
def small_tmpfs(where: Path, size: str):
    """A tmpfs of ``size`` mounted at ``where``, or the test skipped with the reason."""
    where.mkdir(parents=True, exist_ok=True)
    if not shutil.which("mount"):
        pytest.skip("no mount command: cannot make a small full disk here")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                          capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or 'not root'})")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def remount(where: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(where)], check=True)


def fill(where: Path, leave: int) -> Path:
    """Fill the file system at ``where`` until only about ``leave`` bytes are free."""
    filler = where / "filler"
    free = shutil.disk_usage(where).free
    with open(filler, "wb") as fh:
        with contextlib.suppress(OSError):
            fh.write(b"\0" * max(free - leave, 0))
    return filler


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    from test_train import write_chat_set

    d = tmp_path_factory.mktemp("faults")
    write_tiny_model(d / "model")
    write_chat_set(d / "train.jsonl")
    return d


def recipe_raw(work: Path, out: Path, **train) -> dict:
    return {"model": str(work / "model"), "method": "lora", "lora": {"rank": 4, "alpha": 8},
            "data": {"train": str(work / "train.jsonl"), "max_length": 64},
            "train": {"steps": 6, "batch_size": 4, "learning_rate": 1e-2, "eval_every": 0,
                      "save_every": 2, "seed": 1, **train},
            "output": str(out)}


# --- the translation itself -------------------------------------------------------------------

@pytest.mark.parametrize("exc,why", [
    (OSError(errno.ENOSPC, "No space left on device"), "no space left on device"),
    (OSError(errno.EDQUOT, "Disk quota exceeded"), "no space left on device (disk quota exceeded)"),
    (OSError(errno.EROFS, "Read-only file system"), "read-only file system"),
    (PermissionError(errno.EACCES, "Permission denied"), "permission denied"),
])
def test_os_errors_become_one_line_with_the_path(tmp_path, exc, why):
    with pytest.raises(MacftError) as got, write_errors.reported(tmp_path / "x.gguf"):
        raise exc
    assert str(got.value) == f"{tmp_path / 'x.gguf'}: cannot write: {why}"


def test_mlx_write_error_is_read_against_the_free_space(tmp_path, monkeypatch):
    mlx_error = RuntimeError("[write] Unable to write 256949 bytes to file.")
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(write_errors.shutil, "disk_usage",
                        lambda p: usage._replace(free=1000))
    assert write_errors.reason(mlx_error, tmp_path / "a") == "no space left on device"
    numpy_error = OSError("940032 requested and 521216 written")
    assert write_errors.reason(numpy_error, tmp_path / "a") == "no space left on device"
    monkeypatch.setattr(write_errors.shutil, "disk_usage",
                        lambda p: usage._replace(free=10 ** 12))
    assert write_errors.reason(mlx_error, tmp_path / "a") is None   # not about space: kept
    assert write_errors.reason(ValueError("bad"), tmp_path / "a") is None


# --- training on a full disk (simulated) --------------------------------------------------------

def test_full_disk_during_a_checkpoint_keeps_the_earlier_files(work, tmp_path, monkeypatch,
                                                               capsys):
    out = tmp_path / "run"
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe_raw(work, out)))
    real_save = mx.save_safetensors
    before: dict = {}

    def save(file, arrays, *args, **kw):
        if "step-0000004" in str(file):        # the second checkpoint meets a full disk
            before.update(digests(out))
            real_save(file, arrays, *args, **kw)          # a torn file, as MLX leaves one
            Path(file).write_bytes(Path(file).read_bytes()[:100])
            raise RuntimeError("[write] Unable to write 256949 bytes to file.")
        return real_save(file, arrays, *args, **kw)

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(mx, "save_safetensors", save)
    monkeypatch.setattr(write_errors.shutil, "disk_usage", lambda p: usage._replace(free=4096))
    code = main(["run", str(path)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert [line for line in err.splitlines() if line.startswith("macft: error:")] == [
        f"macft: error: {out / 'checkpoints' / 'step-0000004'}: cannot write: no space left "
        "on device"]
    assert "step-0000002/adapters.safetensors" in "\n".join(before)
    after = digests(out)
    assert {k: after.get(k) for k in before if k != "metrics.jsonl"} == \
        {k: v for k, v in before.items() if k != "metrics.jsonl"}
    assert temp_files(out) == []
    assert (out / "checkpoints" / "latest").read_text() == "step-0000002"


# --- real small disks ---------------------------------------------------------------------------

class FillAfter:
    """A sink that fills the disk once the checkpoint of ``step`` is written, and records the
    run folder's files at that moment."""

    def __init__(self, mount: Path, out: Path, step: int, leave: int):
        self.mount, self.out, self.step, self.leave = mount, out, step, leave
        self.before: dict = {}
        self.filler: Path | None = None

    def __call__(self, event) -> None:
        if isinstance(event, Checkpoint) and event.step == self.step and not event.best:
            self.before = digests(self.out)
            self.filler = fill(self.mount, self.leave)


def test_a_really_full_disk_stops_training_in_one_line_and_resumes(work, tmp_path):
    with small_tmpfs(tmp_path / "disk", "8m") as disk:
        out = disk / "run"
        recipe = recipe_mod.from_dict(recipe_raw(work, out))
        sink = FillAfter(disk, out, 2, leave=8192)
        with pytest.raises(MacftError) as exc:
            train(recipe, [sink])
        assert "cannot write: no space left on device" in str(exc.value)
        assert str(exc.value).startswith(str(out))
        after = digests(out)
        kept = {k: v for k, v in sink.before.items() if k != "metrics.jsonl"}
        assert kept and {k: after.get(k) for k in kept} == kept
        assert temp_files(out) == []
        sink.filler.unlink()
        done = train(recipe, [Collect()])           # space again: the same run carries on
        assert done.step == 6 and done.reason == "completed"


def test_fuse_to_a_full_disk_leaves_nothing_and_reruns(work, tmp_path, capsys):
    run = tmp_path / "run"
    train(recipe_mod.from_dict(recipe_raw(work, run, steps=2)), [Collect()])
    with small_tmpfs(tmp_path / "disk", "128k") as disk:
        target = disk / "fused"
        code = main(["fuse", str(run), "--out", str(target)])
        line = one_line(capsys.readouterr().err)
        assert code == 2
        assert line == f"{target}: cannot write: no space left on device"
        assert not target.exists() and list(disk.iterdir()) == []   # no half model, no temp
        remount(disk, "size=16m")
        assert main(["fuse", str(run), "--out", str(target)]) == 0
        assert (target / "model.safetensors").exists() and (target / "config.json").exists()


def test_fuse_and_export_into_a_read_only_folder(work, tmp_path, capsys):
    run = tmp_path / "run"
    train(recipe_mod.from_dict(recipe_raw(work, run, steps=2)), [Collect()])
    with small_tmpfs(tmp_path / "disk", "4m") as disk:
        remount(disk, "ro")
        code = main(["fuse", str(run), "--out", str(disk / "fused")])
        assert code == 2
        assert one_line(capsys.readouterr().err) == \
            f"{disk / 'fused'}: cannot write: read-only file system"
        code = main(["export", str(run), "--gguf", str(disk / "m.gguf"), "--quant", "f32"])
        assert code == 2
        assert one_line(capsys.readouterr().err) == \
            f"{disk / 'm.gguf'}: cannot write: read-only file system"


def test_fuse_simulated_disk_full_leaves_no_half_folder(work, tmp_path, monkeypatch, capsys):
    import mlx_lm.utils

    run = tmp_path / "run"
    train(recipe_mod.from_dict(recipe_raw(work, run, steps=2)), [Collect()])

    def full(folder, *args, **kw):
        (Path(folder) / "model.safetensors").write_bytes(b"\0" * 100)   # torn
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(mlx_lm.utils, "save_model", full)
    target = tmp_path / "fused"
    assert main(["fuse", str(run), "--out", str(target)]) == 2
    assert one_line(capsys.readouterr().err) == \
        f"{target}: cannot write: no space left on device"
    assert not target.exists() and temp_files(tmp_path) == []
    monkeypatch.undo()
    assert main(["fuse", str(run), "--out", str(target)]) == 0


# --- cases that already held (issue 18, top): each kept by a test -------------------------------

def _rows(path: Path, text: str):
    from macft.data import load_rows

    path.write_text(text)
    with pytest.raises(MacftError) as exc:
        load_rows(path)
    return str(exc.value)


def test_a_csv_file_is_one_line_naming_the_first_line(tmp_path):
    path = tmp_path / "train.csv"
    assert _rows(path, "prompt,completion\nhi,yo\n").startswith(f"{path}:1: invalid JSON")


def test_a_mixed_file_names_the_row_of_the_other_format(tmp_path, tiny_tokenizer):
    from macft.data import encode_rows, load_rows

    path = tmp_path / "mixed.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "a"},
                                             {"role": "assistant", "content": "b"}]}) + "\n"
                    + json.dumps({"prompt": "a", "completion": "b"}) + "\n")
    with pytest.raises(MacftError) as exc:
        encode_rows(load_rows(path), tiny_tokenizer, recipe_mod.DataSpec(), path)
    assert str(exc.value) == f"{path}:2: missing key 'messages'"


def test_a_corrupt_save_to_disk_folder_is_one_line(tmp_path):
    datasets = pytest.importorskip("datasets")
    from macft.data import load_rows

    folder = tmp_path / "saved"
    datasets.Dataset.from_list([{"text": f"row {i}"} for i in range(20)]).save_to_disk(folder)
    for arrow in folder.glob("*.arrow"):
        arrow.write_bytes(arrow.read_bytes()[:40])
    with pytest.raises(MacftError) as exc:
        load_rows(folder)
    assert str(exc.value).startswith(str(folder)) and "\n" not in str(exc.value)


def test_a_yaml_syntax_error_names_the_line(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("train:\n  steps: 3\n  seed: [1, 2\n")
    with pytest.raises(MacftError) as exc:
        recipe_mod.load(path)
    assert str(exc.value).startswith(f"{path}:4: ") and "\n" not in str(exc.value)


def test_an_empty_recipe_is_one_line(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("# nothing\n")
    with pytest.raises(MacftError) as exc:
        recipe_mod.load(path)
    assert str(exc.value) == f"{path}: recipe file is empty"


def test_a_python_object_tag_is_refused_and_never_built(tmp_path):
    marker = tmp_path / "MARKER"
    path = tmp_path / "r.yaml"
    path.write_text(f"name: !!python/object/apply:pathlib.Path.touch ['{marker}']\n")
    with pytest.raises(MacftError) as exc:
        recipe_mod.load(path)
    assert str(exc.value).startswith(f"{path}:1: ") and "python/object" in str(exc.value)
    assert not marker.exists()


def test_a_pickle_only_model_folder_is_refused(tmp_path, capsys):
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04K\x01.")     # a pickle stream
    code = main(["generate", str(folder), "--prompt", "hi"])
    line = one_line(capsys.readouterr().err)
    assert code == 2 and line.startswith(f"{folder}: ") and "safetensors" in line


def test_a_malicious_chat_template_hits_the_sandbox(tmp_path, tiny_tokenizer):
    from copy import deepcopy

    from macft.data import encode_rows, load_rows

    tok = deepcopy(tiny_tokenizer)
    tok.chat_template = "{{ ''.__class__.__mro__[1].__subclasses__() }}"
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "a"},
                                             {"role": "assistant", "content": "b"}]}) + "\n")
    with pytest.raises(MacftError) as exc:
        encode_rows(load_rows(path), tok, recipe_mod.DataSpec(), path)
    assert str(exc.value).startswith(f"{path}:1: the chat template failed: ")
    assert "unsafe" in str(exc.value)


@pytest.mark.slow
def test_three_hundred_gguf_header_mutations_end_in_one_line(tmp_path):
    import numpy as np

    from macft.gguf.reader import load_gguf
    from test_gguf_import import tiny_model, write_gguf

    model, cfg = tiny_model()
    write_gguf(tmp_path / "good.gguf", model, cfg)
    data = bytearray((tmp_path / "good.gguf").read_bytes())
    header_end = 2048          # magic, counts, the first metadata keys and their values
    rng = np.random.default_rng(18)
    bad = tmp_path / "bad.gguf"
    refused = 0
    for _ in range(300):   # about 35 s on 2 loaded cores
        mutated = bytearray(data)
        for pos in rng.integers(0, header_end, 3):
            mutated[pos] = int(rng.integers(0, 256))
        bad.write_bytes(bytes(mutated))
        try:
            load_gguf(bad)
        except MacftError as exc:
            assert "\n" not in str(exc) and bad.name in str(exc), str(exc)
            refused += 1
    assert refused > 30     # most mutations of a header break it; none may escape as a crash


def test_generate_without_any_network(tiny_model_dir):
    if not shutil.which("unshare"):
        pytest.skip("no unshare command")
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True, text=True)
    if probe.returncode:
        pytest.skip(f"cannot make a network namespace here ({probe.stderr.strip()})")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("HF_HUB_OFFLINE", None)
    done = subprocess.run(["unshare", "-n", sys.executable, "-m", "macft", "generate",
                           str(tiny_model_dir), "--prompt", "hi", "--max-tokens", "3"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr


# --- the battery ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_the_fault_battery_loses_nothing(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "fault_battery.py"),
                           "--kills", "2", "--keep", str(tmp_path / "battery")],
                          capture_output=True, text=True, timeout=1500)
    rows = [line.split(" | ") for line in done.stdout.splitlines()
            if line.startswith("| ") and not line.startswith(("| case", "| ---"))]
    assert len(rows) >= 14, done.stdout + done.stderr
    lost = [r for r in rows if r[-1].rstrip(" |") == "yes"]
    assert lost == [], done.stdout
