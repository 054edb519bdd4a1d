"""Write an mlx-lm model (fused, float or MLX-quantized) as a GGUF file, tensor by tensor.

The tensor table is planned first (names, shapes, types, byte sizes), so the header can be
written before any data; each tensor is then converted and written on its own, and no second
full copy of the model ever exists. Names come from the importer's map
(``gguf.reader.gguf_name``), llama's Q/K rows get llama.cpp's permutation
(``gguf.reader.permute_rows``), 4-bit MLX weights become Q4_1 blocks without rounding again
when the values allow (``quants.affine_exact``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import gguf
import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten

from macft import runs
from macft.errors import MacftError
from macft.export import quants
from macft.export.quant_plan import QUANTS, Quant, tensor_type
from macft.gguf import metadata, vocab
from macft.gguf.reader import gguf_name, llama3_rope_factors, permute_rows

T = gguf.GGMLQuantizationType
FLOAT_TYPES = frozenset({T.F32, T.F16, T.BF16})


@dataclass
class Planned:
    name: str                       # GGUF name
    shape: tuple[int, ...]          # logical shape, numpy order
    qtype: T
    make: Callable[[], tuple[np.ndarray, bool]] = field(repr=False)   # (data, exact)


@dataclass
class Written:
    path: Path
    quant: Quant
    types: dict[str, T]             # GGUF name -> type written
    rounded: set[T]                 # block types that rounded float values (not exact copies)
    nbytes: int


def _source_tensors(model: nn.Module):
    """(hf name, float array or None, quantized parts or None) for every weight and bias."""
    params = dict(tree_flatten(model.parameters()))
    modules = dict(model.named_modules())
    for key, value in params.items():
        path, _, leaf = key.rpartition(".")
        module = modules.get(path)
        # Quantized linears, embeddings and mlx-lm's stacked-expert QuantizedSwitchLinear.
        if module is not None and "scales" in module and hasattr(module, "bits") \
                and leaf != "bias":
            if leaf != "weight":
                continue                               # scales/biases travel with their weight
            parts = (value, module["scales"], module.get("biases"), module.bits,
                     module.group_size, getattr(module, "mode", "affine"))
            yield key, None, parts
        else:
            yield key, value, None


def _logical_shape(value, parts) -> tuple[int, ...]:
    if parts is None:
        return tuple(value.shape)
    weight, bits = parts[0], parts[3]
    return (*weight.shape[:-1], weight.shape[-1] * 32 // bits)


def _order(name: str) -> tuple:
    """llama.cpp's converter order: token_embd, blocks in layer order, output_norm, output."""
    m = re.match(r"blk\.(\d+)\.", name)
    if m:
        return (1, int(m.group(1)))
    return (0,) if name.startswith("token_embd") else (2, name != "output_norm.weight")


def plan(model: nn.Module, config: dict, quant: Quant) -> list[Planned]:
    arch = metadata.gguf_architecture(config)
    heads = int(config["num_attention_heads"])
    kv_heads = int(config.get("num_key_value_heads") or heads)
    n_layers = int(config["num_hidden_layers"])
    tied = not any(k.startswith("lm_head.") for k, _ in tree_flatten(model.parameters()))
    out = []
    for key, value, parts in _source_tensors(model):
        name = gguf_name(key, arch)
        if name is None:
            raise MacftError(f"GGUF export: parameter '{key}' has no GGUF name "
                             f"({config['model_type']})")
        rows_of = None
        if arch == "llama" and name.split(".")[-2] in ("attn_q", "attn_k"):
            rows_of = heads if ".attn_q." in name else kv_heads
        if arch == "gemma3" and name.endswith("norm.weight"):
            value = value.astype(mx.float32) + 1.0    # llama.cpp multiplies by the stored 1 + w
        shape = _logical_shape(value, parts)
        qtype = tensor_type(quant, name, shape, n_layers, tied)
        out.append(Planned(name, shape, qtype, _maker(value, parts, qtype, rows_of)))
    scaling = metadata.rope_scaling(config)
    if scaling and scaling["type"] == "llama3":
        factors = llama3_rope_factors(metadata.head_dim(config),
                                      float(config.get("rope_theta", 10000.0)), scaling)
        out.append(Planned("rope_freqs.weight", factors.shape, T.F32, lambda: (factors, True)))
    return sorted(out, key=lambda p: _order(p.name))


def _maker(value, parts, qtype: T, rows_of: int | None):
    """A function producing the tensor's stored data when it is its turn to be written."""
    def permuted(a: np.ndarray) -> np.ndarray:
        return permute_rows(a, rows_of) if rows_of else a

    def make():
        if parts is not None:
            weight, scales, biases, bits, group, mode = parts
            if mode == "affine" and biases is not None:
                exact = quants.affine_exact(
                    permuted(np.array(weight)), permuted(np.array(scales.astype(mx.float32))),
                    permuted(np.array(biases.astype(mx.float32))), bits, group, qtype)
                if exact is not None:
                    return exact, True
            floats = mx.dequantize(weight, scales, biases, group, bits, mode=mode)
        else:
            floats = value
        x = permuted(np.array(floats.astype(mx.float32)))
        data = quants.quantize(x, qtype)
        exact = qtype == T.F32 or (qtype == T.F16 and parts is None and value.dtype == mx.float16)
        return data, exact
    return make


def write_gguf(model: nn.Module, config: dict, tokenizer, out: str | Path, quant: str,
               name: str = "macft", tokenizer_gguf: Path | None = None,
               progress: Callable[[int, int, str], None] | None = None) -> Written:
    """Write ``model`` to ``out`` at ``quant`` (a ``QUANTS`` key); atomically (temp + rename).

    ``tokenizer_gguf``: copy the tokenizer keys from this GGUF file (the base the model was
    imported from) instead of deriving them from ``tokenizer``.
    """
    if quant not in QUANTS:
        raise MacftError(f"unknown --quant '{quant}' (choose from {', '.join(QUANTS)})")
    spec = QUANTS[quant]
    arch = metadata.gguf_architecture(config)
    planned = plan(model, config, spec)
    embd = next((p for p in planned if p.name == "token_embd.weight"), None)
    if embd is None:
        raise MacftError("GGUF export: the model has no token embedding")
    n_vocab = embd.shape[0]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with runs.atomic_path(out) as tmp:
        w = gguf.GGUFWriter(str(tmp), arch)
        try:
            quantized = any(p.qtype not in FLOAT_TYPES for p in planned)
            metadata.add_model_metadata(w, dict(config, vocab_size=n_vocab), name, spec.file_type,
                                        quantized)
            if tokenizer_gguf is not None:
                vocab.copy_gguf_tokenizer(w, Path(tokenizer_gguf), n_vocab,
                                          vocab.chat_template_of(tokenizer))
            else:
                vocab.add_hf_tokenizer(w, tokenizer, n_vocab)
            for p in planned:
                w.add_tensor_info(p.name, p.shape, np.dtype(np.float32),
                                  quants.nbytes(p.shape, p.qtype), raw_dtype=p.qtype)
            w.write_header_to_file()
            w.write_kv_data_to_file()
            w.write_ti_data_to_file()
            rounded: set[T] = set()
            for i, p in enumerate(planned):
                if progress:
                    progress(i, len(planned), p.name)
                data, exact = p.make()
                if not exact:
                    rounded.add(p.qtype)
                w.write_tensor_data(np.ascontiguousarray(data))
            w.close()
        finally:
            w.close()
    return Written(out, spec, {p.name: p.qtype for p in planned}, rounded, out.stat().st_size)
