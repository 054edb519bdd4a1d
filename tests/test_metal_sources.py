"""Every Metal kernel body parses and type-checks as C++ against tests/metal/metal_stub.h.

clang comes from the ``libclang`` wheel (the ``test`` extra): its ``clang.cindex`` parses a
translation unit in memory with libclang's own built-in headers, no system compiler needed.
This catches typos, undeclared names and type errors in the kernel sources on a machine
without Metal; it does not check Metal semantics (address spaces, barriers, simdgroups).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from macft.kernels import metal

cindex = pytest.importorskip("clang.cindex", reason="libclang (the test extra) is not installed")

STUB = Path(__file__).parent / "metal" / "metal_stub.h"
ARGS = ["-x", "c++", "-std=c++17", "-fsyntax-only", "-nostdinc", "-nostdinc++",
        "-Wno-unused-variable", "-Wno-unused-parameter", "-include", str(STUB)]


def errors(source: str) -> list[str]:
    """clang's error diagnostics for one translation unit (warnings are left out)."""
    index = cindex.Index.create()
    unit = index.parse("kernel.cpp", args=ARGS, unsaved_files=[("kernel.cpp", source)])
    return [f"{d.location.line}:{d.location.column}: {d.spelling}" for d in unit.diagnostics
            if d.severity >= cindex.Diagnostic.Error]


KERNELS = metal.all_kernels()


def test_every_kernel_module_declares_its_kernels():
    names = {k.name for k in KERNELS}
    assert {"macft_attn_forward", "macft_attn_backward_dq", "macft_attn_backward_dkv",
            "macft_ce_forward", "macft_ce_backward", "macft_qlora_forward",
            "macft_qlora_input_grad"} <= names
    assert len(names) == len(KERNELS)               # MLX caches kernels by name


def variants(kernel):
    """The kernel as declared, then with each other compute dtype (and 8-bit where BITS is a
    template): the body must type-check for every instantiation the dispatchers use."""
    yield kernel
    names = dict(kernel.templates)
    for dtype in ("half", "bfloat16_t"):
        if "T" in names:
            yield dataclasses.replace(kernel, templates=tuple(
                (n, dtype if n == "T" else v) for n, v in kernel.templates))
    if "D" in names:       # attention: every head dim, causal or not, packed or not
        for d, causal, seg in (("80", "false", "true"), ("96", "true", "true"),
                               ("128", "false", "false")):
            yield dataclasses.replace(kernel, templates=tuple(
                (n, {"D": d, "CAUSAL": causal, "HAS_SEG": seg}.get(n, v))
                for n, v in kernel.templates))
    if "BITS" in names:
        yield dataclasses.replace(kernel, templates=tuple(
            (n, {"BITS": "8", "GS": "32"}.get(n, v)) for n, v in kernel.templates))


@pytest.mark.parametrize("kernel", KERNELS, ids=[k.name for k in KERNELS])
def test_kernel_source_compiles(kernel):
    for variant in variants(kernel):
        unit = variant.syntax_unit()
        assert errors(unit) == [], unit


def test_the_check_catches_a_type_error():
    # A pointer assigned to a float: valid-looking Metal, rejected by the type checker.
    ce = next(k for k in KERNELS if k.name == "macft_ce_backward")
    broken = dataclasses.replace(ce, source=ce.source.replace(
        "float p = metal::exp(float(logits[i]) - lse[row]);",
        "float p = metal::exp(float(logits[i]) - lse);"))
    assert broken.source != ce.source
    found = errors(broken.syntax_unit())
    assert len(found) == 1
    assert "invalid operands" in found[0] or "cannot initialize" in found[0], found


def test_the_check_catches_a_misspelt_builtin_and_attribute():
    qf = next(k for k in KERNELS if k.name == "macft_qlora_forward")
    broken = dataclasses.replace(qf, source=qf.source.replace("simd_sum(acc)", "simd_summ(acc)"))
    assert any("simd_summ" in e for e in errors(broken.syntax_unit()))
    broken = dataclasses.replace(qf, source=qf.source.replace("x_shape[1]", "x_shape_[1]"))
    assert any("x_shape_" in e for e in errors(broken.syntax_unit()))


def test_the_check_catches_a_type_used_as_a_length():
    # The template type T used where a length belongs (a real slip while writing these).
    fwd = next(k for k in KERNELS if k.name == "macft_attn_forward")
    broken = dataclasses.replace(fwd, source=fwd.source.replace("int end = CAUSAL ? metal::min(NK",
                                                                "int end = CAUSAL ? metal::min(T"))
    assert broken.source != fwd.source
    assert errors(broken.syntax_unit()) != []


def test_syntax_unit_declares_what_mlx_generates():
    unit = next(k for k in KERNELS if k.name == "macft_qlora_forward").syntax_unit()
    # Template values become aliases/constants; shapes only for inputs whose body reads them.
    assert "using T = float;" in unit and "constexpr int BITS = 4;" in unit
    assert "const constant int* x_shape" in unit and "const constant int* w_shape" in unit
    assert "biases_shape" not in unit
    assert "  uint3 thread_position_in_grid = {};" in unit
    assert "threadgroup_position_in_grid" not in unit
