"""A run's LoRA adapter alone as the GGUF that llama.cpp loads with ``--lora``.

llama.cpp applies ``W x + (alpha / rank) * B (A x)`` with ``<name>.weight.lora_a`` of numpy
shape (rank, in) and ``.lora_b`` of shape (out, rank); mlx-lm keeps ``lora_a`` as (in, rank)
and ``lora_b`` as (rank, out) with ``scale`` = alpha / rank, so both are transposed. For the
llama architecture B's rows get the same permutation as the base's Q/K rows.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx_lm.tuner.lora import LoRASwitchLinear

from macft import runs
from macft.errors import MacftError
from macft.gguf import metadata
from macft.gguf.reader import gguf_name, permute_rows


def lora_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    found = [(path, m) for path, m in model.named_modules()
             if hasattr(m, "lora_a") and hasattr(m, "lora_b")]
    for path, m in found:
        if "m" in m:                                   # mlx-lm's DoRA magnitude vector
            raise MacftError("DoRA adapters have no llama.cpp LoRA equivalent; export the fused "
                             "model with --gguf instead")
        if isinstance(m, LoRASwitchLinear):
            raise MacftError(f"layer '{path}': LoRA on mixture-of-experts layers is not "
                             "written as a llama.cpp adapter; export the fused model with --gguf")
    return found


def write_lora_gguf(model: nn.Module, config: dict, out: str | Path,
                    name: str = "macft-lora") -> Path:
    arch = metadata.gguf_architecture(config)
    layers = lora_layers(model)
    if not layers:
        raise MacftError("the model has no LoRA layers to export (a full fine-tune? use --gguf)")
    heads = int(config["num_attention_heads"])
    kv_heads = int(config.get("num_key_value_heads") or heads)
    rank = int(layers[0][1].lora_a.shape[1])
    alpha = float(layers[0][1].scale) * rank
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with runs.atomic_path(out) as tmp:
        w = gguf.GGUFWriter(str(tmp), arch)
        try:
            w.add_type(gguf.GGUFType.ADAPTER)
            w.add_name(name)
            w.add_string(gguf.Keys.Adapter.TYPE, "lora")
            w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
            for path, m in layers:
                base = gguf_name(f"{path}.weight", arch)
                if base is None:
                    raise MacftError(f"GGUF adapter: layer '{path}' has no GGUF name")
                a = np.array(m.lora_a.astype(mx.float32)).T              # (rank, in)
                b = np.array(m.lora_b.astype(mx.float32)).T              # (out, rank)
                # llama.cpp has one alpha per file: fold a layer's own scale into its B.
                b = b * np.float32(float(m.scale) * a.shape[0] / alpha)
                if arch == "llama" and base.split(".")[2] in ("attn_q", "attn_k"):
                    b = permute_rows(b, heads if ".attn_q." in base else kv_heads)
                w.add_tensor(f"{base}.lora_a", np.ascontiguousarray(a))
                w.add_tensor(f"{base}.lora_b", np.ascontiguousarray(b))
            w.write_header_to_file()
            w.write_kv_data_to_file()
            w.write_tensors_to_file()
            w.close()
        finally:
            w.close()
    return out
