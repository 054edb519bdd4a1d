"""The files each app of ``targets.APPS`` needs: where its GGUF goes and what lies beside it."""

from __future__ import annotations

import re
from pathlib import Path

from macft.export import ollama as ollama_mod
from macft.runs import atomic_write


def model_name(name: str) -> str:
    """A name Ollama accepts and LM Studio shows: lower case, letters, digits, - _ ."""
    return re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-.") or "macft"


def ollama_outputs(name: str, quant: str, folder: Path) -> list[Path]:
    return [folder / f"{model_name(name)}.gguf", folder / "Modelfile"]


def ollama(tokenizer, name: str, quant: str, folder: Path, force: bool):
    from macft.export.pipeline import refuse_overwrite

    gguf, modelfile = ollama_outputs(name, quant, folder)
    name = model_name(name)
    refuse_overwrite([gguf, modelfile], force)
    spec = ollama_mod.modelfile(tokenizer, gguf.name)   # before the slow part: may refuse

    def finish() -> list[str]:
        atomic_write(modelfile, spec.text())
        stops = ", ".join(spec.stops)
        return [f"wrote {modelfile} ({spec.format.name} turns, stops {stops})",
                f"load it into Ollama: {ollama_mod.create_line(name, folder)}"]

    folder.mkdir(parents=True, exist_ok=True)
    return str(gguf), finish


def lmstudio_outputs(name: str, quant: str, folder: Path) -> list[Path]:
    """LM Studio lists models as publisher/model/file.gguf under its models folder."""
    name = model_name(name)
    return [folder / "macft" / name / f"{name}-{quant}.gguf"]


def lmstudio(tokenizer, name: str, quant: str, folder: Path, force: bool):
    from macft.export.pipeline import refuse_overwrite

    [gguf] = lmstudio_outputs(name, quant, folder)
    name = model_name(name)
    refuse_overwrite([gguf], force)
    gguf.parent.mkdir(parents=True, exist_ok=True)

    def finish() -> list[str]:
        return [f"LM Studio lists it as macft/{name} when {folder} is its models folder "
                "(My Models > models directory)"]

    return str(gguf), finish
