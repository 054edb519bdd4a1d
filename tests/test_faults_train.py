"""The trainer's safety (issue 18, cases 1, 2, 3, 5, 9): NaN guard, run lock, resume digests,
checkpoint fallback and fsync, stale temporary files, signals and exit codes.

Each case runs the CLI in a subprocess on a tiny random model, as the issue's reproduction did,
and asserts the exit code, the one line, and that the work already on disk is bit-for-bit
unchanged where a fault could have cost it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import macft  # noqa: F401
import mlx.core as mx

from conftest import write_tiny_model
from macft import lock as lock_mod, recipe as recipe_mod, runs
from macft.errors import MacftError
from macft.train.loop import train
from pinned_runs import write_chats, write_pairs

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("faults")
    write_tiny_model(d / "model")
    write_chats(d / "train.jsonl")
    write_chats(d / "valid.jsonl", n=8, seed=1)
    write_pairs(d / "pairs.jsonl", 16)
    return d


def recipe_raw(work: Path, out: str, **train) -> dict:
    return {
        "name": out, "model": str(work / "model"), "method": "lora",
        "lora": {"rank": 4, "alpha": 8},
        "data": {"train": str(work / "train.jsonl"), "valid": str(work / "valid.jsonl"),
                 "max_length": 64},
        "train": {"steps": 6, "batch_size": 4, "learning_rate": 1e-2, "eval_every": 2,
                  "save_every": 2, "seed": 3, **train},
        "output": str(work / out),
    }


def write_recipe(work: Path, out: str, **train) -> Path:
    path = work / f"{out}.yaml"
    path.write_text(yaml.safe_dump(recipe_raw(work, out, **train)))
    return path


def cli(args, env=None, cwd=None) -> subprocess.CompletedProcess:
    full = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT), **(env or {}))
    return subprocess.run([sys.executable, "-m", "macft", *map(str, args)],
                          capture_output=True, text=True, env=full, cwd=cwd or ROOT,
                          timeout=600)


def error_line(proc) -> str:
    """The CLI's one error line (the last line of stderr), checked to be the only one."""
    lines = [x for x in proc.stderr.splitlines() if x.startswith("macft: error:")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return lines[0]


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# ----- case 1: NaN/Inf guard -----------------------------------------------------------------
@pytest.mark.slow
def test_nonfinite_steps_stop_the_run_and_keep_the_earlier_work(work):
    run = work / "nan"
    first = cli(["run", write_recipe(work, "nan", steps=4)])
    assert first.returncode == 0, first.stderr[-3000:]
    before = files_of(run)
    assert {"checkpoints/step-0000002/optimizer.safetensors", "best/adapters.safetensors",
            "adapters.safetensors"} <= set(before)

    # The reproduction, as a resume: a learning rate of 1e9 without clipping.
    args = ["run", run, "train.steps=12", "train.learning_rate=1000000000",
            "train.max_grad_norm=0", "--allow-changes"]
    proc = cli(args)
    assert proc.returncode == 3, proc.stderr[-3000:]
    line = error_line(proc)
    assert "not finite for 3 steps in a row" in line
    assert line.startswith("macft: error: step ")
    assert "last finite checkpoint is " + str(run / "checkpoints" / "step-0000004") in line
    assert "update skipped (1 of 3 in a row)" in proc.stderr
    after = files_of(run)
    # Every checkpoint, best/ and the final adapter are the ones of the finite run, byte for
    # byte; nothing non-finite was written or pruned in their favour.
    for name, data in before.items():
        if name.startswith(("checkpoints/", "best/", "adapters", "adapter_config", "finished")):
            assert after.get(name) == data, name
    assert not [n for n in after if n.startswith("checkpoints/step-") and n not in before]


def test_export_and_fuse_refuse_non_finite_weights(work, tmp_path):
    run = tmp_path / "nanrun"
    done = train(recipe_mod.from_dict(recipe_raw(work, "unused", steps=2, eval_every=0)
                                      | {"output": str(run)}), [])
    assert done.reason == "completed"
    for folder in (run, run / "best"):      # export and fuse use best/ when there is one
        weights = mx.load(str(folder / "adapters.safetensors"))
        name = sorted(weights)[1]
        weights[name] = mx.full(weights[name].shape, float("nan"))
        mx.save_safetensors(str(folder / "adapters.safetensors"), weights)
    for args, out in ((["export", run, "--gguf", tmp_path / "x.gguf"], tmp_path / "x.gguf"),
                      (["fuse", run, "--out", tmp_path / "fused"], tmp_path / "fused")):
        proc = cli(args)
        assert proc.returncode == 3, proc.stderr[-3000:]
        line = error_line(proc)
        assert f"tensor '{name}' holds NaN or Inf values" in line, line
        assert not out.exists()


# ----- case 2: the run lock -------------------------------------------------------------------
def test_a_second_trainer_is_refused_naming_the_holder(work):
    run = work / "locked"
    recipe = write_recipe(work, "locked", steps=2)
    with lock_mod.run_lock(run) as held:
        assert json.loads((run / ".lock").read_text())["pid"] == os.getpid()
        proc = cli(["run", recipe])
        # The same process (the TUI's second run) is refused as well.
        with pytest.raises(MacftError, match="already being trained by pid"):
            with lock_mod.run_lock(run):
                pass
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = error_line(proc)
    assert f"already being trained by pid {os.getpid()} on {socket.gethostname()}, since " \
        in line, line
    assert held.took_over is None
    assert sorted(p.name for p in run.iterdir()) == []     # the refused run wrote nothing
    assert not (run / ".lock").exists()                     # released with the block


@pytest.mark.slow
def test_two_trainers_started_together_one_trains_the_other_is_refused(work):
    run = work / "two"
    # Long enough that the second trainer (seconds of imports) starts while the first holds
    # the folder; the first is stopped with SIGTERM once the second has been refused.
    first_recipe = write_recipe(work, "two", steps=5000, eval_every=0, save_every=0)
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    first = subprocess.Popen([sys.executable, "-m", "macft", "run", str(first_recipe)],
                             cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    try:
        for _ in range(1200):
            holder = lock_mod.read_holder(run)
            if holder is not None and holder.pid == first.pid:
                break
            time.sleep(0.05)
        second = cli(["run", write_recipe(work, "two-b", steps=4, learning_rate=0.05, seed=9),
                      "output=" + str(run)])
        first.send_signal(signal.SIGTERM)
    finally:
        out, err = first.communicate(timeout=600)
    assert first.returncode == 143, err[-3000:]       # stopped by SIGTERM, after a checkpoint
    assert second.returncode == 2
    assert f"already being trained by pid {first.pid} on " in error_line(second)
    # The folder holds the first run alone: its steps, once each, and its recipe.
    steps = [e["step"] for e in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
             if e["event"] == "Step"]
    assert steps and steps == list(range(1, len(steps) + 1))
    assert "learning_rate: 0.01" in runs.recipe_path(run).read_text()


def test_a_stale_lock_and_killed_writers_temp_files_are_cleared(work):
    run = work / "stale"
    gone = dead_pid()
    (run / "best").mkdir(parents=True)
    (run / ".lock").write_text(json.dumps({"pid": gone, "host": socket.gethostname(),
                                            "since": 1.0}))
    stale = [run / f".latest.tmp{gone}", run / "best" / f".adapters.tmp{gone}.safetensors",
             run / f".model.gguf.tmp{gone}"]
    for p in stale:
        p.write_bytes(b"half")
    live = run / f".export.tmp{os.getpid()}.gguf"          # a live writer's: left alone
    live.write_bytes(b"busy")
    proc = cli(["run", write_recipe(work, "stale", steps=2)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"took over the lock of pid {gone} on {socket.gethostname()}" in proc.stderr
    assert "removed temporary files of a killed writer: .latest.tmp" in proc.stderr
    assert not any(p.exists() for p in stale) and live.read_bytes() == b"busy"
    assert not (run / ".lock").exists()


# ----- case 3: resume digests ------------------------------------------------------------------
@pytest.fixture(scope="module")
def killed_run(work) -> Path:
    """A run killed after step 3: checkpoint step 2 on disk, resumable."""
    proc = cli(["run", write_recipe(work, "edited")], {"MACFT_DEBUG_KILL_AFTER_STEP": "3"})
    assert proc.returncode == -signal.SIGKILL
    return work / "edited"


@pytest.mark.slow
def test_a_resume_with_an_edited_recipe_or_data_is_refused(work, killed_run):
    run = killed_run
    saved = runs.recipe_path(run).read_text()
    before = files_of(run / "checkpoints")
    runs.recipe_path(run).write_text(saved.replace("rank: 4", "rank: 8"))
    proc = cli(["run", run])
    assert proc.returncode == 2
    line = error_line(proc)
    assert "lora.rank: 4 -> 8" in line and "--allow-changes" in line, line
    assert files_of(run / "checkpoints") == before

    runs.recipe_path(run).write_text(saved)
    data = work / "train.jsonl"
    original = data.read_bytes()
    data.write_bytes(original + original.splitlines(keepends=True)[0])
    try:
        proc = cli(["run", run])
    finally:
        data.write_bytes(original)
    assert proc.returncode == 2
    assert f"data.train changed: {data}" in error_line(proc)
    assert files_of(run / "checkpoints") == before

    # Safe keys change freely: train longer.
    proc = cli(["run", run, "train.steps=8"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming at step 2 of 8" in proc.stderr


def test_a_dpo_resume_with_changed_pairs_is_refused_even_when_allowed(work, tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_bytes((work / "pairs.jsonl").read_bytes())
    raw = recipe_raw(work, "unused", steps=2, eval_every=0) | {
        "objective": "dpo", "output": str(tmp_path / "dpo")}
    raw["data"] = {"train": str(pairs), "max_length": 64}
    recipe = recipe_mod.from_dict(raw)
    assert train(recipe, []).reason == "completed"
    reference = (tmp_path / "dpo" / runs.REFERENCE_LOGPS).read_bytes()
    write_pairs(pairs, 16, seed=5)
    longer = recipe_mod.from_dict(raw | {"train": dict(raw["train"], steps=4)})
    with pytest.raises(MacftError, match=r"data.train changed: .*reference log-probs"):
        train(longer, [], allow_changes=True)
    assert (tmp_path / "dpo" / runs.REFERENCE_LOGPS).read_bytes() == reference


# ----- case 5: damaged checkpoints, fsync ------------------------------------------------------
@pytest.mark.slow
def test_a_corrupt_latest_checkpoint_falls_back_to_an_intact_one(work):
    run = work / "corrupt"
    proc = cli(["run", write_recipe(work, "corrupt")], {"MACFT_DEBUG_KILL_AFTER_STEP": "5"})
    assert proc.returncode == -signal.SIGKILL
    ckpts = run / "checkpoints"
    assert (ckpts / "latest").read_text() == "step-0000004"
    os.truncate(ckpts / "step-0000004" / "optimizer.safetensors", 100)
    resumed = cli(["run", run])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert ("skipped checkpoint step-0000004: optimizer.safetensors is unreadable"
            in resumed.stderr)
    assert "resuming at step 2 of 6" in resumed.stderr

    # None intact: one line naming each and why, exit 2, nothing touched.
    (ckpts / "step-0000006" / "state.json").write_text("{not json")
    (ckpts / "step-0000004" / "adapters.safetensors").unlink()
    before = files_of(run)
    proc = cli(["run", run, "train.steps=8"])
    assert proc.returncode == 2
    line = error_line(proc)
    assert "no intact checkpoint to resume from" in line
    assert "step-0000006: state.json:1: invalid JSON" in line
    assert "step-0000004: adapters.safetensors is missing" in line
    after = files_of(run)
    assert {k: v for k, v in after.items() if k != "metrics.jsonl"} == \
        {k: v for k, v in before.items() if k != "metrics.jsonl"}


def test_atomic_writes_fsync_the_files_and_folders_before_publishing(tmp_path, monkeypatch):
    synced = []
    real = os.fsync

    def spy(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    if not Path("/proc/self/fd").exists():
        pytest.skip("needs /proc to name the fsynced files")
    monkeypatch.setattr(os, "fsync", spy)
    final = tmp_path / "ckpt"
    with runs.atomic_path(final) as tmp:
        tmp.mkdir()
        mx.save_safetensors(str(tmp / "a.safetensors"), {"x": mx.zeros(3)})
        (tmp / "state.json").write_text("{}")
    names = {Path(p).name for p in synced}
    assert {"a.safetensors", "state.json", tmp.name, tmp_path.name} <= names
    # The parent folder is synced after the rename, the files before it.
    assert Path(synced[-1]) == tmp_path
    assert (final / "a.safetensors").exists()


# ----- case 9 (exit codes): signals ------------------------------------------------------------
@pytest.mark.slow
def test_signals_stop_after_a_checkpoint_with_their_exit_code_and_resume_exactly(work):
    straight = cli(["run", write_recipe(work, "straight", steps=8)])
    assert straight.returncode == 0, straight.stderr[-3000:]
    for name, code in (("SIGTERM", 143), ("SIGHUP", 129), ("SIGINT", 130)):
        out = f"sig-{name}"
        proc = cli(["run", write_recipe(work, out, steps=8)],
                   {"MACFT_DEBUG_SIGNAL_AFTER_STEP": f"5:{name}"})
        assert proc.returncode == code, (name, proc.stderr[-3000:])
        assert f"{name}: stopping after this step" in proc.stderr
        assert "finished (stopped) at step 5" in proc.stderr
        assert (work / out / "checkpoints" / "latest").read_text() == "step-0000005"
        assert not (work / out / "finished.json").exists()
    run = work / "sig-SIGTERM"
    resumed = cli(["run", run])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming at step 5 of 8" in resumed.stderr
    a = mx.load(str(work / "straight" / "adapters.safetensors"))
    b = mx.load(str(run / "adapters.safetensors"))
    assert a.keys() == b.keys() and len(a) > 0
    for key in a:
        assert mx.array_equal(a[key], b[key]).item(), key


def test_resume_digests_compare_values_and_resolved_paths(work, tmp_path, monkeypatch):
    from macft.train import resume

    run = tmp_path / "r"
    run.mkdir()
    raw = recipe_raw(work, "unused") | {"output": str(run), "init_adapter": str(work / "model")}
    resume.record(run, recipe_mod.from_dict(raw))
    # The same run from another working directory, with relative paths: nothing changed.
    monkeypatch.chdir(work)
    same = raw | {"output": os.path.relpath(run, work), "init_adapter": "model",
                  "data": dict(raw["data"], train="train.jsonl")}
    assert resume.check(run, recipe_mod.from_dict(same)) is False
    safe = raw | {"train": dict(raw["train"], steps=50, eval_every=5, sample_prompts=["hi"])}
    assert resume.check(run, recipe_mod.from_dict(safe)) is False
    changed = raw | {"lora": {"rank": 8, "alpha": 8}, "method": "dora"}
    with pytest.raises(MacftError) as exc:
        resume.check(run, recipe_mod.from_dict(changed))
    assert '(method: "lora" -> "dora", lora.rank: 4 -> 8)' in str(exc.value)
    assert resume.check(run, recipe_mod.from_dict(changed), allow=True) is True
