"""``macft doctor``: every line checked against what this test machine is (read independently)."""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import pytest

from macft import runtime
from macft.cli import main
from macft.kernels import fastexp, verify


def flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def model_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.partition(":")[2].strip()
    return ""


def doctor(capsys, *args) -> dict[str, str]:
    capsys.readouterr()
    assert main(["doctor", *args]) == 0
    lines = capsys.readouterr().out.splitlines()
    facts = dict(line.split(": ", 1) for line in lines)
    assert len(facts) == len(lines) <= 24                  # one screen, one fact a line
    return facts


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MACFT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.mark.skipif(not Path("/proc/cpuinfo").exists(), reason="reads /proc/cpuinfo")
def test_every_line_is_a_fact_of_this_machine(capsys, cache, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    facts = doctor(capsys)
    assert facts["platform"] == f"{platform.system()} {platform.release()}, {platform.machine()}"
    yes = {True: "yes", False: "no"}
    assert facts["cpu"] == (f"{model_name()}, {os.cpu_count()} cores, AVX2 "
                            f"{yes['avx2' in flags()]}, AVX-512 {yes['avx512f' in flags()]}")
    assert facts["python"] == f"{platform.python_version()} ({sys.executable})"
    assert not mx.metal.is_available()                       # the test machine: no Metal
    assert facts["mlx"] == f"{mx.__version__}, backend cpu"
    assert facts["device"] == "cpu"
    assert facts["compute dtype"] == "float32 (model.dtype auto)"
    info = runtime.blas_info()                               # what runtime loaded
    assert facts["blas"] == info.status and info.name in info.status
    assert facts["blas library"] == (info.library or "none loaded (MLX links its own)")
    assert facts["blas core type"] == (info.core or "n/a")
    speed = re.fullmatch(r"(\d+\.\d) GFLOP/s \(float32 1024x1024 matmul on the CPU"
                         r"(, \d+ threads)?\)", facts["blas speed"])
    assert speed and float(speed.group(1)) > 0.5
    gxx = shutil.which("g++")
    compiler = facts["compiler for mx.compile's CPU kernels"]
    assert compiler.startswith(gxx + " (g++") if gxx else compiler == "none (no g++ on PATH)"
    assert facts["fast exp"].startswith("on" if fastexp.available() else "off (")
    assert facts["offline"] == "no (HF_HUB_OFFLINE unset, no --offline)"
    from huggingface_hub import constants
    assert facts["hf cache"] == str(constants.HF_HUB_CACHE)
    assert facts["macft cache"] == str(cache)
    kernels = {k: v for k, v in facts.items() if k.startswith("kernel ")}
    assert kernels == {
        f"kernel {name}.metal": "applies here: no (needs Metal); parity here: not checked"
        for name in ("attention", "cross_entropy", "qlora")}


def test_offline_json_and_a_cached_verdict(capsys, cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert doctor(capsys)["offline"] == "yes (HF_HUB_OFFLINE=1)"
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert doctor(capsys, "--offline")["offline"] == "yes (--offline)"
    # A kernel that can run here and failed its check: doctor names the failed case.
    from macft.kernels import attention as attn

    kernel = verify.DeviceKernel("attention.stand-in", "attention", "the CPU",
                                 lambda q, k, v, scale, causal, seg: q * 0, attn.tiled,
                                 verify.attention_cases, lambda: True)
    with verify.registered(kernel):
        found = verify.verdict(kernel)
        line = doctor(capsys)["kernel attention.stand-in"]
        capsys.readouterr()
        assert main(["doctor", "--json"]) == 0
        data = json.loads(capsys.readouterr().out)
    assert found.detail.startswith("case causal gqa d=64 float32: output differs by ")
    assert line == f"applies here: yes; parity here: failed ({found.detail}; {found.checked})"
    assert data["kernels"][0] == {"name": "attention.stand-in", "device": "the CPU",
                                  "applies": True, "verdict": "failed", "detail": found.detail,
                                  "checked": found.checked}
    assert data["device"] == "cpu" and data["backend"] == "cpu" and data["gflops"] > 0
    assert data["blas"] == runtime.blas_info().as_dict()


def test_the_command_in_a_fresh_process(tmp_path):
    env = dict(os.environ, MACFT_CACHE=str(tmp_path))
    out = subprocess.run([sys.executable, "-m", "macft", "doctor", "--json", "--offline"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["offline"] is True and data["macft_cache"] == str(tmp_path)
    assert [k["verdict"] for k in data["kernels"]] == ["not checked"] * 3
