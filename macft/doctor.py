"""What ``macft doctor`` reports: facts about this machine and macft's set-up on it (no printing).

``gather`` returns them as one ``Facts`` value; the CLI prints one line per fact (or JSON).
Nothing here downloads or trains: the slowest part is a short float32 matmul that measures
the BLAS, and the fast exp's compiler probe (both a fraction of a second).
"""

from __future__ import annotations

import dataclasses
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass

from macft import blas, runtime


@dataclass(frozen=True)
class KernelFact:
    name: str                # "attention.metal"
    device: str              # what it runs on: "Metal"
    applies: bool            # it can run in this process (its device is MLX's default)
    verdict: str             # "passed", "failed" or "not checked" (from the cache folder)
    detail: str              # "24 cases", the failed case, or ""
    checked: str             # when the cached check ran (UTC), or ""


@dataclass(frozen=True)
class Facts:
    os: str                  # "Linux 6.1.0-18-amd64"
    machine: str             # "x86_64", "arm64"
    cpu: str                 # CPU model
    cores: int
    avx2: bool | None        # None: not an x86 CPU, or no flags to read
    avx512: bool | None      # AVX-512 foundation (avx512f)
    python: str
    python_path: str
    mlx: str
    backend: str             # "metal", "cuda" or "cpu": what this MLX build can compute on
    device: str              # MLX's default device, as runtime describes it
    dtype: str               # the compute dtype ``model.dtype: auto`` picks here
    blas: dict               # runtime.blas_info(): library, name, core, threads, source,
                             # reason, status
    gflops: float | None     # measured float32 matmul rate on the CPU (None: not measured)
    compiler: str | None     # g++ (what mx.compile builds its CPU kernels with), or None
    compiler_version: str
    fast_exp: str            # "on", or "off (why)"
    offline: bool
    offline_why: str
    hf_cache: str
    macft_cache: str
    kernels: tuple[KernelFact, ...]

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


# ----- the CPU and the BLAS --------------------------------------------------------------------

def _x86_flag(flags: set[str], name: str) -> bool | None:
    if platform.machine().lower() not in ("x86_64", "amd64", "i686", "i386") or not flags:
        return None
    return name in flags


def matmul_gflops(n: int = 1024, seconds: float = 0.3) -> float:
    """float32 (n x n) @ (n x n) on MLX's CPU stream, repeated for about ``seconds``."""
    import mlx.core as mx

    with mx.stream(mx.cpu):
        a = mx.random.normal((n, n), key=mx.random.key(0))
        b = mx.random.normal((n, n), key=mx.random.key(1))
        mx.eval(a, b, a @ b)                     # warm: threads started, buffers allocated
        reps, start = 0, time.perf_counter()
        while reps < 2 or time.perf_counter() - start < seconds:
            mx.eval(a @ b)
            reps += 1
        elapsed = time.perf_counter() - start
    return 2 * n ** 3 * reps / elapsed / 1e9


# ----- the compiler ------------------------------------------------------------------------------

def compiler() -> tuple[str | None, str]:
    """(path, first line of --version) of g++, the compiler MLX runs for mx.compile's CPU
    kernels; (None, "") when there is none."""
    path = shutil.which("g++")
    if path is None:
        return None, ""
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=20)
        first = (out.stdout.splitlines() or [""])[0].strip()
    except (OSError, subprocess.SubprocessError):
        first = ""
    return path, first


def fast_exp() -> str:
    """"on" when fastexp's compiled path builds and is exact here (its own probe), else why not."""
    from macft.kernels import fastexp

    if os.environ.get("MACFT_FAST_EXP", "1") == "0":
        return "off (MACFT_FAST_EXP=0)"
    if fastexp.available():
        return "on"
    return "off (mx.compile's CPU kernels did not build, or were not exact)"


# ----- offline and caches ------------------------------------------------------------------------

def offline(flag: bool) -> tuple[bool, str]:
    if flag:
        return True, "--offline"
    value = os.environ.get("HF_HUB_OFFLINE")
    if value is None:
        return False, "HF_HUB_OFFLINE unset, no --offline"
    return runtime.is_offline(), f"HF_HUB_OFFLINE={value}"


def hf_cache() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


# ----- kernels -----------------------------------------------------------------------------------

def kernel_facts() -> tuple[KernelFact, ...]:
    """Each device kernel: can it run here, and its cached parity verdict on this device."""
    from macft.kernels import verify

    out = []
    for kernel in verify.registry():
        found = verify.cached(kernel)
        if found is None:
            verdict, detail, checked = "not checked", "", ""
        else:
            verdict = "passed" if found.passed else "failed"
            detail, checked = found.detail, found.checked
        out.append(KernelFact(kernel.name, kernel.device, verify.can_run(kernel), verdict,
                              detail, checked))
    return tuple(out)


# ----- all of it ---------------------------------------------------------------------------------

def gather(offline_flag: bool = False, measure: bool = True) -> Facts:
    import mlx.core as mx

    flags = blas.cpu_flags()
    cuda = getattr(mx, "cuda", None)
    kind = ("metal" if mx.metal.is_available()
            else "cuda" if cuda is not None and cuda.is_available() else "cpu")
    backend = runtime.backend("auto")
    path, version = compiler()
    is_offline, why = offline(offline_flag)
    return Facts(
        os=f"{platform.system()} {platform.release()}", machine=platform.machine(),
        cpu=blas.cpu_model(), cores=os.cpu_count() or 0,
        avx2=_x86_flag(flags, "avx2"), avx512=_x86_flag(flags, "avx512f"),
        python=platform.python_version(), python_path=sys.executable,
        mlx=mx.__version__, backend=kind, device=backend.device, dtype=backend.dtype,
        blas=runtime.blas_info().as_dict(), gflops=matmul_gflops() if measure else None,
        compiler=path, compiler_version=version, fast_exp=fast_exp(),
        offline=is_offline, offline_why=why, hf_cache=hf_cache(),
        macft_cache=str(blas.cache_dir()), kernels=kernel_facts())
