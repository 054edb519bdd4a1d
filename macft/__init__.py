"""macft: local fine-tuning of small language models with MLX."""

from macft import runtime as _runtime

# The faster BLAS must be in the process before MLX is first imported.
_runtime.preload_blas()

__version__ = "0.1.0"
