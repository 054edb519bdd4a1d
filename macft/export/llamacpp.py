"""Open a GGUF in llama.cpp (through llama-cpp-python) with one-line errors.

The file is parsed by macft's own header reader first, so a truncated or corrupt file is
reported in one line before llama.cpp sees it (llama.cpp itself only says "failed to load").
"""

from __future__ import annotations

from pathlib import Path

from macft.errors import MacftError

INSTALL = "pip install 'macft[gguf]' (builds llama-cpp-python, 5-10 minutes)"


def available() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


def require():
    try:
        import llama_cpp
    except ImportError:
        raise MacftError(f"this needs llama-cpp-python: {INSTALL}") from None
    return llama_cpp


def yarn_settings(metadata: dict) -> dict:
    """llama-cpp-python passes YaRN's betas itself (32 and 1), which override the file's; the
    file's values, for ``Llama(...)``."""
    arch = metadata.get("general.architecture", "")
    if metadata.get(f"{arch}.rope.scaling.type") != "yarn":
        return {}
    out = {}
    for key in ("yarn_beta_fast", "yarn_beta_slow"):
        value = metadata.get(f"{arch}.rope.scaling.{key}")
        if value is not None:
            out[key] = float(value)
    return out


def open_gguf(path: str | Path, n_ctx: int = 2048, logits_all: bool = False,
              lora: str | Path | None = None, n_threads: int | None = None):
    """A ``llama_cpp.Llama`` for ``path`` (and optionally a LoRA adapter GGUF)."""
    from macft.gguf.reader import read_header

    path = Path(path)
    header = read_header(path)                           # one-line error on a broken file
    if header.metadata.get("general.type") == "adapter":
        raise MacftError(f"{path.name}: is a LoRA adapter; pass the base model and --lora")
    if lora is not None:
        read_header(lora)
    llama_cpp = require()
    kwargs = {"n_threads": n_threads} if n_threads else {}
    kwargs.update(yarn_settings(header.metadata))
    try:
        return llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, logits_all=logits_all,
                               lora_path=str(lora) if lora else None, verbose=False, **kwargs)
    except (ValueError, RuntimeError) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else "unknown reason"
        raise MacftError(f"{path.name}: llama.cpp could not load it ({detail})") from None
