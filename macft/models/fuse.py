"""Fuse a run's adapters into its base and save a Hugging Face folder that mlx_lm.load opens."""

from __future__ import annotations

import json
from pathlib import Path

import mlx.nn as nn
from mlx.utils import tree_unflatten

from macft.errors import MacftError

FUSED_MARK = "macft.json"      # in every folder save_folder wrote


def fuse_in_place(model: nn.Module, dequantize: bool = False) -> int:
    """Replace every LoRA/DoRA layer by its fused linear; return how many were fused.

    Over a quantized base the fused layer is re-quantized to the base's format, unless
    ``dequantize`` (GGUF export rounds the float result once, straight into its own type).
    """
    fused = [(name, module.fuse(dequantize=dequantize)) for name, module in model.named_modules()
             if hasattr(module, "fuse") and hasattr(module, "lora_a")]
    if fused:
        model.update_modules(tree_unflatten(fused))
    return len(fused)


def _quantization_config(model: nn.Module) -> dict | None:
    """mlx-lm's per-model quantization block, with per-layer entries where they differ."""
    layers = [(name, m) for name, m in model.named_modules()
              if isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding))]
    if not layers:
        return None
    counts: dict[tuple[int, int], int] = {}
    for _, m in layers:
        counts[(m.group_size, m.bits)] = counts.get((m.group_size, m.bits), 0) + 1
    group, bits = max(counts, key=counts.get)
    config: dict = {"group_size": group, "bits": bits}
    for name, m in layers:
        if (m.group_size, m.bits) != (group, bits):
            config[name] = {"group_size": m.group_size, "bits": m.bits}
    return config


def save_folder(model: nn.Module, tokenizer, config: dict, out: Path,
                force: bool = False) -> Path:
    """Write the fused model as a Hugging Face folder. It is written into a temporary folder
    beside ``out`` and renamed when complete, so a failure (a full disk) leaves no half model
    under the final name and the same command can simply be run again. ``force`` replaces a
    folder macft fused before (one with its ``macft.json``), never any other."""
    from macft import runs

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not force:
            raise MacftError(f"{out}: output folder exists and is not empty")
        if not (out / FUSED_MARK).is_file():
            raise MacftError(f"{out}: not a folder macft fused (no {FUSED_MARK}); not "
                             "replacing it, choose another folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    config = dict(config)
    config.pop("quantization_config", None)
    quant = _quantization_config(model)
    if quant:
        config["quantization"] = quant
    else:
        config.pop("quantization", None)
    with runs.atomic_path(out) as tmp:
        tmp.mkdir()
        _write_folder(model, tokenizer, config, tmp)
    return out


def _write_folder(model: nn.Module, tokenizer, config: dict, folder: Path) -> None:
    from mlx_lm.utils import save_config, save_model

    save_model(folder, model, donate_model=False)
    save_config(config, folder / "config.json")
    tok = getattr(tokenizer, "_tokenizer", tokenizer)
    tok.save_pretrained(str(folder))
    (folder / FUSED_MARK).write_text(json.dumps({"fused_from": "macft"}, indent=2))
