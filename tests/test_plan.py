"""`macft plan`: measured peak memory against a real run, sizes, and the refusal of `run`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import macft  # noqa: F401  (loads OpenBLAS before mlx)

from macft import recipe as recipe_mod
from macft.errors import MacftError
from macft.plan import Setting, _candidates, parse_size, plan

from conftest import write_tiny_model


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("plan")
    write_tiny_model(d / "model", {"hidden_size": 128, "intermediate_size": 256,
                                   "vocab_size": 320})
    with (d / "train.jsonl").open("w") as fh:
        for i in range(32):   # one length for all rows: every batch is the longest batch
            fh.write(json.dumps({"text": "hello world, this is a tiny tokenizer for tests. "
                                         f"{i:02d}" * 3}) + "\n")
    return d


def recipe_file(work: Path, name: str, **train) -> Path:
    path = work / f"{name}.yaml"
    path.write_text(json.dumps({
        "name": name, "model": {"path": str(work / "model")},
        "data": {"train": str(work / "train.jsonl"), "max_length": 96},
        "train": {"steps": 4, "batch_size": 8, "save_every": 0, "eval_every": 0, **train}}))
    return path


def test_sizes_parse_and_bad_ones_fail_in_one_line():
    assert parse_size("1.5GB") == 1.5e9
    assert parse_size("800MB") == 8e8
    assert parse_size("2GiB") == 2 * 2 ** 30
    assert parse_size("512") == 512
    for bad in ("", "GB", "1.5XB", "-3GB", "0GB", "1,5GB"):
        with pytest.raises(MacftError, match="is not a size like 1.5GB"):
            parse_size(bad)


def test_candidates_keep_the_batch_per_step_then_checkpoint():
    got = [c.describe() for c in _candidates(Setting(8, 1, False))]
    assert got == ["train.batch_size=4 train.grad_accum=2",
                   "train.batch_size=2 train.grad_accum=4",
                   "train.batch_size=1 train.grad_accum=8",
                   "train.batch_size=8 train.grad_accum=1 train.grad_checkpoint=true",
                   "train.batch_size=4 train.grad_accum=2 train.grad_checkpoint=true",
                   "train.batch_size=2 train.grad_accum=4 train.grad_checkpoint=true",
                   "train.batch_size=1 train.grad_accum=8 train.grad_checkpoint=true"]


def run_peak(recipe: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "macft", "run", str(recipe), f"output={out}",
                           *extra], capture_output=True, text=True, timeout=300)


def test_plan_predicts_the_peak_of_the_run(work):
    path = recipe_file(work, "predict")
    # In its own process, as `macft plan` runs: MLX state left by earlier tests in this one
    # (compiled graphs, buffers) moved the measured peak of this tiny model by ~20%.
    code = ("import json, sys; from macft import recipe; from macft.plan import plan; "
            "p = plan(recipe.load(sys.argv[1])); "
            "print(json.dumps([p.fits, p.longest[0], p.first.peak_bytes]))")
    probe = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                           text=True, timeout=300)
    assert probe.returncode == 0, probe.stderr
    fits, longest, peak = json.loads(probe.stdout.strip().splitlines()[-1])
    assert fits and longest == 8
    done = run_peak(path, work / "run")
    assert done.returncode == 0, done.stderr
    steps = [json.loads(line) for line in (work / "run" / "metrics.jsonl").read_text()
             .splitlines() if '"Step"' in line]
    actual = max(s["peak_memory_gb"] for s in steps) * 1e9
    assert abs(peak - actual) / actual < 0.15, (peak, actual)


def test_run_over_budget_is_refused_naming_a_setting_that_fits(work):
    path = recipe_file(work, "refuse")
    peak = plan(recipe_mod.load(path)).first.peak_bytes
    budget = f"{peak * 0.8 / 1e6:.3f}MB"
    out = work / "refused"
    done = run_peak(path, out, "--memory-budget", budget)
    assert done.returncode == 2
    err = done.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("macft: error: plan: peak ")
    assert f"exceeds the {float(budget[:-2]):.1f} MB budget; train.batch_size=4 " \
           "train.grad_accum=2 fits" in err[0]
    assert not (out / "checkpoints").exists() and not (out / "metrics.jsonl").exists()
    # The advised setting does fit the same budget, and --force trains anyway.
    advised = plan(recipe_mod.load(path, ["train.batch_size=4", "train.grad_accum=2"]))
    assert advised.first.peak_bytes <= peak * 0.8
    forced = run_peak(path, out, "--memory-budget", budget, "--force")
    assert forced.returncode == 0 and (out / "finished.json").exists()
