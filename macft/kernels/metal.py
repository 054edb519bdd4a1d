"""Metal kernel sources as data: built with ``mx.fast.metal_kernel`` on a Mac, syntax-checked here.

Each kernel module declares its Metal kernels as ``MetalKernel`` values in a module-level list
``METAL_KERNELS``. ``build`` turns one into MLX's callable (only where Metal is available);
``syntax_unit`` wraps the body in a C++ function whose parameters carry the declared types, so a
test can run clang in syntax-only mode over it against a small header of Metal types and
built-ins (tests/metal/metal_stub.h): typos and type errors are caught; Metal semantics are not.
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
    attributes: extra attribute variables for the syntax check; the ones MLX declares itself
    (``ATTRIBUTES``, e.g. thread_position_in_grid) are found in the body automatically.
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
        """A C++ translation unit shaped like the source MLX generates: template parameters as
        aliases and constants, the header, then the body as a function whose parameters are
        the declared inputs and outputs, plus, as MLX adds them when the body names them, each
        input's ``_shape``/``_strides``/``_ndim`` and the thread attributes."""
        lines = [_template_line(n, v) for n, v in self.templates]
        params = []
        for n, t in self.inputs:
            params.append(f"{t} {n}")
            params += [f"{t2} {n}{suffix}" for suffix, t2 in SHAPE_PARAMS
                       if f"{n}{suffix}" in self.source]
        params += [f"{t} {n}" for n, t in self.outputs]
        declared = {n for n, _ in self.attributes}
        attrs = [*self.attributes,
                 *((n, t) for n, t in ATTRIBUTES if n in self.source and n not in declared)]
        body = "\n".join(f"  {t} {n} = {{}};" for n, t in attrs)
        return "\n".join([*lines, self.header, f"void {self.name}({', '.join(params)}) {{",
                          body, self.source, "}", ""])


# What MLX's generated signature adds for an input ``x`` whose name+suffix the body mentions.
SHAPE_PARAMS = (("_shape", "const constant int*"), ("_strides", "const constant size_t*"),
                ("_ndim", "const constant int&"))

# The thread attributes MLX declares when the body names them (mlx/fast.cpp, metal_kernel).
ATTRIBUTES = (
    ("dispatch_quadgroups_per_threadgroup", "uint"),
    ("dispatch_simdgroups_per_threadgroup", "uint"),
    ("dispatch_threads_per_threadgroup", "uint3"), ("grid_origin", "uint3"), ("grid_size", "uint3"),
    ("quadgroup_index_in_threadgroup", "uint"), ("quadgroups_per_threadgroup", "uint"),
    ("simdgroup_index_in_threadgroup", "uint"), ("simdgroups_per_threadgroup", "uint"),
    ("thread_execution_width", "uint"), ("thread_index_in_quadgroup", "uint"),
    ("thread_index_in_simdgroup", "uint"), ("thread_index_in_threadgroup", "uint"),
    ("thread_position_in_grid", "uint3"), ("thread_position_in_threadgroup", "uint3"),
    ("threadgroup_position_in_grid", "uint3"), ("threadgroups_per_grid", "uint3"),
    ("threads_per_grid", "uint3"), ("threads_per_simdgroup", "uint"),
    ("threads_per_threadgroup", "uint3"),
)


def _template_line(name: str, value: str) -> str:
    if value in ("true", "false"):
        return f"constexpr bool {name} = {value};"
    if value.lstrip("-").isdigit():
        return f"constexpr int {name} = {value};"
    return f"using {name} = {value};"


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
