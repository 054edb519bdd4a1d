"""Data-parallel training over ``mx.distributed`` (the ring backend over TCP, started by mlx.launch).

Every rank builds the same global batch for a step and takes a contiguous share of its rows (of
its pairs, for preference objectives). Each share's loss is divided by the GLOBAL count of
trained tokens (or weighted by its share of the pairs), so the sum over ranks of the losses and
of the gradients equals what one process computes on the whole batch; gradients are summed with
``all_sum`` before clipping and the update, and every rank applies the same update. Only rank 0
writes (run folder, checkpoints, metrics, progress); at start the trainable weights, optimizer
state and counters of rank 0 are sent to every rank, so a resume needs the run folder on rank 0
only. A lost peer surfaces as MLX's "[ring] connection to a peer was lost" error, which becomes
one line naming the last checkpoint; a watchdog ends a rank whose peers went silent without
closing the connection.
"""

from __future__ import annotations

import functools
import os
import shutil
import sys
import threading
import time
from dataclasses import dataclass

import mlx.core as mx
import numpy as np
from mlx.utils import tree_map

from macft.errors import MacftError

# Seconds without a finished step (or evaluation) before a rank gives up on its peers.
DEFAULT_TIMEOUT = 900.0


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

    def all_sum(self, tree):
        """Sum a tree of arrays over ranks (identity for one process)."""
        if not self.active:
            return tree
        return tree_map(lambda x: mx.distributed.all_sum(x, group=self.group, stream=mx.cpu),
                        tree)

    def total(self, value: float) -> float:
        if not self.active:
            return value
        out = mx.distributed.all_sum(mx.array(value, dtype=mx.float32), group=self.group,
                                     stream=mx.cpu)
        return float(out.item())

    def broadcast(self, tree):
        """Rank 0's values on every rank."""
        if not self.active:
            return tree
        return self.all_sum(tree if self.main else tree_map(mx.zeros_like, tree))


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
    return "[ring]" in text or "[jaccl]" in text or "peer" in text.lower()


def peer_lost(w: World, exc: BaseException, last_checkpoint: str | None) -> MacftError:
    where = last_checkpoint or "none yet"
    return MacftError(f"rank {w.rank} of {w.size}: lost contact with the other ranks "
                      f"({str(exc).splitlines()[0]}); last checkpoint: {where}; rerun the same "
                      "command to resume from it")


class Watchdog:
    """Ends the process with one line when no heartbeat arrives for ``timeout`` seconds.

    A peer that dies usually closes its sockets and MLX raises at once; a peer whose machine
    drops off the network may not, and then a collective would wait forever.
    """

    def __init__(self, w: World, timeout: float | None = None, describe=lambda: "none yet"):
        self.world = w
        self.timeout = timeout or float(os.environ.get("MACFT_DIST_TIMEOUT", DEFAULT_TIMEOUT))
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
                print(f"macft: error: rank {self.world.rank} of {self.world.size}: no step "
                      f"finished in {self.timeout:.0f} s, the other ranks are gone or stuck; "
                      f"last checkpoint: {self.describe()}", file=sys.stderr, flush=True)
                os._exit(2)


def launch_command(hostfile: str, argv: list[str]) -> list[str]:
    """mlx.launch with the ring backend over ``hostfile``, running ``macft <argv>`` per rank."""
    launcher = shutil.which("mlx.launch") or os.path.join(os.path.dirname(sys.executable),
                                                          "mlx.launch")
    if not os.path.exists(launcher):
        raise MacftError("--hosts needs mlx.launch (it comes with the mlx package)")
    return [launcher, "--backend", "ring", "--hostfile", hostfile, "--",
            sys.executable, "-m", "macft", *argv]
