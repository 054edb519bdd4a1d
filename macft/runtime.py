"""Backend set-up: a fast BLAS on Linux, device and compute dtype, memory limits, offline mode.

This module must not import ``mlx`` at import time: ``preload_blas`` has to run before MLX is
first loaded so that MLX's matrix products resolve to OpenBLAS instead of the reference BLAS
that the Linux ``mlx-cpu`` wheel links (measured here: ~5 GFLOP/s against ~220-330), and only
one that this CPU can execute (``macft.blas`` probes each candidate in a child process).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from macft import blas

BLAS_STATUS = "not checked"


def preload_blas() -> str:
    """Load a BLAS this CPU can run, globally, before MLX (Linux only; see ``macft.blas``).

    ``MACFT_BLAS=0`` keeps MLX's reference BLAS; ``MACFT_BLAS=/path/to/libopenblas.so`` asks
    for that library (probed first; refused with one line if this CPU cannot run it).
    """
    global BLAS_STATUS
    BLAS_STATUS = blas.preload().status
    return BLAS_STATUS


def blas_info() -> blas.BlasInfo:
    """What ``preload_blas`` loaded: library, name, core type, threads, source and why."""
    return blas.info()


def fast_blas() -> bool:
    return blas.info().fast


@dataclass(frozen=True)
class Backend:
    device: str        # "gpu (metal)", "gpu (cuda)" or "cpu"
    dtype: str         # compute dtype name: "float32" or "bfloat16"
    blas: str

    def line(self) -> str:
        return f"device: {self.device} | dtype: {self.dtype} | BLAS: {self.blas}"


def backend(dtype: str = "auto") -> Backend:
    """Describe the device MLX will use and choose the compute dtype.

    float16/bfloat16 are not faster than float32 on CPU (measured), so ``auto`` is float32 on
    CPU and bfloat16 on a GPU.
    """
    import mlx.core as mx

    on_gpu = mx.default_device() == mx.gpu
    if on_gpu:
        kind = "metal" if mx.metal.is_available() else "cuda"
        device = f"gpu ({kind})"
    else:
        device = "cpu"
    if dtype == "auto":
        dtype = "bfloat16" if on_gpu else "float32"
    return Backend(device=device, dtype=dtype, blas=BLAS_STATUS if not on_gpu else "n/a (GPU)")


def on_cpu() -> bool:
    import mlx.core as mx

    return mx.default_device() == mx.cpu


def set_offline(offline: bool) -> None:
    """Honour ``--offline``: huggingface_hub reads HF_HUB_OFFLINE when it is imported."""
    if offline:
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
        mod = sys.modules.get("huggingface_hub.constants")
        if mod is not None:
            mod.HF_HUB_OFFLINE = True


def is_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def limit_memory(fraction: float = 0.85) -> None:
    """On a Mac, cap MLX's memory so a run fails cleanly instead of freezing the machine."""
    import mlx.core as mx

    if not mx.metal.is_available():
        return
    info = mx.metal.device_info()
    total = int(info.get("memory_size", 0))
    if total:
        mx.set_memory_limit(int(total * fraction))
