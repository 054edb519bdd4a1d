"""The fault battery (issue 18): kill, interrupt, starve and corrupt tiny runs; print what held.

    python scripts/fault_battery.py [--kills 3] [--seed 0] [--keep DIR]

Every case trains or exports a tiny random model (tests/conftest.py's builder) in a temporary
folder through the real `macft` command in a child process, hurts it, then runs the command
again and compares the result with an uninterrupted run of the same recipe. It prints one table:
case, outcome, and whether anything was lost (an earlier file changed or gone, a half file under
its final name, or a result that differs from the uninterrupted run). Disk-full and read-only
cases need a small tmpfs (root); where one cannot be mounted they are skipped with the reason.
About 5 minutes on 2 loaded cores.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

# The child: `macft` itself, optionally killed (SIGKILL) at a chosen point inside a writer.
# BATTERY_KILL="save:REGEX" kills after half of a safetensors file matching REGEX is on disk;
# "replace:REGEX" kills just before the rename that would publish a file or folder.
CHILD = r"""
import os, re, signal, sys
import macft  # first, as `macft` itself does: it loads OpenBLAS before MLX
how, _, pattern = os.environ.get("BATTERY_KILL", "").partition(":")
if how == "replace":
    real_replace = os.replace
    def replace(src, dst, *a, **k):
        if re.search(pattern, str(dst)):
            os.kill(os.getpid(), signal.SIGKILL)
        return real_replace(src, dst, *a, **k)
    os.replace = replace
