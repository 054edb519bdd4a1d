"""Choose and load a BLAS on Linux that this CPU can execute, before MLX is first imported.

The Linux ``mlx-cpu`` wheel links a slow reference BLAS and resolves ``cblas_sgemm`` & co. from
whatever library is already in the process, so macft loads OpenBLAS globally first. A build
for the wrong core type (``cmeel-openblas`` is SKYLAKEX-only and needs AVX-512) does not fail
to load: it dies with SIGILL on the first matrix product. So every candidate is first tried in
a child process (load it, read its core type, multiply small matrices and check the result)
and its core type is held against the CPU flags the kernel reports. Verdicts are cached per
library file and CPU in the macft cache folder, so the probe runs once per machine.

Candidates, in order: ``MACFT_BLAS=/path`` (refused with one line if it fails); the
``cmeel-openblas`` wheel (the build the benchmarks were measured with), when the CPU runs its
core type; the DYNAMIC_ARCH OpenBLAS of the ``ngsolve-openblas`` wheel (chooses its kernels at
run time: Haswell/Zen on AVX2, SkylakeX on AVX-512); a system DYNAMIC_ARCH OpenBLAS (Debian's
``libopenblas0-pthread``). If none passes, MLX keeps its reference BLAS.

This module must not import ``mlx``.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import hashlib
import json
import os
import platform
import shlex
import subprocess
import sys
import sysconfig
from dataclasses import asdict, dataclass
from pathlib import Path

# CPU flags (as /proc/cpuinfo names them) that OpenBLAS's x86-64 kernels for a core type use.
_AVX512 = ("avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl")
CORE_FLAGS: dict[str, tuple[str, ...]] = {
    "SAPPHIRERAPIDS": _AVX512 + ("avx512_bf16", "amx_tile"),
    "COOPERLAKE": _AVX512 + ("avx512_bf16",),
    "SKYLAKEX": _AVX512,
    "ZEN": ("avx2", "fma"),
    "HASWELL": ("avx2", "fma"),
    "SANDYBRIDGE": ("avx",),
    "NEHALEM": ("sse4_2",),
    "CORE2": ("ssse3",),
    "PRESCOTT": ("sse3",),
    "ATOM": ("ssse3",),
    "BARCELONA": ("sse4a",),
    "BULLDOZER": ("avx", "fma4"),
    "PILEDRIVER": ("avx", "fma"),
    "STEAMROLLER": ("avx", "fma"),
    "EXCAVATOR": ("avx2", "fma"),
}
# Core types OpenBLAS builds for other architectures (a library built for one of these cannot
# run on x86-64, and the x86 ones cannot run on aarch64).
_ARM_CORES = ("ARMV8", "CORTEX", "NEOVERSE", "THUNDERX", "A64FX", "FALKOR", "TSV110", "EMAG",
              "VORTEX", "APPLE")


@dataclass(frozen=True)
class BlasInfo:
    """What was loaded and why. ``status`` is the one line ``macft run`` and ``doctor`` print."""

    library: str | None          # the file loaded, None when MLX keeps its own BLAS
    name: str                    # "OpenBLAS 0.3.31", "MLX reference BLAS", "Accelerate"
    core: str | None             # the kernels' core type ("SKYLAKEX", "HASWELL", "ZEN", ...)
    threads: int | None
    source: str                  # "MACFT_BLAS", "cmeel-openblas", "ngsolve-openblas", "system", ...
    reason: str                  # why this one: what was refused before it, or why none loaded

    @property
    def fast(self) -> bool:
        return self.library is not None or self.name == "Accelerate"

    @property
    def status(self) -> str:
        detail = ", ".join(x for x in (self.core and f"{self.core} kernels",
                                       self.threads and f"{self.threads} threads",
                                       self.source) if x)
        line = f"{self.name} ({detail})" if detail else self.name
        return f"{line}; {self.reason}" if self.reason else line

    def as_dict(self) -> dict:
        return dict(asdict(self), status=self.status)


_INFO: BlasInfo | None = None
_HANDLES: list = []


def cache_dir() -> Path:
    """The macft user cache folder (``MACFT_CACHE`` or ``$XDG_CACHE_HOME/macft``)."""
    if os.environ.get("MACFT_CACHE"):
        return Path(os.environ["MACFT_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "macft"


def cpu_flags() -> set[str]:
    """The CPU flags the kernel reports (first processor of /proc/cpuinfo); empty elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "CPU part"):
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def core_runs_here(core: str | None, flags: set[str] | None = None,
                   machine: str | None = None) -> str | None:
    """None when kernels of this core type can run on this CPU, else the reason they cannot."""
    if not core:
        return None
    machine = machine or platform.machine()
    core = core.upper()
    is_arm_core = core.startswith(_ARM_CORES)
    if machine in ("x86_64", "AMD64") and is_arm_core:
        return f"{core} is an Arm core type"
    if machine in ("aarch64", "arm64"):
        return None if is_arm_core else f"{core} is not an Arm core type"
    needed = CORE_FLAGS.get(core)
    if needed is None:
        return None
    flags = cpu_flags() if flags is None else flags
    missing = [f for f in needed if f not in flags]
    if not missing:
        return None
    return f"{core} kernels need {', '.join(missing)}, which this CPU lacks"


