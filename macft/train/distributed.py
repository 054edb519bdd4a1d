"""Data-parallel training over ``mx.distributed`` (the ring backend over TCP, started by mlx.launch).

Every rank builds the same global batch for a step and takes a contiguous share of its rows (of
its pairs, for preference objectives). Each share's loss is divided by the GLOBAL count of
trained tokens (or weighted by its share of the pairs), so the sum over ranks of the losses and
of the gradients equals what one process computes on the whole batch; gradients are summed with
``all_sum`` before clipping and the update, and every rank applies the same update.

Evaluation passes (validation losses, DPO's reference log-probs) are split by whole batches,
batch i to rank i % size, and summed: each batch is computed exactly as one process computes
it, and every rank ends with the same bits, so decisions taken from them (best adapter, early
stopping) cannot differ between ranks, even on different chips.

Only rank 0 reads and writes the run folder (checkpoints, metrics, progress, the reference
log-probs); at start every rank takes rank 0's weights, optimizer state, counters and reference,
so a resume needs the run folder on rank 0 only. A lost peer surfaces as MLX's "[ring]
connection to a peer was lost" error, which becomes one line naming the last checkpoint; a
watchdog ends a rank whose peers went silent without closing the connection.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten, tree_map, tree_map_with_path

from macft import env
from macft.errors import MacftError

# Seconds without a finished step (or evaluation) before a rank gives up on its peers.
TIMEOUT_ENV = "MACFT_DIST_TIMEOUT"
DEFAULT_TIMEOUT = float(env.SWITCHES[TIMEOUT_ENV].default)


@dataclass(frozen=True)
class World:
    group: object | None
    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1

    def share(self, n: int) -> np.ndarray:
        """This rank's contiguous share of ``n`` rows (empty when n < size for some ranks)."""
        return np.array_split(np.arange(n), self.size)[self.rank]

    def mine(self, i: int) -> bool:
        """Whether batch ``i`` of an evaluation pass is this rank's."""
        return i % self.size == self.rank

    def all_sum(self, tree):
        """Sum a tree of arrays over ranks (identity for one process)."""
        if not self.active:
            return tree
        # Collectives pair up by the order they run in, and MLX runs the nodes of one graph in
        # an order that depends on how each input was made (a state restored from a file vs a
        # fresh one): so the inputs are computed first, then one collective per dtype runs,
        # alone, over the leaves concatenated in sorted path order. (One large all_sum is also
        # cheaper than many small ones.)
        leaves = sorted(tree_flatten(tree), key=lambda kv: kv[0])
        mx.eval([v for _, v in leaves])
        summed = {}
        for dtype in sorted({str(v.dtype) for _, v in leaves}):
            group = [(k, v) for k, v in leaves if str(v.dtype) == dtype]
            flat = mx.concatenate([v.reshape(-1) for _, v in group])
            total = mx.distributed.all_sum(flat, group=self.group, stream=mx.cpu)
            mx.eval(total)
            at = 0
            for k, v in group:
                summed[k] = total[at:at + v.size].reshape(v.shape)
                at += v.size
        return tree_map_with_path(lambda path, _: summed[path or ""], tree)

    def totals(self, values: list[float]) -> list[float]:
        """Sum plain numbers over ranks, in one collective."""
        if not self.active:
            return list(values)
        out = mx.distributed.all_sum(mx.array(values, dtype=mx.float32), group=self.group,
                                     stream=mx.cpu)
        return out.tolist()

    def total(self, value: float) -> float:
        return self.totals([value])[0]

    def broadcast(self, tree):
        """Rank 0's values on every rank (x + 0 is exact, so the bits arrive unchanged)."""
        if not self.active:
            return tree
        return self.all_sum(tree if self.main else tree_map(mx.zeros_like, tree))

    def sum_arrays(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Sum named numpy arrays over ranks (in sorted name order, the same on every rank)."""
        if not self.active:
            return arrays
        names = sorted(arrays)
        out = self.all_sum([mx.array(arrays[k]) for k in names])
        mx.eval(out)
        return {k: np.array(v) for k, v in zip(names, out)}

    def agree(self, flag: bool) -> bool:
        """Rank 0's answer on every rank (e.g. "is there a checkpoint?": only rank 0 looks)."""
        if not self.active:
            return flag
        return self.total(1.0 if (flag and self.main) else 0.0) > 0


class EvalShare:
    """A batcher seen through this rank's batches of its evaluation pass.

    It has what ``reference_logps`` reads (``n`` and ``iter_eval``), so the reference of every
    pair is computed by exactly one rank; the others leave zeros there for the sum.
    """

    def __init__(self, batcher, w: World, limit: int = 0, progress=None):
        self.batcher, self.world, self.limit = batcher, w, limit
        self.n = getattr(batcher, "n", None)
        self.progress = progress      # progress(done, total) over all ranks' batches, or None

    def count(self) -> int:
        """Batches in the pass (every rank's): the batcher's, at most ``limit``."""
        n = self.batcher.eval_count()
        return min(n, self.limit) if self.limit else n

    def iter_eval(self):
        total = self.count() if self.progress else 0
        if self.progress:
            self.progress(0, total)
        for i, b in enumerate(self.batcher.iter_eval()):
            if self.limit and i >= self.limit:
                return
            if self.world.mine(i):
                yield b
            if self.progress:
                self.progress(i + 1, total)


def _launched() -> bool:
    return any(k in os.environ for k in ("MLX_RANK", "MLX_HOSTFILE", "OMPI_COMM_WORLD_RANK",
                                         "MLX_JACCL_COORDINATOR", "MLX_IBV_DEVICES"))


@functools.cache
def world() -> World:
    """The process group; a one-process world unless started by mlx.launch (or mpirun)."""
    if not _launched():
        return World(None)
    group = mx.distributed.init()
    return World(group, group.rank(), group.size())


def is_peer_loss(exc: BaseException) -> bool:
    text = str(exc)
    return "connection to a peer" in text or "[jaccl]" in text


def peer_lost(w: World, exc: BaseException, last_checkpoint: str | None) -> MacftError:
    where = last_checkpoint or "none yet"
    return MacftError(f"rank {w.rank} of {w.size}: lost contact with the other ranks "
                      f"({str(exc).splitlines()[0]}); last checkpoint: {where}; rerun the same "
                      "command to resume from it")


class Watchdog:
    """Ends the process with one line when no heartbeat arrives for ``timeout`` seconds.

    A peer that dies closes its sockets and MLX raises at once; a peer that is frozen (stopped,
    swapping, its machine off the network) does not, and a collective would wait forever.
    """

    def __init__(self, w: World, timeout: float | None = None, describe=lambda: "none yet"):
        self.world = w
        self.timeout = timeout or float(env.get(TIMEOUT_ENV))
        self.describe = describe
        self.last = time.monotonic()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True, name="macft-watchdog")

    def start(self) -> Watchdog:
        if self.world.active:
            self._thread.start()
        return self

    def beat(self) -> None:
        self.last = time.monotonic()

    def stop(self) -> None:
        self._done.set()

    def _watch(self) -> None:
        while not self._done.wait(min(5.0, self.timeout / 4)):
            if time.monotonic() - self.last > self.timeout:
                print(f"macft: error: rank {self.world.rank} of {self.world.size}: lost contact "
                      f"with the other ranks (no step finished in {self.timeout:.0f} s; "
                      f"{TIMEOUT_ENV} sets this); last checkpoint: {self.describe()}",
                      file=sys.stderr, flush=True)
                # The main thread is blocked inside a collective: only _exit ends the process.
                os._exit(2)


