"""The ``MACFT_*`` environment switches, one table (shown by ``macft options`` and the README).

Every module reads its switch through ``get`` so that a switch exists only once, here, with its
default and its meaning.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Switch:
    name: str
    default: str
    help: str


SWITCHES = {s.name: s for s in (
    Switch("MACFT_DEBUG", "0", "1: errors show their traceback (as --debug)"),
    Switch("MACFT_BLAS", "", "0: MLX's reference BLAS; a path: that OpenBLAS library "
           "(refused in one line if it cannot run here)"),
    Switch("MACFT_BLAS_PROBE_PREFIX", "", "a command the BLAS probe runs under (tests use an "
           "emulated CPU)"),
    Switch("MACFT_CACHE", "", "the user cache folder (default $XDG_CACHE_HOME/macft)"),
    Switch("MACFT_FAST_EXP", "1", "0: the compiled fast exp is never used (MLX's exp instead)"),
    Switch("MACFT_DECODE_THREADS", "1", "OpenBLAS threads while generating (rollouts, eval, "
           "samples); 0: as many as for training"),
    Switch("MACFT_DEQUANT_CACHE_MB", "4096", "float copies of frozen quantized weights kept on "
           "the CPU, in MB"),
    Switch("MACFT_DIST_TIMEOUT", "900", "seconds without a finished step before a rank of a "
           "distributed run gives up on its peers"),
    Switch("MACFT_DEBUG_KILL_AFTER_STEP", "0", "test hook: the run kills itself (SIGKILL) after "
           "this step, like a power cut"),
    Switch("MACFT_DEBUG_SIGNAL_AFTER_STEP", "", "test hook: STEP:SIGNAL (e.g. 5:SIGTERM): the run "
           "sends itself that signal after this step, as a user or a service manager would"),
)}


def get(name: str) -> str:
    """The switch's value (its default when unset or empty)."""
    return os.environ.get(name) or SWITCHES[name].default


def table(markdown: bool = False) -> list[str]:
    if markdown:
        return ["| variable | default | meaning |", "| --- | --- | --- |"] + [
            f"| `{s.name}` | `{s.default}` | {s.help} |" for s in SWITCHES.values()]
    width = max(map(len, SWITCHES))
    return [f"{s.name.ljust(width)}  {s.default!r:>8}  {s.help}" for s in SWITCHES.values()]
