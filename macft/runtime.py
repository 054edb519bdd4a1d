"""Backend set-up: a fast BLAS on Linux, device and compute dtype, memory limits, offline mode.

This module must not import ``mlx`` at import time: ``preload_blas`` has to run before MLX is
first loaded so that MLX's matrix products resolve to OpenBLAS instead of the reference BLAS
that the Linux ``mlx-cpu`` wheel links (measured here: ~5 GFLOP/s against ~220-330).
"""

from __future__ import annotations

import ctypes
import glob
import hashlib
import os
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

BLAS_STATUS = "not checked"
_BLAS_HANDLE = None


def _site_dirs() -> list[Path]:
    dirs = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    dirs.update(p for p in sys.path if p.endswith("site-packages"))
    return [Path(d) for d in sorted(dirs) if Path(d).is_dir()]


def _find_openblas() -> Path | None:
    for site in _site_dirs():
        lib = site / "cmeel.prefix" / "lib" / "libopenblas.so.0"
        if lib.exists():
            return lib
    return None


def _vendored_gfortran() -> Path | None:
    """A libgfortran that a wheel (numpy, mlx-cpu, scipy) vendored under a mangled name."""
    for site in _site_dirs():
        for pattern in ("numpy.libs/libgfortran-*.so.5*", "mlx_cpu.libs/libgfortran-*.so.5*",
                        "scipy.libs/libgfortran-*.so.5*"):
            hits = sorted(glob.glob(str(site / pattern)))
            if hits:
                return Path(hits[0])
    return None


def _gfortran_shim(vendored: Path) -> Path:
    """Copy a vendored libgfortran into a cache folder under the soname OpenBLAS asks for.

    auditwheel renames the soname of vendored libraries (``libgfortran-<hash>.so.5``), so the
    dynamic loader does not accept them for OpenBLAS's ``libgfortran.so.5``. The copy gets the
    plain soname (patched in place in ``.dynstr``: the new name is shorter) and its own
    dependencies (libquadmath) are linked beside it, where its ``$ORIGIN`` rpath finds them.
    """
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "macft"
    tag = hashlib.sha1(f"{vendored}:{vendored.stat().st_size}".encode()).hexdigest()[:12]
    farm = cache / f"blas-{tag}"
    shim = farm / "libgfortran.so.5"
    if shim.exists():
        return shim
    farm.mkdir(parents=True, exist_ok=True)
    data = bytearray(vendored.read_bytes())
    old = vendored.name.encode() + b"\0"
    at = data.find(old)
    if at < 0:
        raise OSError(f"soname of {vendored} not found")
    new = b"libgfortran.so.5\0"
    data[at:at + len(new)] = new
    for dep in vendored.parent.glob("libquadmath-*"):
        link = farm / dep.name
        if not link.exists():
            link.symlink_to(dep)
    tmp = farm / f".{shim.name}.{os.getpid()}"
    tmp.write_bytes(bytes(data))
    os.replace(tmp, shim)
    return shim


def preload_blas() -> str:
    """Load OpenBLAS globally before MLX (Linux only). Returns and records a status line.

    ``MACFT_BLAS=0`` turns this off; ``MACFT_BLAS=/path/to/libblas.so`` loads that library.
    """
    global BLAS_STATUS, _BLAS_HANDLE
    if _BLAS_HANDLE is not None or BLAS_STATUS != "not checked":
        return BLAS_STATUS
    if sys.platform == "darwin":
        BLAS_STATUS = "Accelerate (macOS)"
        return BLAS_STATUS
    if not sys.platform.startswith("linux"):
        BLAS_STATUS = "MLX default"
        return BLAS_STATUS
    choice = os.environ.get("MACFT_BLAS", "")
    if choice == "0":
        BLAS_STATUS = "reference BLAS (MACFT_BLAS=0)"
        return BLAS_STATUS
    if "mlx.core" in sys.modules:
        BLAS_STATUS = "reference BLAS (mlx was imported before macft)"
        return BLAS_STATUS
    lib = Path(choice) if choice else _find_openblas()
    if lib is None:
        BLAS_STATUS = "reference BLAS (cmeel-openblas not installed)"
        return BLAS_STATUS
    try:
        try:
            _BLAS_HANDLE = ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
        except OSError as exc:
            vendored = _vendored_gfortran()
            if "libgfortran" not in str(exc) or vendored is None:
                raise
            ctypes.CDLL(str(_gfortran_shim(vendored)), mode=ctypes.RTLD_GLOBAL)
            _BLAS_HANDLE = ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
    except OSError as exc:
        BLAS_STATUS = f"reference BLAS (could not load {lib.name}: {exc})"
        return BLAS_STATUS
    BLAS_STATUS = _openblas_config(_BLAS_HANDLE) or f"OpenBLAS ({lib})"
    return BLAS_STATUS


def _openblas_config(handle) -> str | None:
    try:
        fn = handle.openblas_get_config
    except AttributeError:
        return None
    fn.restype = ctypes.c_char_p
    words = fn().decode().split()
    return " ".join(words[:2]) + (f" ({words[-2]})" if len(words) > 3 else "")


def fast_blas() -> bool:
    return BLAS_STATUS.startswith(("OpenBLAS", "Accelerate"))


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