# ----- `macft run --hosts` ------------------------------------------------------------------

def read_hosts(path: str | Path) -> list[dict]:
    """mlx.launch's hostfile (a list of hosts, or {"hosts": [...], ...}), checked for the ring."""
    path = Path(path)
    example = '[{"ssh": "mac1.local", "ips": ["10.0.0.1"]}, ...]'
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise MacftError(f"{path}: file not found") from None
    except json.JSONDecodeError as exc:
        raise MacftError(f"{path}: not JSON ({exc.msg}, line {exc.lineno})") from None
    hosts = data.get("hosts") if isinstance(data, dict) else data
    if not isinstance(hosts, list) or len(hosts) < 2:
        raise MacftError(f"{path}: expected a JSON list of at least two hosts, e.g. {example}")
    for i, h in enumerate(hosts):
        if not (isinstance(h, dict) and isinstance(h.get("ssh"), str) and h.get("ips")):
            raise MacftError(f"{path}: host {i} needs \"ssh\" (a name ssh reaches) and \"ips\" "
                             f"(addresses the ring connects over), e.g. {example}")
    return hosts


def launch_command(hostfile: str, argv: list[str]) -> list[str]:
    """mlx.launch with the ring backend over ``hostfile``, running ``macft <argv>`` per rank."""
    launcher = shutil.which("mlx.launch") or os.path.join(os.path.dirname(sys.executable),
                                                          "mlx.launch")
    if not os.path.exists(launcher):
        raise MacftError("--hosts needs mlx.launch (it comes with the mlx package)")
    return [launcher, "--backend", "ring", "--hostfile", hostfile, "--",
            sys.executable, "-m", "macft", *argv]


# mlx.launch itself always exits 0; it reports each failed rank on stderr like this.
_RANK_FAILED = re.compile(r"Node with rank (\d+) (?:exited with code (-?\d+)|was killed)")


def run_launcher(cmd: list[str]) -> int:
    """Run mlx.launch, passing its output through; the exit code of the first failed rank."""
    import subprocess

    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE)
    failed, tail = [], ""
    while chunk := proc.stderr.read1(65536):
        sys.stderr.buffer.write(chunk)
        sys.stderr.buffer.flush()
        *lines, tail = (tail + chunk.decode(errors="replace")).split("\n")
        failed += _failures(lines)
    rc = proc.wait()
    failed += _failures([tail])
    return next((c for c in failed if c != 0), rc)


def _failures(lines: list[str]) -> list[int]:
    # A rank ended by a signal (negative code) or by mlx.launch counts as a plain failure.
    return [int(code) if code and int(code) > 0 else 1
            for line in lines for _, code in _RANK_FAILED.findall(line)]