# --- where libraries are ---------------------------------------------------------------------

def _site_dirs() -> list[Path]:
    dirs = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    dirs.update(p for p in sys.path if p.endswith("site-packages"))
    return [Path(d) for d in sorted(dirs) if Path(d).is_dir()]


def candidates() -> list[tuple[str, Path]]:
    found: list[tuple[str, Path]] = []
    for site in _site_dirs():
        lib = site / "cmeel.prefix" / "lib" / "libopenblas.so.0"
        if lib.exists():
            found.append(("cmeel-openblas", lib))
            break
    for site in _site_dirs():
        hits = sorted(glob.glob(str(site / "ngsolve_openblas" / "libopenblas*.so*")))
        if hits:
            found.append(("ngsolve-openblas", Path(hits[0])))
            break
    arch = {"x86_64": "x86_64-linux-gnu", "aarch64": "aarch64-linux-gnu"}.get(platform.machine())
    if arch:
        for rel in ("openblas-pthread/libopenblas.so.0", "openblas-openmp/libopenblas.so.0",
                    "libopenblas.so.0"):
            lib = Path("/usr/lib") / arch / rel
            if lib.exists():
                found.append(("system", lib))
                break
    return found


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
    """Copy a vendored libgfortran into the cache folder under the soname OpenBLAS asks for.

    auditwheel renames the soname of vendored libraries (``libgfortran-<hash>.so.5``), so the
    dynamic loader does not accept them for OpenBLAS's ``libgfortran.so.5``. The copy gets the
    plain soname (patched in place in ``.dynstr``: the new name is shorter) and its own
    dependencies (libquadmath) are linked beside it, where its ``$ORIGIN`` rpath finds them.
    """
    tag = hashlib.sha1(f"{vendored}:{vendored.stat().st_size}".encode()).hexdigest()[:12]
    farm = cache_dir() / f"blas-{tag}"
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
    _atomic_write(shim, bytes(data))
    return shim


def _atomic_write(path: Path, data: str | bytes) -> None:
    # Imported here, not at the top: the probe process loads this file as a plain module.
    from macft.runs import atomic_write

    atomic_write(path, data)


def _needs_gfortran(lib: Path) -> bool:
    try:
        return b"libgfortran.so.5\0" in lib.read_bytes()
    except OSError:
        return False


def _dlopen(lib: Path, shim: Path | None):
    """Load ``lib`` into this process globally (and the libgfortran shim first if given)."""
    if shim is not None:
        _HANDLES.append(ctypes.CDLL(str(shim), mode=ctypes.RTLD_GLOBAL))
    try:
        return ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
    except OSError as exc:
        if shim is not None or "libgfortran" not in str(exc):
            raise
        vendored = _vendored_gfortran()
        if vendored is None:
            raise
        return _dlopen(lib, _gfortran_shim(vendored))


def describe(handle) -> dict:
    """Name, core type and threads of a loaded OpenBLAS (what its own functions report)."""
    out: dict = {"name": "BLAS", "core": None, "threads": None}
    try:
        fn = handle.openblas_get_config
    except AttributeError:
        return out
    fn.restype = ctypes.c_char_p
    words = fn().decode(errors="replace").split()
    out["name"] = " ".join(words[:2])
    try:
        corename = handle.openblas_get_corename
        corename.restype = ctypes.c_char_p
        out["core"] = corename().decode(errors="replace").upper() or None
    except AttributeError:
        pass
    if out["core"] is None or out["core"] == "UNKNOWN":
        cores = [w for w in words[2:] if w.upper() in CORE_FLAGS or w.upper().startswith(_ARM_CORES)]
        out["core"] = cores[0].upper() if cores else None
    try:
        threads = handle.openblas_get_num_threads
        threads.restype = ctypes.c_int
        out["threads"] = int(threads())
    except AttributeError:
        pass
    return out


