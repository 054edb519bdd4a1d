"""Prepare a loaded model for a method (lora, dora, qlora, full) and save/load its adapters.

Adapters use mlx-lm's own LoRA/DoRA layers and file format (``adapters.safetensors`` plus
``adapter_config.json``), so ``mlx_lm.generate --adapter-path RUN`` loads them as well.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from macft import runs
from macft.errors import MacftError
from macft.models import quantized
from macft.recipe import Recipe

from mlx_lm.models.switch_layers import QuantizedSwitchLinear, SwitchLinear

# SwitchLinear: a mixture of experts' stacked expert matrices (LoRA per expert, mlx-lm's
# LoRASwitchLinear), so "all" reaches the experts too.
LINEAR_TYPES = (nn.Linear, nn.QuantizedLinear, SwitchLinear, QuantizedSwitchLinear)


def linear_keys(model: nn.Module) -> list[str]:
    """Paths (relative to a transformer block) of every linear layer in attention and MLP."""
    keys: set[str] = set()
    for block in model.layers:
        for path, module in block.named_modules():
            if isinstance(module, LINEAR_TYPES) and path:
                keys.add(path)
    return sorted(keys)


def target_keys(model: nn.Module, targets: list[str]) -> list[str]:
    available = linear_keys(model)
    if "all" in targets:
        return available
    chosen = []
    for t in targets:
        hits = [k for k in available if k == t or k.rsplit(".", 1)[-1] == t]
        if not hits:
            names = sorted({k.rsplit('.', 1)[-1] for k in available})
            raise MacftError(f"recipe: key 'lora.targets': no linear layer named '{t}' "
                             f"(available: {', '.join(names)})")
        chosen += hits
    return sorted(set(chosen))


def lora_parameters(recipe: Recipe, model: nn.Module) -> dict:
    spec = recipe.lora
    return {"rank": spec.rank, "scale": spec.alpha / spec.rank, "dropout": spec.dropout,
            "keys": target_keys(model, list(spec.targets))}


def adapter_config(recipe: Recipe, model: nn.Module, base: str) -> dict:
    method = recipe.method
    return {
        "fine_tune_type": {"qlora": "lora"}.get(method, method),
        "num_layers": len(model.layers) if recipe.lora.layers < 0 else recipe.lora.layers,
        "lora_parameters": lora_parameters(recipe, model),
        "model": base,
        "macft_method": method,
    }


def prepare(model: nn.Module, recipe: Recipe, seed: int) -> dict:
    """Quantize (qlora), dequantize (full on a quantized base), attach adapters, set trainable.

    Returns the adapter config that is saved beside the weights.
    """
    mx.random.seed(seed)  # LoRA A matrices are random: same seed, same start
    method = recipe.method
    if method == "qlora" and not quantized.is_quantized(model):
        quantized.quantize(model, recipe.quantize.bits, recipe.quantize.group_size)
        quantized.use_fast_quantized(model)
    if method == "full":
        if quantized.is_quantized(model):
            from mlx_lm.utils import dequantize_model

            dequantize_model(model)
        model.unfreeze()
        return adapter_config(recipe, model, "")
    config = adapter_config(recipe, model, "")
    apply_adapters(model, config)
    return config


def apply_adapters(model: nn.Module, config: dict) -> None:
    from mlx_lm.tuner.utils import linear_to_lora_layers

    model.freeze()
    linear_to_lora_layers(model, config["num_layers"], config["lora_parameters"],
                          use_dora=config["fine_tune_type"] == "dora")
    quantized.use_qlora_kernels(model)     # LoRA over a quantized base: one op, own VJP
    mx.eval(model.parameters())


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters, counting a quantized weight by its logical size."""
    trainable = sum(v.size for _, v in tree_flatten(model.trainable_parameters()))
    total = 0
    for _, module in model.named_modules():
        bits = getattr(module, "bits", None)
        for name, value in module.items():
            if not isinstance(value, mx.array) or name.startswith("_"):
                continue
            if bits and name in ("scales", "biases"):
                continue
            total += value.size * (32 // bits if bits and name == "weight" else 1)
    return trainable, total


def save_adapters(model: nn.Module, folder: Path, config: dict) -> Path:
    """Write ``adapters.safetensors`` and ``adapter_config.json`` into ``folder``, atomically."""
    folder.mkdir(parents=True, exist_ok=True)
    weights = dict(tree_flatten(model.trainable_parameters()))
    with runs.atomic_path(folder / runs.ADAPTERS) as tmp:
        mx.save_safetensors(str(tmp), weights)
    runs.atomic_write(folder / runs.ADAPTER_CONFIG, json.dumps(config, indent=2))
    return folder / runs.ADAPTERS


def load_adapter_weights(model: nn.Module, folder: Path) -> None:
    path = folder / runs.ADAPTERS
    if not path.exists():
        raise MacftError(f"{path}: adapter weights not found")
    model.load_weights(str(path), strict=False)
    mx.eval(model.parameters())


_BYPASS: dict[type, type] = {}


def _bypass_class(cls: type) -> type:
    if cls not in _BYPASS:
        _BYPASS[cls] = type(f"Bypassed{cls.__name__}", (cls,),
                            {"__call__": lambda self, x: self.linear(x)})
    return _BYPASS[cls]


@contextlib.contextmanager
def disabled(model: nn.Module):
    """Within this block the adapters are switched off: the model computes its base.

    Used for the reference of preference evaluation, without a second copy of the weights.
    """
    swapped = []
    for _, module in model.named_modules():
        if hasattr(module, "lora_a") and hasattr(module, "linear"):
            swapped.append((module, type(module)))
            module.__class__ = _bypass_class(type(module))
    try:
        yield model
    finally:
        for module, cls in swapped:
            module.__class__ = cls
