"""Which GGUF type each tensor gets for an ``--quant`` choice (llama.cpp's conventions).

As llama-quantize does by default: 1-D tensors stay F32; the output matrix (or the token
embedding when it is tied to the output) gets Q6_K for the 4/5-bit and K types; ``q4_k_m``
gives Q6_K to attn_v and ffn_down in the layers llama.cpp's ``use_more_bits`` picks; a row
that does not split into whole blocks falls back the way llama.cpp falls back (Q4_K -> Q5_0,
Q6_K -> Q8_0), then to F16.
"""

from __future__ import annotations

from dataclasses import dataclass

from gguf import GGMLQuantizationType, LlamaFileType

from macft.export.quants import fits

T = GGMLQuantizationType
F = LlamaFileType


@dataclass(frozen=True)
class Quant:
    name: str
    file_type: LlamaFileType
    matrix: GGMLQuantizationType            # every 2-D weight, unless a rule below says otherwise
    output: GGMLQuantizationType            # output.weight, or token_embd.weight when tied
    more_bits: GGMLQuantizationType | None = None    # attn_v / ffn_down in use_more_bits layers
    help: str = ""


QUANTS = {q.name: q for q in (
    Quant("f32", F.ALL_F32, T.F32, T.F32, help="32-bit floats (exact)"),
    Quant("f16", F.MOSTLY_F16, T.F16, T.F16, help="16-bit floats"),
    Quant("bf16", F.MOSTLY_BF16, T.BF16, T.BF16, help="bfloat16"),
    Quant("q8_0", F.MOSTLY_Q8_0, T.Q8_0, T.Q8_0, help="8-bit, blocks of 32"),
    Quant("q4_0", F.MOSTLY_Q4_0, T.Q4_0, T.Q6_K, help="4-bit symmetric, blocks of 32"),
    Quant("q4_1", F.MOSTLY_Q4_1, T.Q4_1, T.Q6_K,
          help="4-bit with minimum, blocks of 32 (exact from MLX 4-bit group 32)"),
    Quant("q5_0", F.MOSTLY_Q5_0, T.Q5_0, T.Q6_K, help="5-bit symmetric, blocks of 32"),
    Quant("q5_1", F.MOSTLY_Q5_1, T.Q5_1, T.Q6_K, help="5-bit with minimum, blocks of 32"),
    Quant("q4_k", F.MOSTLY_Q4_K_S, T.Q4_K, T.Q6_K, help="4-bit K-quant everywhere"),
    Quant("q6_k", F.MOSTLY_Q6_K, T.Q6_K, T.Q6_K, help="6-bit K-quant"),
    Quant("q4_k_m", F.MOSTLY_Q4_K_M, T.Q4_K, T.Q6_K, more_bits=T.Q6_K,
          help="llama.cpp's Q4_K_M mix (Q6_K for output, some attn_v and ffn_down)"),
)}

# What llama.cpp writes when a K-quant does not fit the row length.
_FALLBACK = {T.Q4_K: T.Q5_0, T.Q5_K: T.Q5_1, T.Q6_K: T.Q8_0}


def use_more_bits(layer: int, n_layers: int) -> bool:
    """llama.cpp's choice of layers that get more bits in the _M mixes."""
    eighth = n_layers // 8
    return layer < eighth or layer >= 7 * n_layers // 8 or (layer - eighth) % 3 == 2


def tensor_type(quant: Quant, name: str, shape: tuple[int, ...], n_layers: int,
                tied: bool) -> GGMLQuantizationType:
    """The GGUF type of tensor ``name`` (GGUF naming) with numpy ``shape``."""
    parts = name.split(".")
    if len(shape) < 2 or not name.endswith(".weight") or parts[-2] == "ffn_gate_inp":
        return T.F32                                 # llama.cpp never quantizes MoE routers
    if name == "output.weight" or (tied and name == "token_embd.weight"):
        qtype = quant.output
    elif quant.more_bits and parts[0] == "blk" and parts[2] in ("attn_v", "ffn_down",
                                                                "ffn_down_exps") \
            and use_more_bits(int(parts[1]), n_layers):
        qtype = quant.more_bits
    else:
        qtype = quant.matrix
    cols = shape[-1]
    while not fits(cols, qtype):
        qtype = _FALLBACK.get(qtype, T.F16)
    return qtype