elif how == "save":
    import mlx.core as mx
    real_save = mx.save_safetensors
    def save(file, arrays, *a, **k):
        real_save(file, arrays, *a, **k)
        if re.search(pattern, str(file)):
            data = open(file, "rb").read()
            open(file, "wb").write(data[: len(data) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
    mx.save_safetensors = save
from macft.cli import main
sys.exit(main(sys.argv[1:]))
"""

STEPS, SAVE_EVERY, EVAL_EVERY = 12, 2, 4


class Battery:
    def __init__(self, work: Path, kills: int, seed: int):
        self.work, self.kills, self.rng = work, kills, random.Random(seed)
        self.rows: list[tuple[str, str, str]] = []
        self.env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")

    # ----- helpers ----------------------------------------------------------------------------
    def recipe(self, name: str, out: Path, **train) -> Path:
        raw = {"name": name, "model": str(self.work / "model"), "method": "lora",
               "lora": {"rank": 4, "alpha": 8, "dropout": 0.1},
               "data": {"train": str(self.work / "train.jsonl"),
                        "valid": str(self.work / "valid.jsonl"), "max_length": 64},
               "train": {"steps": STEPS, "batch_size": 4, "learning_rate": 1e-2,
                         "eval_every": EVAL_EVERY, "save_every": SAVE_EVERY, "seed": 1, **train},
               "output": str(out)}
        path = self.work / f"{name}.yaml"
        path.write_text(json.dumps(raw))
        return path

    def macft(self, *args, kill: str = "", env: dict | None = None, timeout: int = 300):
        full = dict(self.env, BATTERY_KILL=kill, **(env or {}))
        return subprocess.run([sys.executable, "-c", CHILD, *map(str, args)], env=full,
                              capture_output=True, text=True, timeout=timeout)

    def start(self, *args) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", CHILD, *map(str, args)], env=self.env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def add(self, case: str, outcome: str, lost: bool | None) -> None:
        mark = "n/a" if lost is None else ("yes" if lost else "no")
        self.rows.append((case, outcome, mark))
        print(f"  {case}: {outcome} [lost: {mark}]", file=sys.stderr, flush=True)

    def compare(self, run: Path) -> tuple[bool, str]:
        """(same as the uninterrupted run, words) for a run folder's final adapters."""
        import mlx.core as mx
        import numpy as np

        path = run / "adapters.safetensors"
        if not path.exists():
            return False, "no final adapter"
        a = mx.load(str(self.reference / "adapters.safetensors"))
        b = mx.load(str(path))
        if a.keys() != b.keys():
            return False, "different adapter keys"
        diff = max(float(np.abs(np.array(a[k]) - np.array(b[k])).max()) for k in a)
        if diff == 0.0:
            return True, "adapters bitwise equal to the uninterrupted run"
        return diff < 1e-5, f"adapters differ by {diff:.1e}"

    @staticmethod
    def error_line(proc) -> str:
        lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("macft: error:")]
        return lines[-1][len("macft: error: "):] if lines else ""

    @staticmethod
    def temps(folder: Path) -> int:
        return sum(1 for p in folder.rglob("*") if ".tmp" in p.name) if folder.exists() else 0

    @staticmethod
    def unreadable(folder: Path) -> list[str]:
        """Safetensors and JSON files under ``folder`` (temp files aside) that do not load."""
        import mlx.core as mx

        bad = []
        for p in sorted(folder.rglob("*")):
            if not p.is_file() or ".tmp" in str(p) or p.suffix not in (".safetensors", ".json"):
                continue
            try:
                mx.load(str(p)) if p.suffix == ".safetensors" else json.loads(p.read_text())
            except Exception:  # noqa: BLE001 - any failure to read it back is a loss
                bad.append(str(p.relative_to(folder)))
        return bad

    @staticmethod
    def digests(folder: Path, skip=("metrics.jsonl",)) -> dict:
        return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(folder.rglob("*")) if p.is_file() and p.name not in skip}

    def resume_and_compare(self, case: str, run: Path, what: str) -> None:
        left = self.temps(run)
        again = self.macft("run", run)
        same, words = self.compare(run)
        tail = f"; {left} temp file(s) left by the kill" if left else ""
        if again.returncode:
            self.add(case, f"{what}; resume exit {again.returncode}: "
                           f"{self.error_line(again) or again.stderr[-200:]}{tail}", True)
        else:
            self.add(case, f"{what}; resumed, {words}{tail}", not same)

    # ----- cases ------------------------------------------------------------------------------
    def reference_run(self) -> None:
        self.reference = self.work / "reference"
        done = self.macft("run", self.recipe("reference", self.reference))
        if done.returncode:
            raise SystemExit(f"the uninterrupted run failed:\n{done.stderr}")
        self.add("uninterrupted run", f"exit 0, {STEPS} steps", None)

    def random_kills(self) -> None:
        for i in range(self.kills):
            run = self.work / f"kill-{i}"
            proc = self.start("run", self.recipe(f"kill-{i}", run))
            self._wait_for_step(run, proc)
            time.sleep(self.rng.uniform(0.0, 2.5))
            proc.send_signal(signal.SIGKILL)
            proc.communicate()
            step = self._last_step(run)
            what = ("finished before the kill" if proc.returncode == 0
                    else f"SIGKILL after step {step}")
            self.resume_and_compare(f"SIGKILL at a random moment ({i + 1})", run, what)

    def writer_kills(self) -> None:
        cases = [("checkpoint (half written)", "save", r"step-0000006"),
                 ("checkpoint (before its rename)", "replace", r"checkpoints/step-0000006$"),
                 ("best/ (half written)", "save", r"/best/"),
                 ("final adapter (half written)", "save", r"writer-4/\.adapters"),
                 ("final adapter (before its rename)", "replace",
                  r"writer-5/adapters\.safetensors$")]
        for n, (label, how, pattern) in enumerate(cases, 1):
            run = self.work / f"writer-{n}"
            proc = self.macft("run", self.recipe(f"writer-{n}", run), kill=f"{how}:{pattern}")
            what = ("SIGKILL inside the write" if proc.returncode == -9
                    else f"the writer was not reached (exit {proc.returncode})")
            self.resume_and_compare(f"SIGKILL in {label}", run, what)

    def fuse_and_gguf_kills(self) -> None:
        for label, args, kill, target in (
                ("fuse", ["fuse", self.reference, "--out"], r"save:model.*\.safetensors",
                 self.work / "fused"),
                ("GGUF export", ["export", self.reference, "--gguf"], r"replace:\.gguf$",
                 self.work / "model.gguf")):
            proc = self.macft(*args, target, kill=kill)
            half = target.exists()
            left = len(list(target.parent.glob(f".{target.stem}.tmp*")))
            again = self.macft(*args, target)
            ok = again.returncode == 0 and target.exists()
            found = "a half result" if half else "nothing"
            outcome = (f"SIGKILL inside the write (exit {proc.returncode}); {found} under the "
                       f"final name{f', {left} temp left' if left else ''}; rerun "
                       + ("wrote it" if ok else f"exit {again.returncode}: "
                                                f"{self.error_line(again)}"))
            self.add(f"SIGKILL in {label}", outcome, half or not ok)

    def interrupts(self) -> None:
        for times in (1, 2):
            run = self.work / f"sigint-{times}"
            proc = self.start("run", self.recipe(f"sigint-{times}", run))
            self._wait_for_step(run, proc)
            for _ in range(times):
                proc.send_signal(signal.SIGINT)
                time.sleep(0.05)
            proc.communicate()
            what = f"Ctrl-C x{times}: exit {proc.returncode} after step {self._last_step(run)}"
            self.resume_and_compare(f"SIGINT {'once' if times == 1 else 'twice'}", run, what)

    def disk_full(self) -> None:
        with Mount(self.work / "disk-full", "160k") as disk:
            if disk.skip:
                self.add("disk full", f"skipped: {disk.skip}", None)
                return
            run = disk.path / "run"
            proc = self.macft("run", self.recipe("full", run))
            line = self.error_line(proc)
            broken = self.unreadable(run)
            disk.remount("size=16m")
            if broken:
                self.add("disk full", f"exit {proc.returncode}: {line}; unreadable after it: "
                                      f"{', '.join(broken)}", True)
                return
            self.resume_and_compare("disk full", run, f"exit {proc.returncode}: {line}; every "
                                                      "file left is whole")

    def read_only(self) -> None:
        with Mount(self.work / "read-only", "16m") as disk:
            if disk.skip:
                self.add("read-only folder", f"skipped: {disk.skip}", None)
                return
            run = disk.path / "run"
            self.macft("run", self.recipe("ro", run),
                       env={"MACFT_DEBUG_KILL_AFTER_STEP": "7"})
            before = self.digests(run, skip=())
            disk.remount("ro")
            proc = self.macft("run", run)
            unchanged = self.digests(run, skip=()) == before
            disk.remount("rw")
            self.resume_and_compare("read-only folder", run,
                                    f"exit {proc.returncode}: {self.error_line(proc)}; folder "
                                    f"{'unchanged' if unchanged else 'CHANGED'}")

    def corrupt_latest(self) -> None:
        run = self.work / "corrupt"
        self.macft("run", self.recipe("corrupt", run), env={"MACFT_DEBUG_KILL_AFTER_STEP": "7"})
        latest = run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()
        opt = latest / "optimizer.safetensors"
        opt.write_bytes(opt.read_bytes()[:100])
        self.resume_and_compare("corrupt latest checkpoint", run,
                                f"{latest.name}/optimizer.safetensors cut to 100 bytes")

    def two_trainers(self) -> None:
        run = self.work / "two"
        first = self.start("run", self.recipe("two-a", run))
        time.sleep(0.5)
        second = self.start("run", self.recipe("two-b", run, seed=2, learning_rate=2e-2))
        _, err_b = second.communicate()
        _, err_a = first.communicate()
        both = first.returncode == 0 and second.returncode == 0
        refused = [ln for ln in (err_a + err_b).splitlines() if ln.startswith("macft: error:")]
        outcome = (f"exits {first.returncode} and {second.returncode}"
                   + (f"; {refused[0][14:]}" if refused else "; both trained the same folder"))
        self.add("two trainers on one run folder", outcome, both)

    # ----- waiting ----------------------------------------------------------------------------
    @staticmethod
    def _last_step(run: Path) -> int:
        from macft.events import read_metrics

        steps = [e["step"] for e in read_metrics(run / "metrics.jsonl") if e["event"] == "Step"]
        return steps[-1] if steps else 0

    def _wait_for_step(self, run: Path, proc, timeout: float = 300) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end and proc.poll() is None and self._last_step(run) < 1:
            time.sleep(0.05)

    def table(self) -> str:
        out = ["| case | outcome | lost anything |", "| --- | --- | --- |"]
        out += [f"| {c} | {o.replace('|', '/')} | {lost} |" for c, o, lost in self.rows]
        return "\n".join(out)