# --- the probe: load and multiply in a child process ------------------------------------------

_PROBE = r"""
import ctypes, json, sys
sys.path.insert(0, sys.argv[3])
from macft_blas_probe import describe_and_multiply
print(json.dumps(describe_and_multiply(sys.argv[1], sys.argv[2] or None)))
"""


def describe_and_multiply(lib: str, shim: str | None) -> dict:
    """In the probe process: load, describe, and check small float32/float64 products."""
    handle = _dlopen(Path(lib), Path(shim) if shim else None)
    facts = describe(handle)
    n = 67                                   # odd sizes reach the kernels' edge code too
    for fn_name, ctype in (("cblas_sgemm", ctypes.c_float), ("cblas_dgemm", ctypes.c_double)):
        fn = getattr(handle, fn_name)
        a = (ctype * (n * n))(*[((i * 7) % 13) / 8.0 for i in range(n * n)])
        b = (ctype * (n * n))(*[((i * 5) % 11) / 4.0 for i in range(n * n)])
        c = (ctype * (n * n))()
        # RowMajor=101, NoTrans=111
        fn(101, 111, 111, n, n, n, ctype(1.0), a, n, b, n, ctype(0.0), c, n)
        for i, j in ((0, 0), (n - 1, n - 1), (n // 2, 3)):
            want = sum(a[i * n + k] * b[k * n + j] for k in range(n))
            if abs(c[i * n + j] - want) > 1e-3 * max(1.0, abs(want)):
                raise RuntimeError(f"{fn_name} gave {c[i * n + j]} for {want}")
    return facts


def _probe_key(lib: Path) -> str:
    st = lib.stat()
    flags = hashlib.sha1(" ".join(sorted(cpu_flags())).encode()).hexdigest()[:12]
    forced = os.environ.get("OPENBLAS_CORETYPE", "")     # DYNAMIC_ARCH builds obey it
    return (f"{lib.resolve()}|{st.st_size}|{st.st_mtime_ns}|{cpu_model()}|{flags}|{forced}"
            f"|{os.environ.get('MACFT_BLAS_PROBE_PREFIX', '')}")


def _read_cache() -> dict:
    try:
        return json.loads((cache_dir() / "blas-probe.json").read_text())
    except (OSError, ValueError):
        return {}


def _write_cache(cache: dict) -> None:
    folder = cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _atomic_write(folder / "blas-probe.json", json.dumps(cache, indent=1, sort_keys=True))
    except OSError:
        pass                                    # a read-only home only costs a probe per start


def probe(lib: Path, use_cache: bool = True) -> dict:
    """``{"ok": bool, "name", "core", "threads", "why"}`` for one library file, cached."""
    key = _probe_key(lib)
    cache = _read_cache() if use_cache else {}
    if key in cache:
        return cache[key]
    shim = ""
    if _needs_gfortran(lib):
        vendored = _vendored_gfortran()
        if vendored is not None:
            try:
                shim = str(_gfortran_shim(vendored))
            except OSError:
                shim = ""
    here = Path(__file__).parent
    farm = cache_dir() / "probe"
    try:
        farm.mkdir(parents=True, exist_ok=True)
    except OSError:                             # no writable cache: probe from a temp folder
        import tempfile

        farm = Path(tempfile.mkdtemp(prefix="macft-blas-"))
    # The probe imports this file as a plain module (not the macft package, whose import
    # would preload a BLAS itself).
    mod = farm / "macft_blas_probe.py"
    src = (here / "blas.py").read_text()
    if not mod.exists() or mod.read_text() != src:
        _atomic_write(mod, src)
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    # MACFT_BLAS_PROBE_PREFIX runs the probe under a wrapper: the tests use an emulated CPU
    # (qemu-x86_64 -cpu Haswell) to see what a CPU without AVX-512 does.
    prefix = shlex.split(os.environ.get("MACFT_BLAS_PROBE_PREFIX", ""))
    try:
        proc = subprocess.run(prefix + [sys.executable, "-c", _PROBE, str(lib), shim, str(farm)],
                              capture_output=True, text=True, timeout=120, env=env)
    except subprocess.TimeoutExpired:
        verdict = {"ok": False, "why": "the probe did not finish in 120 s"}
    else:
        verdict = _verdict(proc)
    if verdict.get("ok"):
        refusal = core_runs_here(verdict.get("core"))
        if refusal:
            verdict = dict(verdict, ok=False, why=refusal)
    verdict["shim"] = shim
    cache[key] = verdict
    _write_cache(cache)
    return verdict


def _verdict(proc: subprocess.CompletedProcess) -> dict:
    if proc.returncode < 0:
        import signal

        try:
            name = signal.Signals(-proc.returncode).name
        except ValueError:
            name = f"signal {-proc.returncode}"
        return {"ok": False, "why": f"a matrix product in it died with {name}"}
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["exit %d" % proc.returncode])[-1]
        return {"ok": False, "why": f"the probe failed: {last[:200]}"}
    try:
        facts = json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"ok": False, "why": "the probe printed no result"}
    return dict(facts, ok=True)


