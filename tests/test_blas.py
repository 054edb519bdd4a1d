"""The BLAS macft loads: one this CPU can execute, and a one-line fall back when forced to one it can't.

Each check runs macft in a child process, because the BLAS is chosen once, at import.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from macft import blas

# What OpenBLAS's x86-64 kernels of each core type execute, written out here independently of
# macft.blas's own table (from OpenBLAS's kernel/x86_64 sources: SkylakeX and later use AVX-512
# F/CD/BW/DQ/VL, Haswell and Zen use AVX2 with FMA3).
NEEDS = {
    "SAPPHIRERAPIDS": {"avx512f", "avx512bw", "avx512vl", "avx512_bf16"},
    "COOPERLAKE": {"avx512f", "avx512bw", "avx512vl", "avx512_bf16"},
    "SKYLAKEX": {"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"},
    "HASWELL": {"avx2", "fma"},
    "ZEN": {"avx2", "fma"},
    "SANDYBRIDGE": {"avx"},
}

linux_x86 = pytest.mark.skipif(
    not (sys.platform.startswith("linux") and platform.machine() == "x86_64"),
    reason="the OpenBLAS choice is made on Linux x86-64")


def kernel_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def child_info(tmp_path: Path, **env: str) -> tuple[dict, subprocess.CompletedProcess]:
    code = "import json, macft; from macft import runtime; print(json.dumps(runtime.blas_info().as_dict()))"
    full = dict(os.environ, MACFT_CACHE=str(tmp_path / "cache"), **env)
    if "MACFT_BLAS" not in env:
        full.pop("MACFT_BLAS", None)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc


@linux_x86
def test_the_loaded_blas_runs_on_this_cpu(tmp_path):
    info, proc = child_info(tmp_path)
    assert info["name"].startswith("OpenBLAS"), info
    assert info["core"] in NEEDS, info
    missing = NEEDS[info["core"]] - kernel_flags()
    assert not missing, f"{info['core']} kernels loaded on a CPU without {missing}"
    assert proc.stderr == ""                      # nothing refused that the user asked for
    # The verdict was cached: a second start reads it instead of probing again.
    cache = json.loads((tmp_path / "cache" / "blas-probe.json").read_text())
    assert any(v["ok"] and v["core"] == info["core"] for v in cache.values())


def test_core_types_are_held_against_the_cpu_flags():
    avx2 = {"avx", "avx2", "fma", "sse4_2"}
    assert blas.core_runs_here("HASWELL", avx2, "x86_64") is None
    assert blas.core_runs_here("ZEN", avx2, "x86_64") is None
    why = blas.core_runs_here("SKYLAKEX", avx2, "x86_64")
    assert why == ("SKYLAKEX kernels need avx512f, avx512cd, avx512bw, avx512dq, avx512vl, "
                   "which this CPU lacks")
    assert blas.core_runs_here("SKYLAKEX", avx2 | NEEDS["SKYLAKEX"], "x86_64") is None
    assert blas.core_runs_here("NEOVERSEN1", avx2, "x86_64") == "NEOVERSEN1 is an Arm core type"
    assert blas.core_runs_here("HASWELL", set(), "aarch64") == "HASWELL is not an Arm core type"


STAND_IN = r"""
#include <stdint.h>
const char *openblas_get_config(void) { return "OpenBLAS 9.9.9 NO_AFFINITY %(core)s MAX_THREADS=2"; }
const char *openblas_get_corename(void) { return "%(core)s"; }
int openblas_get_num_threads(void) { return 2; }
static void product(int n, const float *a, const float *b, float *c) {
    for (int i = 0; i < n; i++) for (int j = 0; j < n; j++) {
        float s = 0; for (int k = 0; k < n; k++) s += a[i*n+k] * b[k*n+j]; c[i*n+j] = s; }
}
static void dproduct(int n, const double *a, const double *b, double *c) {
    for (int i = 0; i < n; i++) for (int j = 0; j < n; j++) {
        double s = 0; for (int k = 0; k < n; k++) s += a[i*n+k] * b[k*n+j]; c[i*n+j] = s; }
}
void cblas_sgemm(int o, int ta, int tb, int m, int n, int k, float al, const float *a, int lda,
                 const float *b, int ldb, float be, float *c, int ldc) {
    %(trap)s product(n, a, b, c);
}
void cblas_dgemm(int o, int ta, int tb, int m, int n, int k, double al, const double *a, int lda,
                 const double *b, int ldb, double be, double *c, int ldc) {
    %(trap)s dproduct(n, a, b, c);
}
"""


def build_stand_in(tmp_path: Path, core: str, trap: bool) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to build a stand-in BLAS")
    src = tmp_path / f"standin-{core}.c"
    src.write_text(STAND_IN % {"core": core, "trap": "__builtin_trap();" if trap else ""})
    lib = tmp_path / f"libstandin-{core}-{int(trap)}.so"
    subprocess.run([cc, "-shared", "-fPIC", "-O1", "-o", str(lib), str(src)], check=True)
    return lib


@linux_x86
def test_a_library_that_dies_on_its_first_product_is_refused_in_one_line(tmp_path):
    lib = build_stand_in(tmp_path, "SKYLAKEX", trap=True)    # what cmeel's build does on AVX2
    info, proc = child_info(tmp_path, MACFT_BLAS=str(lib))
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("macft: BLAS: OpenBLAS")
    assert f"MACFT_BLAS {lib.name} refused: a matrix product in it died with SIGILL" in lines[0]
    assert info["library"] != str(lib) and info["name"].startswith("OpenBLAS")


@linux_x86
def test_a_build_for_another_core_type_is_refused_and_a_run_exits_0(tmp_path):
    lib = build_stand_in(tmp_path, "NEOVERSEN1", trap=False)  # loads and multiplies right
    full = dict(os.environ, MACFT_CACHE=str(tmp_path / "cache"), MACFT_BLAS=str(lib))
    proc = subprocess.run([sys.executable, "-m", "macft", "options"], capture_output=True,
                          text=True, env=full, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert f"MACFT_BLAS {lib.name} refused: NEOVERSEN1 is an Arm core type" in lines[0]


@linux_x86
def test_a_stand_in_that_passes_the_probe_is_loaded(tmp_path):
    core = "HASWELL" if "avx2" in kernel_flags() else "SANDYBRIDGE"
    lib = build_stand_in(tmp_path, core, trap=False)
    info, proc = child_info(tmp_path, MACFT_BLAS=str(lib))
    assert proc.stderr == ""
    assert info["library"] == str(lib)
    assert (info["name"], info["core"], info["threads"]) == ("OpenBLAS 9.9.9", core, 2)
    assert info["status"] == f"OpenBLAS 9.9.9 ({core} kernels, 2 threads, MACFT_BLAS)"


@linux_x86
def test_a_missing_forced_library_names_the_path(tmp_path):
    info, proc = child_info(tmp_path, MACFT_BLAS=str(tmp_path / "nothere.so"))
    assert f"MACFT_BLAS={tmp_path / 'nothere.so'}: no such file" in proc.stderr
    assert info["name"].startswith("OpenBLAS")


def test_reference_blas_when_asked(tmp_path):
    info, proc = child_info(tmp_path, MACFT_BLAS="0")
    assert (info["library"], info["source"]) == (None, "MACFT_BLAS=0")
    assert proc.stderr == ""


@linux_x86
@pytest.mark.slow
@pytest.mark.skipif(shutil.which("qemu-x86_64") is None, reason="qemu-user is not installed")
def test_on_an_emulated_cpu_without_avx512_the_skylakex_build_is_refused(tmp_path):
    """The whole start under qemu's Haswell CPU (AVX2 and FMA, no AVX-512), probes included."""
    lib_dirs = [Path(p) for p in sys.path if p.endswith("site-packages")]
    if not any((d / "cmeel.prefix" / "lib" / "libopenblas.so.0").exists() for d in lib_dirs):
        pytest.skip("cmeel-openblas is not installed")
    emulate = ["qemu-x86_64", "-cpu", "Haswell"]
    code = ("import macft; from macft import runtime; import mlx.core as mx; "
            "a = mx.arange(64 * 64, dtype=mx.float32).reshape(64, 64) / 4096; b = a @ a.T; "
            "print(runtime.blas_info().status); print(round(float(b[3, 5]), 4))")
    env = dict(os.environ, MACFT_CACHE=str(tmp_path / "cache"),
               MACFT_BLAS_PROBE_PREFIX=" ".join(emulate))
    env.pop("MACFT_BLAS", None)
    proc = subprocess.run(emulate + [sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    status, value = proc.stdout.strip().splitlines()[-2:]
    assert "(HASWELL kernels" in status
    assert "cmeel-openblas libopenblas.so.0 refused: a matrix product in it died with SIGILL" \
        in status
    want = sum((3 * 64 + k) * (5 * 64 + k) for k in range(64)) / 4096 ** 2
    assert float(value) == pytest.approx(want, abs=1e-4)


def test_generation_runs_openblas_on_the_decode_threads_and_restores_them(monkeypatch):
    import ctypes

    import macft  # noqa: F401  (loads the BLAS)
    from macft import generation

    info = blas.info()
    if info.library is None or (info.threads or 0) < 2:
        pytest.skip("needs a loaded OpenBLAS with at least two threads")
    handle = ctypes.CDLL(info.library)
    before = handle.openblas_get_num_threads()
    with generation.decoding():
        assert handle.openblas_get_num_threads() == 1          # the default: one thread
    assert handle.openblas_get_num_threads() == before
    monkeypatch.setenv("MACFT_DECODE_THREADS", "0")            # 0: training's count
    with generation.decoding():
        assert handle.openblas_get_num_threads() == before
    with blas.threads(before + 4):                             # never more than it had
        assert handle.openblas_get_num_threads() == before