class Mount:
    """A small tmpfs for one case (``skip`` says why there is none)."""

    def __init__(self, path: Path, size: str):
        self.path, self.size, self.skip = path, size, ""

    def __enter__(self) -> "Mount":
        self.path.mkdir(parents=True, exist_ok=True)
        if not shutil.which("mount"):
            self.skip = "no mount command"
            return self
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.size}", "tmpfs",
                               str(self.path)], capture_output=True, text=True)
        if done.returncode:
            self.skip = f"cannot mount a tmpfs ({done.stderr.strip() or 'needs root'})"
        return self

    def remount(self, options: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{options}", str(self.path)], check=True)

    def __exit__(self, *exc) -> None:
        if not self.skip:
            subprocess.run(["umount", "-l", str(self.path)], capture_output=True)


def prepare(work: Path) -> None:
    from conftest import write_tiny_model
    from test_train import write_chat_set

    write_tiny_model(work / "model")
    write_chat_set(work / "train.jsonl", n=24)
    write_chat_set(work / "valid.jsonl", n=8, seed=1)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kills", type=int, default=3, help="SIGKILLs at random moments")
    p.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    p.add_argument("--keep", metavar="DIR", help="work in DIR and keep it (default: a temp dir)")
    args = p.parse_args(argv)
    work = Path(args.keep or tempfile.mkdtemp(prefix="macft-battery-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    try:
        prepare(work)
        b = Battery(work, args.kills, args.seed)
        print(f"fault battery in {work}", file=sys.stderr)
        for case in (b.reference_run, b.random_kills, b.writer_kills, b.fuse_and_gguf_kills,
                     b.interrupts, b.disk_full, b.read_only, b.corrupt_latest, b.two_trainers):
            case()
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(b.table())
    print(f"\n{len(b.rows)} cases in {time.monotonic() - started:.0f} s; "
          f"lost anything in {sum(r[2] == 'yes' for r in b.rows)}")
    return 1 if any(r[2] == "yes" for r in b.rows) else 0


if __name__ == "__main__":
    sys.exit(main())
