"""What one run changes in the process, undone when it ends (completed, failed or stopped).

The TUI's second run, ``macft plan``'s measurements, ``run --memory-budget --force`` and the
tests share one process, so a run must not leave behind what it set: the kernel mode, the
fast-exp switch, float copies counted against the dequantize cache's budget, or gradient
checkpointing. mlx-lm's ``grad_checkpoint(layer)`` patches ``type(layer).__call__``, i.e. every
instance of the class for the rest of the process; here each layer *instance* of this run's
model gets a per-run subclass, and gets its own class back at the end.
"""

from __future__ import annotations

import contextlib

import mlx.core as mx
import mlx.nn as nn

from macft import kernels
from macft.kernels import fastexp
from macft.models import quantized


def checkpointed_class(cls: type) -> type:
    """A subclass of ``cls`` whose forward pass is recomputed in the backward pass (its
    activations are not kept); parameters, names and everything else are ``cls``'s."""

    def __call__(self, *args, **kwargs):
        def forward(params, *args, **kwargs):
            self.update(params)         # the traced parameters flow into the recomputation
            return cls.__call__(self, *args, **kwargs)

        return mx.checkpoint(forward)(self.trainable_parameters(), *args, **kwargs)

    name = f"Checkpointed{cls.__name__}"
    return type(name, (cls,), {"__call__": __call__, "__qualname__": name})


class RunScope:
    """Entered at a run's set-up; ``close`` (idempotent) restores what was there before."""

    def __init__(self, kernels_mode: str):
        self._stack = contextlib.ExitStack()
        self._stack.enter_context(kernels.using(kernels_mode))
        self._stack.enter_context(fastexp.enabled(False))   # the run turns it on where it fits

    def own_caches(self, model: nn.Module) -> None:
        """The float copies ``model`` makes in this run are dropped, and uncounted, at the end."""
        self._stack.callback(quantized.drop_caches, model)

    def checkpoint(self, layers) -> int:
        """Checkpoint these layer instances (not their class) until the run ends."""
        swapped: dict[type, type] = {}
        for layer in layers:
            cls = type(layer)
            if cls not in swapped:
                swapped[cls] = checkpointed_class(cls)
            layer.__class__ = swapped[cls]
            self._stack.callback(setattr, layer, "__class__", cls)
        return len(layers)

    def close(self) -> None:
        self._stack.close()
