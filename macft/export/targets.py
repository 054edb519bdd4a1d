"""Export targets, one table: what `macft export` and the TUI's export screen can write.

The CLI's options and the TUI's choices come from ``TARGETS``, ``APPS`` and the quant table
(``quant_plan.QUANTS``). A new target is one entry here and its writer in ``pipeline.export``
(an app: its file layout in ``export.apps``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Target:
    name: str
    flag: str               # the `macft export` option that names the output
    metavar: str
    help: str
    quantized: bool         # written in a --quant type
    argument: str = ""      # the ``pipeline.export`` argument naming the output
    label: str = ""         # the TUI's name for it
    verifiable: bool = True     # --verify checks it against llama.cpp


TARGETS = {t.name: t for t in (
    Target("hf", "--hf", "OUT_DIR", "the model, adapters fused, as a Hugging Face folder "
           "(mlx_lm.load opens it; the same as `macft fuse`)", quantized=False,
           argument="hf", label="HF folder", verifiable=False),
    Target("gguf", "--gguf", "OUT.gguf", "the model, adapters fused", quantized=True,
           argument="gguf", label="GGUF file"),
    Target("gguf-adapter", "--gguf-adapter", "OUT.gguf",
           "the LoRA adapter alone, for llama.cpp --lora", quantized=False,
           argument="adapter_gguf", label="adapter-only GGUF"),
)}

DEFAULT_QUANT = "f16"


@dataclass(frozen=True)
class App:
    """A program Mac users run models in: ``macft export RUN --to NAME DIR`` writes the GGUF
    where it looks, plus what it needs beside it (``export.apps``)."""
    name: str
    help: str
    label: str = ""         # the TUI's name for it

    def outputs(self, model_name: str, quant: str, folder: Path) -> list[Path]:
        """The files it writes into ``folder``, the GGUF first."""
        from macft.export import apps

        return getattr(apps, f"{self.name}_outputs")(model_name, quant, Path(folder))

    def prepare(self, tokenizer, model_name: str, quant: str, folder: Path, force: bool):
        """(the GGUF path to write, a callable that writes the rest and returns lines to say)."""
        from macft.export import apps

        return getattr(apps, self.name)(tokenizer, model_name, quant, folder, force)


APPS = {a.name: a for a in (
    App("ollama", "DIR/NAME.gguf and DIR/Modelfile (the chat template as Ollama's TEMPLATE, "
                  "its stop tokens); prints the `ollama create` line", label="Ollama folder"),
    App("lmstudio", "LM Studio's models folder layout: DIR/macft/NAME/NAME-QUANT.gguf",
        label="LM Studio folder"),
)}


def export_arguments(name: str, out: str) -> dict:
    """The ``pipeline.export`` arguments that write target or app ``name`` to ``out`` (what
    `macft export RUN --FLAG OUT` or `--to NAME OUT` passes)."""
    if name in APPS:
        return {"to": (name, out)}
    return {TARGETS[name].argument: out}


def quant_names() -> list[str]:
    from macft.export.quant_plan import QUANTS

    return list(QUANTS)


def fuse_to_folder(run: str | Path, out: str | Path, force: bool = False) -> tuple[int, Path]:
    """Merge a run's adapters into its base and save a Hugging Face folder: (layers, folder);
    ``force`` replaces a folder macft wrote before."""
    from macft import finite
    from macft.models.fuse import fuse_in_place, save_folder
    from macft.models.load import load_for_inference

    loaded, _ = load_for_inference(str(run))
    finite.check(loaded.model.parameters(), str(run))     # never write non-finite weights
    n = fuse_in_place(loaded.model)
    return n, save_folder(loaded.model, loaded.tokenizer, loaded.config, Path(out), force)
