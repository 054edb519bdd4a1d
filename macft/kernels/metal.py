"""Metal kernel sources as data: built with ``mx.fast.metal_kernel`` on a Mac, syntax-checked here.

Each kernel module declares its Metal kernels as ``MetalKernel`` values in a module-level list
``METAL_KERNELS``. ``build`` turns one into MLX's callable (only where Metal is available);
``syntax_unit`` wraps the body in a C++ function whose parameters carry the declared types, so a
test can run clang in syntax-only mode over it against a small header of Metal types and
built-ins (typos and type errors are caught; Metal semantics are not).
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass

import mlx.core as mx

# The kernel modules that declare METAL_KERNELS.
MODULES = ("macft.kernels.attention", "macft.kernels.cross_entropy", "macft.kernels.qmatmul")


@dataclass(frozen=True)
class MetalKernel:
    """One ``mx.fast.metal_kernel``.

    inputs/outputs: (name, Metal parameter type) in call order, e.g.
    ("q", "const device float*"), ("out", "device float*"); scalars as ("n", "const constant int&").
    templates: (name, value used for the syntax check), e.g. ("T", "float"), ("D", "64").
    attributes: Metal attribute variables the body uses, e.g.
    ("thread_position_in_grid", "uint3"), ("simd_lane_id", "uint").
    """

    name: str
    inputs: tuple[tuple[str, str], ...]
    outputs: tuple[tuple[str, str], ...]
    source: str
    header: str = ""
    templates: tuple[tuple[str, str], ...] = ()
    attributes: tuple[tuple[str, str], ...] = ()

    def build(self):
        return _build(self)

    def syntax_unit(self) -> str:
        """A C++ translation unit: template aliases, the header, then the body as a function."""
        lines = [f"using {n} = {v};" if not v.lstrip("-").isdigit()
                 else f"constexpr int {n} = {v};" for n, v in self.templates]
        params = ", ".join(f"{t} {n}" for n, t in (*self.inputs, *self.outputs))
        attrs = "\n".join(f"  {t} {n} = {{}};" for n, t in self.attributes)
        return "\n".join([*lines, self.header,
                          f"void {self.name}({params}) {{", attrs, self.source, "}", ""])


@functools.cache
def _build(kernel: MetalKernel):
    return mx.fast.metal_kernel(
        name=kernel.name,
        input_names=[n for n, _ in kernel.inputs],
        output_names=[n for n, _ in kernel.outputs],
        source=kernel.source,
        header=kernel.header,
    )


def available() -> bool:
    return mx.metal.is_available()


def all_kernels() -> list[MetalKernel]:
    found = []
    for name in MODULES:
        module = importlib.import_module(name)
        found.extend(getattr(module, "METAL_KERNELS", []))
    return found