# --- the choice -------------------------------------------------------------------------------

def _none(name: str, source: str, reason: str) -> BlasInfo:
    return BlasInfo(library=None, name=name, core=None, threads=None, source=source, reason=reason)


def choose_and_load() -> tuple[BlasInfo, str | None]:
    """Load the first usable candidate. Returns the info and a warning line, if one is owed.

    The warning is for the user's own choice that was refused (``MACFT_BLAS``) or for ending on
    MLX's slow reference BLAS; skipping ``cmeel-openblas`` on a CPU without AVX-512 is expected
    and only recorded in ``reason``.
    """
    if sys.platform == "darwin":
        return _none("Accelerate", "macOS", ""), None
    if not sys.platform.startswith("linux"):
        return _none("MLX default BLAS", "platform", ""), None
    choice = os.environ.get("MACFT_BLAS", "")
    if choice == "0":
        return _none("MLX reference BLAS", "MACFT_BLAS=0", ""), None
    if "mlx.core" in sys.modules:
        return _none("MLX reference BLAS", "import order", "mlx was imported before macft"), None
    refused: list[str] = []
    warn_user = False
    order = candidates()
    if choice:
        forced = Path(choice).expanduser()
        if forced.exists():
            order.insert(0, ("MACFT_BLAS", forced))
        else:
            refused.append(f"MACFT_BLAS={choice}: no such file")
        warn_user = True
    for source, lib in order:
        verdict = probe(lib)
        if not verdict.get("ok"):
            refused.append(f"{source} {lib.name} refused: {verdict.get('why')}")
            continue
        shim = verdict.get("shim") or None
        try:
            handle = _dlopen(lib, Path(shim) if shim and Path(shim).exists() else None)
        except OSError as exc:
            refused.append(f"{source} {lib.name} could not be loaded: {exc}")
            continue
        _HANDLES.append(handle)
        facts = describe(handle)
        info = BlasInfo(library=str(lib), name=facts["name"], core=facts["core"],
                        threads=facts["threads"], source=source, reason="; ".join(refused))
        return info, (info.status if warn_user and refused else None)
    reason = "; ".join(refused) or "no OpenBLAS found (install cmeel-openblas or ngsolve-openblas)"
    info = _none("MLX reference BLAS", "fallback", reason)
    return info, info.status


def preload() -> BlasInfo:
    """Choose and load once per process; print a one-line warning to stderr when one is owed."""
    global _INFO
    if _INFO is None:
        info, warning = choose_and_load()
        _INFO = info
        if warning:
            sys.stderr.write(f"macft: BLAS: {warning}\n")
    return _INFO


def info() -> BlasInfo:
    return _INFO if _INFO is not None else preload()


@contextlib.contextmanager
def threads(n: int):
    """Within this block the loaded OpenBLAS runs on at most ``n`` threads (0: unchanged).

    OpenBLAS's worker threads busy-wait for their share of a product, so ``mx.synchronize``
    is called on both sides of the switch: no product is running while the count changes.
    Without a loaded OpenBLAS (macOS, MLX's own BLAS) this does nothing.
    """
    handle = _HANDLES[-1] if _HANDLES else None
    setter = getattr(handle, "openblas_set_num_threads", None)
    getter = getattr(handle, "openblas_get_num_threads", None)
    before = int(getter()) if getter is not None else 0
    if setter is None or n <= 0 or n >= before:
        yield
        return
    import mlx.core as mx

    mx.synchronize()
    setter(n)
    try:
        yield
    finally:
        mx.synchronize()
        setter(before)
