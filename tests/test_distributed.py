"""Data-parallel training: two ranks on localhost over MLX's ring backend against one process.

The ranks are started the way mlx.launch starts them (MLX_RANK + a ring hostfile of
127.0.0.1 ports), as subprocesses of the test, so the test can kill one of them.
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

import numpy as np
import pytest

import macft  # noqa: F401  (loads OpenBLAS before mlx)
import mlx.core as mx

from conftest import write_tiny_model
from test_preference import write_pairs

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not mx.distributed.is_available(),
                                reason="this MLX build has no distributed backend")


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("dist")
    write_tiny_model(d / "model")
    rng = np.random.default_rng(0)
    with (d / "train.jsonl").open("w") as fh:
        for i in range(24):
            a, b = (int(x) for x in rng.integers(0, 50, 2))
            fh.write(json.dumps({"messages": [
                {"role": "user", "content": f"add {a} and {b}"},
                {"role": "assistant", "content": f"the answer is {a + b}" + " ok" * (i % 4)}]})
                + "\n")
    write_pairs(d / "pairs.jsonl", 16)
    return d


def write_recipe(work: Path, name: str, objective: str = "sft", **train) -> Path:
    data = "pairs.jsonl" if objective != "sft" else "train.jsonl"
    recipe = {
        "name": name, "model": {"path": str(work / "model")}, "objective": objective,
        "lora": {"rank": 4},  # dropout masks depend on the rows a rank holds
        "data": {"train": str(work / data), "max_length": 48},
        # A moderate learning rate: at 1e-2 Adam turns the float rounding of summing two shards
        # (~1e-6) into visible differences within a few steps (its update is m / sqrt(v)).
        "train": {"steps": 10, "batch_size": 4, "grad_accum": 2, "learning_rate": 2e-3,
                  "save_every": 5, "eval_every": 0, "seed": 3, **train}}
    path = work / f"{name}.yaml"
    path.write_text(json.dumps(recipe))      # JSON is YAML
    return path


def env_for(rank: int, hostfile: Path, **extra) -> dict:
    env = dict(os.environ, MLX_RANK=str(rank), MLX_HOSTFILE=str(hostfile),
               PYTHONUNBUFFERED="1", **extra)
    return env


def start_ranks(work: Path, recipe: Path, out: Path, size: int = 2, extra=None):
    ports = free_ports(size)
    hostfile = work / f"hosts-{ports[0]}.json"
    hostfile.write_text(json.dumps([[f"127.0.0.1:{p}"] for p in ports]))
    procs = []
    for rank in range(size):
        env = env_for(rank, hostfile, **((extra or {}).get(rank, {})))
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "macft", "run", str(recipe), f"output={out}"], env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=work))
    return procs


def single(recipe: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "macft", "run", str(recipe), f"output={out}"],
                          capture_output=True, text=True, timeout=300)


def losses(run_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r["event"] == "Step"]


def adapters(run_dir: Path) -> dict:
    return {k: np.array(v) for k, v in mx.load(str(run_dir / "adapters.safetensors")).items()}


@pytest.mark.parametrize("objective", ["sft", "dpo"])
def test_two_ranks_match_one_process(work, objective):
    recipe = write_recipe(work, f"match-{objective}", objective)
    one, two = work / f"one-{objective}", work / f"two-{objective}"
    assert single(recipe, one).returncode == 0
    procs = start_ranks(work, recipe, two)
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    a, b = losses(one), losses(two)
    assert len(a) == len(b) == 10
    assert np.max(np.abs(np.array(a) - np.array(b))) < 1e-4, (a, b)
    wa, wb = adapters(one), adapters(two)
    assert wa.keys() == wb.keys()
    assert max(float(np.max(np.abs(wa[k] - wb[k]))) for k in wa) < 1e-4
    # Only rank 0 wrote: one metrics file with one RunStarted, and rank 1 printed nothing.
    events = [json.loads(line)["event"] for line in
              (two / "metrics.jsonl").read_text().splitlines()]
    assert events.count("RunStarted") == 1 and events.count("Finished") == 1
    assert outs[1][0] == ""


def test_killing_a_rank_ends_the_other_with_one_line(work):
    recipe = write_recipe(work, "kill", steps=40, save_every=3)
    out = work / "killed"
    # Rank 1 dies like a power cut right after step 7 (the checkpoint of step 6 exists).
    procs = start_ranks(work, recipe, out, extra={1: {"MACFT_DEBUG_KILL_AFTER_STEP": "7"}})
    start = time.monotonic()
    _, err0 = procs[0].communicate(timeout=120)
    elapsed = time.monotonic() - start
    procs[1].communicate(timeout=60)
    assert procs[1].returncode == -signal.SIGKILL
    assert procs[0].returncode == 2
    last = [line for line in err0.splitlines() if line.strip()][-1]
    assert last.startswith("macft: error: rank 0 of 2: lost contact with the other ranks")
    assert "last checkpoint: " in last and last.split("last checkpoint: ")[1].startswith(str(out / "checkpoints" / "step-0000006")), last
    assert "Traceback" not in err0
    assert elapsed < 90
    # The checkpoint loads: a single process resumes from it and finishes the run.
    done = subprocess.run([sys.executable, "-m", "macft", "run", str(out)], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    started = [e for e in steps if e["event"] == "RunStarted"]
    assert [e["start_step"] for e in started] == [0, 6]
    assert (out / "finished.json").exists()


def test_hosts_file_errors_are_one_line(work, capsys):
    from macft.cli import main

    recipe = write_recipe(work, "hosts")
    assert main(["run", "--hosts", str(work / "nope.json"), str(recipe)]) == 2
    assert capsys.readouterr().err.strip() == f"macft: error: {work / 'nope.json'}: file not found"
    bad = work / "one-host.json"
    bad.write_text('[{"ssh": "localhost"}]')
    assert main(["run", "--hosts", str(bad), str(recipe)]) == 2
    assert "expected a JSON list of at least two hosts" in capsys.readouterr().err


def test_hosts_reruns_the_command_under_mlx_launch(work, monkeypatch):
    """`macft run --hosts H recipe k=v` becomes mlx.launch's ring launch of the same run."""
    import subprocess as sp

    from macft.cli import main

    recipe = write_recipe(work, "launch")
    hosts = work / "hosts.json"
    hosts.write_text(json.dumps([{"ssh": "mac1.local", "ips": ["10.0.0.1"]},
                                 {"ssh": "mac2.local", "ips": ["10.0.0.2"]}]))
    seen = []
    monkeypatch.setattr(sp, "call", lambda cmd: seen.append(cmd) or 0)
    assert main(["run", "--hosts", str(hosts), str(recipe), "train.steps=3"]) == 0
    cmd = seen[0]
    assert Path(cmd[0]).name == "mlx.launch"
    assert cmd[1:6] == ["--backend", "ring", "--hostfile", str(hosts), "--"]
    assert cmd[6:] == [sys.executable, "-m", "macft", "run", str(recipe), "train.steps=3"]
