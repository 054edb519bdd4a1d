"""Data-parallel training: two ranks on localhost over MLX's ring backend against one process.

The ranks are started the way mlx.launch starts them (MLX_RANK + a ring hostfile of
127.0.0.1 ports), as subprocesses of the test, so the test can kill or freeze one of them.
Rank 1 gets its own output folder, as on a second Mac: it must never write there.
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
from macft.events import read_metrics
from test_preference import write_pairs

pytestmark = pytest.mark.skipif(not mx.distributed.is_available(),
                                reason="this MLX build has no distributed backend")

TOL = 1e-4


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def write_chats(path: Path, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    with path.open("w") as fh:
        for i in range(n):
            a, b = (int(x) for x in rng.integers(0, 50, 2))
            fh.write(json.dumps({"messages": [
                {"role": "user", "content": f"add {a} and {b}"},
                {"role": "assistant", "content": f"the answer is {a + b}" + " ok" * (i % 4)}]})
                + "\n")


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("dist")
    write_tiny_model(d / "model")
    write_chats(d / "train.jsonl", 24, 0)
    write_chats(d / "valid.jsonl", 5, 1)          # 2 validation batches: one per rank
    write_pairs(d / "pairs.jsonl", 16)
    write_pairs(d / "valid_pairs.jsonl", 3, seed=1)   # 1 batch: rank 1 has none
    return d


def write_recipe(work: Path, name: str, objective: str = "sft", **train) -> Path:
    sft = objective == "sft"
    recipe = {
        "name": name, "model": {"path": str(work / "model")}, "objective": objective,
        "lora": {"rank": 4},  # no dropout: its masks depend on the rows a rank holds
        "data": {"train": str(work / ("train.jsonl" if sft else "pairs.jsonl")),
                 "valid": str(work / ("valid.jsonl" if sft else "valid_pairs.jsonl")),
                 "max_length": 48},
        # A moderate learning rate: at 1e-2 Adam turns the float rounding of summing two shards
        # (~1e-6) into visible differences within a few steps (its update is m / sqrt(v)).
        "train": {"steps": 10, "batch_size": 4, "grad_accum": 2, "learning_rate": 2e-3,
                  "save_every": 5, "eval_every": 5, "seed": 3, **train}}
    path = work / f"{name}.yaml"
    path.write_text(json.dumps(recipe))      # JSON is YAML
    return path


def start_ranks(work: Path, recipe: Path, out: Path, extra_env=None, size: int = 2):
    """Rank 0 writes to ``out``; rank r > 0 is pointed at ``out``-rank-r, which must stay
    absent."""
    ports = free_ports(size)
    hostfile = work / f"hosts-{ports[0]}.json"
    hostfile.write_text(json.dumps([[f"127.0.0.1:{p}"] for p in ports]))
    procs = []
    for rank in range(size):
        env = dict(os.environ, MLX_RANK=str(rank), MLX_HOSTFILE=str(hostfile),
                   PYTHONUNBUFFERED="1", **(extra_env or {}).get(rank, {}))
        folder = out if rank == 0 else out.with_name(f"{out.name}-rank-{rank}")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "macft", "run", str(recipe), f"output={folder}"], env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=work))
    return procs


def finish(procs, timeout=300) -> list[tuple[str, str]]:
    outs = [p.communicate(timeout=timeout) for p in procs]
    return outs


def run_one(recipe: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "macft", "run", str(recipe), f"output={out}",
                           *extra], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


_SINGLE: dict[str, Path] = {}


def single(work: Path, objective: str) -> Path:
    """The one-process run of the match recipe (made once per module)."""
    if objective not in _SINGLE:
        out = work / f"one-{objective}"
        run_one(write_recipe(work, f"match-{objective}", objective), out)
        _SINGLE[objective] = out
    return _SINGLE[objective]


def events(run_dir: Path, kind: str) -> list[dict]:
    return [e for e in read_metrics(run_dir / "metrics.jsonl") if e["event"] == kind]


def adapters(path: Path) -> dict:
    return {k: np.array(v) for k, v in mx.load(str(path)).items()}


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float(np.max(np.abs(a[k] - b[k]))) for k in a)


def assert_same_run(one: Path, two: Path) -> None:
    """Per-step losses, step metrics, evaluations and the final adapter agree within TOL."""
    a, b = events(one, "Step"), events(two, "Step")
    assert [e["step"] for e in b] == list(range(1, 11))
    assert np.max(np.abs([x["loss"] - y["loss"] for x, y in zip(a, b)])) < TOL
    for x, y in zip(a, b):
        assert x["tokens"] == y["tokens"]
        assert x["metrics"].keys() == y["metrics"].keys()
        for k in x["metrics"]:
            assert abs(x["metrics"][k] - y["metrics"][k]) < TOL * max(1.0, abs(x["metrics"][k]))
    ea, eb = events(one, "Eval"), events(two, "Eval")
    assert [e["step"] for e in eb] == [5, 10]
    assert np.max(np.abs([x["val_loss"] - y["val_loss"] for x, y in zip(ea, eb)])) < TOL
    for x, y in zip(ea, eb):
        assert x["improved"] == y["improved"] and x["metrics"].keys() == y["metrics"].keys()
        for k in x["metrics"]:
            assert abs(x["metrics"][k] - y["metrics"][k]) < TOL * max(1.0, abs(x["metrics"][k]))
    for name in ("adapters.safetensors", "best/adapters.safetensors"):
        assert max_diff(adapters(one / name), adapters(two / name)) < TOL


@pytest.mark.slow     # separate processes: tens of seconds each on 2 cores
@pytest.mark.parametrize("objective", ["sft", "dpo"])
def test_two_ranks_match_one_process(work, objective):
    one = single(work, objective)
    two = work / f"two-{objective}"
    procs = start_ranks(work, work / f"match-{objective}.yaml", two)
    outs = finish(procs)
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    assert_same_run(one, two)
    if objective == "dpo":
        # Each rank computed the reference of its batches; the sum is the one-process reference.
        assert max_diff(adapters(one / "reference_logps.safetensors"),
                        adapters(two / "reference_logps.safetensors")) == 0.0
    # Only rank 0 wrote: one metrics file, one RunStarted; rank 1 made no folder, printed nothing.
    assert len(events(two, "RunStarted")) == 1 and len(events(two, "Finished")) == 1
    assert not two.with_name(f"{two.name}-rank-1").exists()
    assert outs[1][0] == "" and "step" not in outs[1][1]


@pytest.mark.slow     # separate processes: tens of seconds each on 2 cores
def test_two_ranks_resume_from_rank_0s_checkpoint(work):
    """Both ranks die after the step-5 checkpoint; two fresh ranks, rank 1 with an empty
    folder, finish the run exactly like one uninterrupted process."""
    one = single(work, "sft")
    recipe, out = work / "match-sft.yaml", work / "two-resumed"
    kill = {"MACFT_DEBUG_KILL_AFTER_STEP": "5"}
    procs = start_ranks(work, recipe, out, extra_env={0: kill, 1: kill})
    finish(procs)
    assert [p.returncode for p in procs] == [-signal.SIGKILL] * 2
    assert (out / "checkpoints" / "latest").read_text() == "step-0000005"
    procs = start_ranks(work, recipe, out)
    outs = finish(procs)
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    assert [e["start_step"] for e in events(out, "RunStarted")] == [0, 5]
    assert_same_run(one, out)
    assert not out.with_name(f"{out.name}-rank-1").exists()


@pytest.mark.slow     # separate processes: tens of seconds each on 2 cores
def test_killing_a_rank_ends_the_other_with_one_line(work):
    recipe = write_recipe(work, "kill", steps=40, save_every=3, eval_every=0)
    out = work / "killed"
    # Rank 1 dies like a power cut right after step 7 (the checkpoint of step 6 exists).
    procs = start_ranks(work, recipe, out, extra_env={1: {"MACFT_DEBUG_KILL_AFTER_STEP": "7"}})
    procs[1].wait(timeout=120)
    died = time.monotonic()
    _, err0 = procs[0].communicate(timeout=60)
    after = time.monotonic() - died
    assert procs[1].returncode == -signal.SIGKILL
    assert procs[0].returncode == 2
    assert after < 5, after
    ckpt = out / "checkpoints" / "step-0000006"
    assert [line for line in err0.splitlines() if line.startswith("macft:")] == [
        "macft: error: rank 0 of 2: lost contact with the other ranks ([ring] connection to a "
        f"peer was lost); last checkpoint: {ckpt}; rerun the same command to resume from it"]
    assert "Traceback" not in err0
    assert events(out, "Failed")[-1]["step"] == 7
    # The checkpoint loads: a single process resumes from it and finishes the run.
    done = subprocess.run([sys.executable, "-m", "macft", "run", str(out)], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert [e["start_step"] for e in events(out, "RunStarted")] == [0, 6]
    assert [e["step"] for e in events(out, "Step")][-34:] == list(range(7, 41))
    assert json.loads((out / "finished.json").read_text()) == {"step": 40,
                                                              "reason": "completed"}


@pytest.mark.slow     # separate processes: tens of seconds each on 2 cores
def test_a_frozen_rank_is_caught_by_the_watchdog(work):
    """A peer that stops answering but keeps its sockets open (SIGSTOP) blocks the all_sum;
    the watchdog ends rank 0 after MACFT_DIST_TIMEOUT seconds without a step."""
    recipe = write_recipe(work, "frozen", steps=100_000, save_every=20, eval_every=0)
    out = work / "frozen"
    procs = start_ranks(work, recipe, out, extra_env={0: {"MACFT_DIST_TIMEOUT": "4"}})
    try:
        deadline = time.monotonic() + 120
        while len(events(out, "Step")) < 25 and time.monotonic() < deadline:
            time.sleep(0.2)
        procs[1].send_signal(signal.SIGSTOP)
        frozen = time.monotonic()
        _, err0 = procs[0].communicate(timeout=60)
        after = time.monotonic() - frozen
    finally:
        procs[1].kill()
        procs[1].communicate()
    assert procs[0].returncode == 2
    assert 4 <= after < 12, after
    latest = (out / "checkpoints" / "latest").read_text()
    step = int(latest.split("-")[1])
    assert step >= 20 and step % 20 == 0
    assert err0.strip().splitlines()[-1] == (
        "macft: error: rank 0 of 2: lost contact with the other ranks (no step finished in "
        f"4 s; MACFT_DIST_TIMEOUT sets this); last checkpoint: {out / 'checkpoints' / latest}")
    state = json.loads((out / "checkpoints" / latest / "state.json").read_text())
    assert state["step"] == step


@pytest.mark.slow     # separate processes: tens of seconds each on 2 cores
def test_hosts_trains_through_mlx_launch(work):
    """`macft run --hosts` on a two-entry localhost hostfile: mlx.launch starts both ranks
    (127.0.0.1 runs without ssh), and the run matches the one-process run."""
    one = single(work, "sft")
    hosts = work / "localhost.json"
    hosts.write_text(json.dumps([{"ssh": "127.0.0.1", "ips": ["127.0.0.1"]}] * 2))
    port = free_ports(1)[0]
    # The test picks a free port; users get mlx.launch's default.
    script = ("import sys; import macft; from macft.train import distributed as d; "
              "cmd = d.launch_command; "
              f"d.launch_command = lambda h, a: cmd(h, a)[:1] + ['-p', '{port}'] + cmd(h, a)[1:];"
              " from macft.cli import main; sys.exit(main(sys.argv[1:]))")
    out = work / "launched"

    def launch(*args):
        return subprocess.run([sys.executable, "-c", script, "run", "--hosts", str(hosts),
                               *args], capture_output=True, text=True, timeout=300, cwd=work)

    done = launch(str(work / "match-sft.yaml"), f"output={out}")
    assert done.returncode == 0, done.stderr[-2000:]
    assert_same_run(one, out)
    # mlx.launch itself exits 0 when a rank fails; macft passes the rank's code on.
    failed = launch(str(work / "match-sft.yaml"), "train.lerning_rate=1")
    assert failed.returncode == 2
    assert "match-sft.yaml: unknown key 'train.lerning_rate'" in failed.stderr


def test_hosts_file_errors_are_one_line(work, capsys):
    from macft.cli import main

    recipe = write_recipe(work, "hosts")
    assert main(["run", "--hosts", str(work / "nope.json"), str(recipe)]) == 2
    assert capsys.readouterr().err.strip() == f"macft: error: {work / 'nope.json'}: file not found"
    bad = work / "one-host.json"
    bad.write_text('[{"ssh": "localhost", "ips": ["127.0.0.1"]}]')
    assert main(["run", "--hosts", str(bad), str(recipe)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"macft: error: {bad}: expected a JSON list of at least two hosts, e.g. "
        '[{"ssh": "mac1.local", "ips": ["10.0.0.1"]}, ...]')
    bad.write_text('{"hosts": [{"ssh": "mac1.local", "ips": ["10.0.0.1"]}, {"ssh": "mac2"}]}')
    assert main(["run", "--hosts", str(bad), str(recipe)]) == 2
    assert capsys.readouterr().err.strip().startswith(
        f"macft: error: {bad}: host 1 needs \"ssh\" (a name ssh reaches) and \"ips\"")


def test_hosts_reruns_the_command_under_mlx_launch(work, monkeypatch):
    """`macft run --hosts H recipe k=v` becomes mlx.launch's ring launch of the same run."""
    from macft.cli import main
    from macft.train import distributed

    recipe = write_recipe(work, "launch")
    hosts = work / "hosts.json"
    hosts.write_text(json.dumps({"hosts": [{"ssh": "mac1.local", "ips": ["10.0.0.1"]},
                                           {"ssh": "mac2.local", "ips": ["10.0.0.2"]}]}))
    seen = []
    monkeypatch.setattr(distributed, "run_launcher", lambda cmd: seen.append(cmd) or 0)
    assert main(["run", "--hosts", str(hosts), str(recipe), "train.steps=3", "--offline"]) == 0
    cmd = seen[0]
    assert Path(cmd[0]).name == "mlx.launch"
    assert cmd[1:6] == ["--backend", "ring", "--hostfile", str(hosts), "--"]
    assert cmd[6:] == [sys.executable, "-m", "macft", "run", str(recipe), "train.steps=3",
                       "--offline"]


def test_launcher_failures_become_the_exit_code(capfd):
    """mlx.launch reports failed ranks only as warnings; run_launcher turns them into a code."""
    from macft.train.distributed import run_launcher

    warn = "\033[33m[WARN] Node with rank 1 exited with code 2 \033[0m"
    assert run_launcher([sys.executable, "-c", f"import sys; sys.stderr.write({warn!r})"]) == 2
    assert capfd.readouterr().err == warn
    killed = "[WARN] Node with rank 0 was killed\n"
    assert run_launcher([sys.executable, "-c", f"import sys; sys.stderr.write({killed!r})"]) == 1
    assert run_launcher([sys.executable, "-c", "print('fine')"]) == 0
