"""Import a GGUF file as an mlx-lm model (quantized tensors stay quantized) plus its tokenizer.

Reading happens in three steps: ``read_header`` parses and checks the file's layout in Python
(so a truncated or corrupt file fails with one clear line before MLX touches it),
``read_tensors`` loads the data, and ``load_gguf`` renames the tensors to mlx-lm's Hugging Face
names, undoes llama.cpp's Q/K row permutation and builds the zoo model from the metadata.

MLX's own loader (``mx.load``) is used when every tensor is F32, F16, Q4_0, Q4_1 or Q8_0: those
arrive as MLX affine 4/8-bit, group 32, exactly. Other types (K-quants, BF16, Q5_x, ...) go
through gguf-py instead, because MLX 0.32 decodes Q4_K wrongly and fails on Q5_x.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from macft.errors import MacftError
from macft.gguf.architectures import IMPORTED

GROUP_SIZE = 32                     # the block size of Q4_0, Q4_1 and Q8_0

# ggml type ids (gguf.constants.GGMLQuantizationType) that MLX's loader turns into exact arrays.
F32, F16, Q4_0, Q4_1, Q8_0 = 0, 1, 2, 3, 8
MLX_EXACT = frozenset({F32, F16, Q4_0, Q4_1, Q8_0})

_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_BLOCK_NAMES = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    # Mixture of experts (mlx-lm's SwitchGLU), for export: the router and stacked experts.
    "ffn_gate_inp": "mlp.gate", "ffn_gate_exps": "mlp.switch_mlp.gate_proj",
    "ffn_up_exps": "mlp.switch_mlp.up_proj", "ffn_down_exps": "mlp.switch_mlp.down_proj",
}
_SUFFIXES = ("weight", "bias", "scales", "biases")


# ---------------------------------------------------------------------------------------------
# Header


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]      # numpy order (rows first): GGUF's dims reversed
    ggml_type: int
    offset: int                 # absolute position of the data in the file
    nbytes: int

    @property
    def type_name(self) -> str:
        return _type_name(self.ggml_type)


@dataclass(frozen=True)
class GGUFHeader:
    path: Path
    version: int
    metadata: dict = field(repr=False)
    tensors: dict[str, TensorInfo] = field(repr=False)

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))


class _Corrupt(Exception):
    """Raised inside the parser; ``read_header`` turns it into a one-line MacftError."""


def _type_name(ggml_type: int) -> str:
    from gguf import GGMLQuantizationType

    try:
        return GGMLQuantizationType(ggml_type).name
    except ValueError:
        return f"type {ggml_type}"


class _Cursor:
    """Reads little-endian GGUF values from a buffer, checking every read against its end."""

    _SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
                10: "<Q", 11: "<q", 12: "<d"}
    _NUMPY = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "<u1",
              10: "<u8", 11: "<i8", 12: "<f8"}

    def __init__(self, buf):
        self.buf = buf
        self.pos = 0

    def take(self, n: int) -> int:
        start = self.pos
        if n < 0 or start + n > len(self.buf):
            raise _Corrupt("header ends early")
        self.pos = start + n
        return start

    def scalar(self, fmt: str):
        return struct.unpack_from(fmt, self.buf, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        n = self.scalar("<Q")
        start = self.take(n)
        return bytes(self.buf[start:start + n]).decode("utf-8", errors="replace")

    def value(self, vtype: int):
        if vtype == 8:
            return self.string()
        if vtype == 9:
            return self.array()
        if vtype not in self._SCALARS:
            raise _Corrupt(f"unknown metadata value type {vtype}")
        return self.scalar(self._SCALARS[vtype])

    def array(self):
        etype, count = self.scalar("<I"), self.scalar("<Q")
        if etype == 8:
            return [self.string() for _ in range(count)]
        if etype == 9:
            return [self.array() for _ in range(count)]
        if etype not in self._NUMPY:
            raise _Corrupt(f"unknown metadata array type {etype}")
        dtype = np.dtype(self._NUMPY[etype])
        start = self.take(count * dtype.itemsize)
        out = np.frombuffer(self.buf, dtype=dtype, count=count, offset=start).copy()
        return out.astype(bool) if etype == 7 else out


def read_header(path: str | Path) -> GGUFHeader:
    """Parse metadata and tensor infos; check that every tensor lies inside the file."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    path = Path(path)
    name = path.name
    try:
        with open(path, "rb") as fh:
            size = fh.seek(0, 2)
            if size < 24:
                raise MacftError(f"{name}: not a GGUF file (too short: {size} bytes)")
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                return _parse(path, buf, size, GGML_QUANT_SIZES, GGMLQuantizationType)
    except FileNotFoundError:
        raise MacftError(f"{path}: GGUF file not found") from None
    except IsADirectoryError:
        raise MacftError(f"{path}: is a folder, not a GGUF file") from None
    except PermissionError:
        raise MacftError(f"{path}: permission denied") from None
    except _Corrupt as exc:
        raise MacftError(f"{name}: truncated or corrupt GGUF ({exc})") from None


def _parse(path: Path, buf, size: int, quant_sizes, qtypes) -> GGUFHeader:
    name = path.name
    if bytes(buf[:4]) != b"GGUF":
        raise MacftError(f"{name}: not a GGUF file (bad magic)")
    cur = _Cursor(buf)
    cur.take(4)
    version = cur.scalar("<I")
    if version not in (2, 3):
        hint = " (big-endian files are not supported)" if version >= 1 << 16 else ""
        raise MacftError(f"{name}: unsupported GGUF version {version}{hint}")
    n_tensors, n_kv = cur.scalar("<Q"), cur.scalar("<Q")
    if n_tensors > size // 24 or n_kv > size // 12:
        raise _Corrupt(f"implausible counts: {n_tensors} tensors, {n_kv} metadata keys")
    metadata = {}
    for _ in range(n_kv):
        key = cur.string()
        metadata[key] = cur.value(cur.scalar("<I"))
    infos = []
    for _ in range(n_tensors):
        tname = cur.string()
        n_dims = cur.scalar("<I")
        if n_dims > 8:
            raise _Corrupt(f"tensor '{tname}' has {n_dims} dimensions")
        dims = [cur.scalar("<Q") for _ in range(n_dims)]
        infos.append((tname, dims, cur.scalar("<I"), cur.scalar("<Q")))
    alignment = int(metadata.get("general.alignment", 32))
    if alignment <= 0 or alignment & (alignment - 1):
        raise _Corrupt(f"bad alignment {alignment}")
    data_start = -(-cur.pos // alignment) * alignment
    tensors = {}
    for tname, dims, ggml_type, offset in infos:
        try:
            block, type_size = quant_sizes[qtypes(ggml_type)]
        except (ValueError, KeyError):
            raise MacftError(f"{name}: tensor '{tname}' has unknown ggml type {ggml_type}") \
                from None
        count = int(np.prod(dims, dtype=np.uint64)) if dims else 1
        if dims and dims[0] % block:
            raise _Corrupt(f"tensor '{tname}': row of {dims[0]} is not a multiple of {block}")
        nbytes = count // block * type_size
        start = data_start + offset
        if start + nbytes > size:
            raise _Corrupt(f"tensor '{tname}' extends past the end of the file")
        tensors[tname] = TensorInfo(tname, tuple(int(d) for d in reversed(dims)), ggml_type,
                                    start, nbytes)
    return GGUFHeader(path, version, metadata, tensors)


# ---------------------------------------------------------------------------------------------
# Tensor data


def read_tensors(header: GGUFHeader, use_mlx: bool | None = None) -> dict:
    """All tensors as MLX arrays, keyed by GGUF name.

    Q4_0/Q4_1/Q8_0 become three arrays, ``<name>.weight`` (uint32), ``.scales`` and ``.biases``
    (float16), in MLX's affine layout with group size 32; F32/F16 stay as they are; every other
    type is dequantized to float32 with gguf-py. ``use_mlx=None`` picks MLX's loader when it
    reads every tensor of the file exactly.
    """
    if use_mlx is None:
        use_mlx = all(t.ggml_type in MLX_EXACT for t in header.tensors.values())
    return _read_with_mlx(header) if use_mlx else _read_with_numpy(header)


def _read_with_mlx(header: GGUFHeader) -> dict:
    import mlx.core as mx

    try:
        arrays = mx.load(str(header.path), format="gguf")
    except (RuntimeError, ValueError, OSError) as exc:
        detail = str(exc).splitlines()[0].replace("[load_gguf] ", "") if str(exc) else "unreadable"
        raise MacftError(f"{header.path.name}: truncated or corrupt GGUF ({detail})") from None
    return arrays


def _read_with_numpy(header: GGUFHeader) -> dict:
    import mlx.core as mx

    out = {}
    for info in header.tensors.values():
        raw = np.fromfile(header.path, dtype=np.uint8, count=info.nbytes, offset=info.offset)
        base = info.name[: -len(".weight")] if info.name.endswith(".weight") else None
        if info.ggml_type in (Q4_0, Q4_1, Q8_0) and base is not None:
            w, s, b = _to_mlx_affine(raw, info)
            out.update({f"{base}.weight": mx.array(w), f"{base}.scales": mx.array(s),
                        f"{base}.biases": mx.array(b)})
        else:
            try:
                out[info.name] = mx.array(_to_float(raw, info))
            except NotImplementedError:
                raise MacftError(f"{header.path.name}: tensor '{info.name}' has type "
                                 f"{info.type_name}, which gguf-py cannot dequantize") from None
    return out


def _to_float(raw: np.ndarray, info: TensorInfo) -> np.ndarray:
    from gguf import GGMLQuantizationType, quants

    plain = {0: np.float32, 1: np.float16, 24: np.int8, 25: np.int16, 26: np.int32, 27: np.int64,
             28: np.float64}
    if info.ggml_type in plain:
        return raw.view(plain[info.ggml_type]).reshape(info.shape).copy()
    rows = raw.reshape(*info.shape[:-1], -1) if len(info.shape) > 1 else raw
    return quants.dequantize(rows, GGMLQuantizationType(info.ggml_type)).astype(np.float32)


def _to_mlx_affine(raw: np.ndarray, info: TensorInfo):
    """Repack Q4_0/Q4_1/Q8_0 blocks into MLX affine arrays (weight uint32, scales, biases)."""
    rows, cols = int(np.prod(info.shape[:-1])), info.shape[-1]
    block_bytes = {Q4_0: 18, Q4_1: 20, Q8_0: 34}[info.ggml_type]
    blocks = raw.reshape(rows * cols // GROUP_SIZE, block_bytes)
    d = blocks[:, 0:2].copy().view(np.float16)[:, 0]
    if info.ggml_type == Q8_0:
        codes = blocks[:, 2:] ^ np.uint8(0x80)                   # int8 q -> unsigned q + 128
        packed = np.ascontiguousarray(codes)
        bias = d * np.float16(-128)
    else:
        qs = blocks[:, 4:] if info.ggml_type == Q4_1 else blocks[:, 2:]
        # GGUF byte j holds element j (low nibble) and element j + 16 (high nibble);
        # MLX puts element k of a uint32 at bits 4k.
        codes = np.concatenate([qs & 0x0F, qs >> 4], axis=1)
        packed = np.ascontiguousarray(codes[:, 0::2] | (codes[:, 1::2] << 4))
        bias = blocks[:, 2:4].copy().view(np.float16)[:, 0] if info.ggml_type == Q4_1 \
            else d * np.float16(-8)
    shape = info.shape[:-1]
    weight = packed.view(np.uint32).reshape(*shape, -1)
    return weight, d.reshape(*shape, -1), bias.reshape(*shape, -1)


# ---------------------------------------------------------------------------------------------
# Config


def _float32_repr(value) -> float:
    """1e-05 rather than 9.999999747378752e-06 for an f32 metadata value."""
    return float(str(np.float32(value)))


def _scalar(value):
    if isinstance(value, np.ndarray):
        if value.size and np.all(value == value.flat[0]):
            return value.flat[0].item()
        raise ValueError("per-layer values differ")
    return value


def hf_config(header: GGUFHeader) -> dict:
    """The Hugging Face style config.json dict that mlx-lm builds the model from."""
    md, name, arch = header.metadata, header.path.name, header.architecture
    if arch not in IMPORTED:
        shown = arch or "(none)"
        raise MacftError(f"{name}: architecture '{shown}' is not supported "
                         f"(macft imports {', '.join(IMPORTED)})")

    def get(key, default=None, required=True):
        full = f"{arch}.{key}"
        if full not in md:
            if required:
                raise MacftError(f"{name}: metadata key '{full}' is missing")
            return default
        try:
            return _scalar(md[full])
        except ValueError:
            raise MacftError(f"{name}: '{full}' differs between layers (not supported)") from None

    if arch == "gemma3":
        from macft.gguf import gemma3

        return gemma3.hf_config(header, get)
    hidden, heads = int(get("embedding_length")), int(get("attention.head_count"))
    head_dim = int(get("attention.key_length", hidden // heads, required=False))
    if int(get("attention.value_length", head_dim, required=False)) != head_dim:
        raise MacftError(f"{name}: different key and value head sizes are not supported")
    rope_dims = int(get("rope.dimension_count", head_dim, required=False))
    if rope_dims != head_dim:
        raise MacftError(f"{name}: partial rotary embeddings ({rope_dims} of {head_dim} "
                         "dimensions) are not supported")
    embd = header.tensors.get("token_embd.weight")
    if embd is None:
        raise MacftError(f"{name}: tensor 'token_embd.weight' is missing")
    cfg = {
        "model_type": IMPORTED[arch].model_type,
        "architectures": [IMPORTED[arch].hf_class],
        "hidden_size": hidden,
        "num_hidden_layers": int(get("block_count")),
        "intermediate_size": int(get("feed_forward_length")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(get("attention.head_count_kv", heads, required=False)),
        "rms_norm_eps": _float32_repr(get("attention.layer_norm_rms_epsilon")),
        "vocab_size": int(embd.shape[0]),
        "rope_theta": _float32_repr(get("rope.freq_base", 10000.0, required=False)),
        "max_position_embeddings": int(get("context_length", 4096, required=False)),
        "tie_word_embeddings": "output.weight" not in header.tensors,
    }
    if head_dim != hidden // heads or arch in ("qwen3", "qwen3moe"):
        cfg["head_dim"] = head_dim
    if arch == "qwen3moe":
        # llama.cpp's qwen3moe: every layer sparse, top-k weights renormalized.
        cfg.update(num_experts=int(get("expert_count")),
                   num_experts_per_tok=int(get("expert_used_count")),
                   moe_intermediate_size=int(get("expert_feed_forward_length")),
                   decoder_sparse_step=1, mlp_only_layers=[], norm_topk_prob=True)
    if arch == "llama":
        cfg["attention_bias"] = "blk.0.attn_q.bias" in header.tensors
        cfg["mlp_bias"] = "blk.0.ffn_up.bias" in header.tensors
    scaling = _rope_scaling(header, get, head_dim, cfg["rope_theta"])
    if scaling:
        cfg["rope_scaling"] = scaling
    for key, hf_key in (("bos_token_id", "bos_token_id"), ("eos_token_id", "eos_token_id")):
        if f"tokenizer.ggml.{key}" in md:
            cfg[hf_key] = int(md[f"tokenizer.ggml.{key}"])
    return cfg


def _rope_scaling(header: GGUFHeader, get, head_dim: int, base: float) -> dict | None:
    name = header.path.name
    kind = get("rope.scaling.type", "none", required=False)
    if kind == "linear":
        return {"type": "linear", "factor": float(get("rope.scaling.factor"))}
    if kind == "yarn":
        out = {"type": "yarn", "factor": float(get("rope.scaling.factor"))}
        orig = get("rope.scaling.original_context_length", None, required=False)
        if orig:
            out["original_max_position_embeddings"] = int(orig)
        for key, hf in (("yarn_beta_fast", "beta_fast"), ("yarn_beta_slow", "beta_slow")):
            value = get(f"rope.scaling.{key}", None, required=False)
            if value is not None:
                out[hf] = float(value)
        attn = get("rope.scaling.yarn_attn_factor", None, required=False)
        if attn is not None and abs(float(attn) - 1.0) > 1e-6:
            raise MacftError(f"{name}: YaRN with rope.scaling.yarn_attn_factor {float(attn):g} "
                             "is not supported (only 1)")
        return out
    if kind not in ("none", None):
        raise MacftError(f"{name}: rope scaling '{kind}' is not supported")
    if "rope_freqs.weight" in header.tensors:
        orig = int(get("rope.scaling.original_context_length", 8192, required=False))
        return _llama3_scaling(header, head_dim, base, orig)
    return None


def _llama3_scaling(header: GGUFHeader, head_dim: int, base: float, orig: int) -> dict:
    """Llama 3.1+ stores its rope scaling as per-frequency factors; recover the parameters.

    llama.cpp's converter computes the factors from (factor, low=1, high=4, original context);
    we assume those standard low/high values and check that they reproduce the stored tensor.
    """
    info = header.tensors["rope_freqs.weight"]
    if info.ggml_type != F32:
        raise MacftError(f"{header.path.name}: rope_freqs has type {info.type_name}")
    stored = np.fromfile(header.path, dtype=np.float32, count=info.shape[-1], offset=info.offset)
    factor = float(stored.max())
    cfg = {"rope_type": "llama3", "factor": factor, "low_freq_factor": 1.0,
           "high_freq_factor": 4.0, "original_max_position_embeddings": orig}
    expect = llama3_rope_factors(head_dim, base, cfg)
    if expect.shape != stored.shape or not np.allclose(expect, stored, rtol=1e-4):
        raise MacftError(f"{header.path.name}: rope_freqs does not match Llama 3 rope scaling "
                         "(not supported)")
    return cfg


# ---------------------------------------------------------------------------------------------
# Names and layout


def hf_name(gguf_name: str, arch: str = "") -> str | None:
    """``blk.3.attn_q.weight`` -> ``model.layers.3.self_attn.q_proj.weight`` (None if unknown)."""
    parts = gguf_name.split(".")
    if arch == "gemma3" and len(parts) == 4 and parts[0] == "blk":
        from macft.gguf import gemma3

        module = gemma3.hf_block_name(parts[2])
        if module:
            return f"model.layers.{parts[1]}.{module}.{parts[3]}"
    if parts[-1] not in _SUFFIXES:
        return None
    suffix = parts[-1]
    if len(parts) == 2 and parts[0] in _TOP_NAMES:
        return f"{_TOP_NAMES[parts[0]]}.{suffix}"
    if len(parts) == 4 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in _BLOCK_NAMES:
        return f"model.layers.{parts[1]}.{_BLOCK_NAMES[parts[2]]}.{suffix}"
    return None


def gguf_name(hf: str, arch: str = "") -> str | None:
    """The inverse of ``hf_name``: ``model.norm.weight`` -> ``output_norm.weight``."""
    module, _, suffix = hf.rpartition(".")
    if suffix not in _SUFFIXES:
        return None
    parts = module.split(".", 3)
    if arch == "gemma3" and len(parts) == 4 and parts[:2] == ["model", "layers"]:
        from macft.gguf import gemma3

        short = gemma3.gguf_block_name(parts[3])
        if short:
            return f"blk.{parts[2]}.{short}.{suffix}"
    for short, long in _TOP_NAMES.items():
        if module == long:
            return f"{short}.{suffix}"
    parts = module.split(".", 3)
    if len(parts) == 4 and parts[:2] == ["model", "layers"] and parts[2].isdigit():
        for short, long in _BLOCK_NAMES.items():
            if parts[3] == long:
                return f"blk.{parts[2]}.{short}.{suffix}"
    return None


def permute_rows(w, n_heads: int):
    """llama.cpp's Q/K row permutation (rotate-half rotary -> adjacent-pair rotary).

    The inverse of ``unpermute_rows``; rows only move, so it applies to packed weights too.
    """
    rows = w.shape[0]
    return w.reshape(n_heads, 2, rows // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama3_rope_factors(head_dim: int, base: float, scaling: dict) -> np.ndarray:
    """``rope_freqs.weight`` for Llama 3.1+ rope scaling, as llama.cpp's converter computes it."""
    factor = float(scaling["factor"])
    low = float(scaling.get("low_freq_factor", 1.0))
    high = float(scaling.get("high_freq_factor", 4.0))
    orig = int(scaling.get("original_max_position_embeddings", 8192))
    wavelen = 2 * np.pi * base ** (np.arange(0, head_dim, 2) / head_dim)
    smooth = (orig / wavelen - low) / (high - low)
    out = np.where(wavelen < orig / high, 1.0,
                   np.where(wavelen > orig / low, factor, 1 / ((1 - smooth) / factor + smooth)))
    return out.astype(np.float32)


def unpermute_rows(w, n_heads: int):
    """Undo llama.cpp's Q/K row permutation (adjacent-pair rotary -> rotate-half rotary).

    Rows only move, so this works on packed quantized weights and on their scales/biases.
    """
    rows = w.shape[0]
    return w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _rename(header: GGUFHeader, arrays: dict, cfg: dict) -> dict:
    name, out = header.path.name, {}
    permute = {"attn_q": cfg["num_attention_heads"], "attn_k": cfg["num_key_value_heads"]}
    for key, value in arrays.items():
        if key == "rope_freqs.weight":
            continue                                   # folded into cfg["rope_scaling"]
        target = hf_name(key, header.architecture)
        if target is None:
            raise MacftError(f"{name}: tensor '{key}' has no place in a {cfg['model_type']} "
                             "model (not supported)")
        parts = key.split(".")
        if cfg["model_type"] == "llama" and len(parts) == 4 and parts[2] in permute:
            value = unpermute_rows(value, permute[parts[2]])
        if header.architecture == "gemma3" and key.endswith("norm.weight"):
            value = value - 1.0          # llama.cpp stores 1 + w; mlx-lm adds the 1 itself
        out[target] = value
    return out


def _quantized_modules(weights: dict) -> dict[str, dict]:
    """{module path: {"group_size": 32, "bits": b}}, bits read from each tensor's packed width."""
    out = {}
    for key, scales in weights.items():
        if not key.endswith(".scales"):
            continue
        path = key[: -len(".scales")]
        packed, groups = weights[f"{path}.weight"].shape[-1], scales.shape[-1]
        # packed = cols * bits / 32 and groups = cols / 32, so bits = packed / groups.
        out[path] = {"group_size": GROUP_SIZE, "bits": packed // groups}
    return out


def quantization_config(quantized: dict[str, dict]) -> dict | None:
    """mlx-lm's ``"quantization"`` entry: the most common bits plus per-module exceptions."""
    if not quantized:
        return None
    bits = [q["bits"] for q in quantized.values()]
    common = max(sorted(set(bits)), key=bits.count)
    out = {"group_size": GROUP_SIZE, "bits": common, "mode": "affine"}
    for path, q in sorted(quantized.items()):
        if q["bits"] != common:
            out[path] = dict(q)
    return out


# ---------------------------------------------------------------------------------------------
# Model


def _build_model(header: GGUFHeader, cfg: dict, weights: dict):
    import mlx.core as mx
    import mlx.nn as nn
    from mlx_lm.utils import _get_classes

    from macft import runtime

    name = header.path.name
    model_cls, args_cls = _get_classes(cfg)
    model = model_cls(args_cls.from_dict(cfg))
    if cfg["model_type"] == "gemma3_text":
        weights = model.sanitize(weights)          # drops lm_head when the file ties it
    modules = dict(model.named_modules())
    quantized = _quantized_modules(weights)
    for path in [p for p in quantized if not hasattr(modules.get(p), "to_quantized")]:
        # A quantized tensor for a layer MLX cannot quantize (a norm, say): dequantize it.
        q = quantized.pop(path)
        weights[f"{path}.weight"] = mx.dequantize(
            weights[f"{path}.weight"], weights.pop(f"{path}.scales"),
            weights.pop(f"{path}.biases"), q["group_size"], q["bits"]).astype(mx.float32)
    if quantized:
        nn.quantize(model, class_predicate=lambda p, m: dict(quantized[p]) if p in quantized
                    else False)
    if runtime.on_cpu():
        # float16 is not faster on CPU. Scales and biases too: a quantized layer's output takes
        # their dtype (the embedding's would be float16 and drag the whole forward pass down to
        # it). The values are fp16 numbers, so writing them back as fp16 stays exact.
        for key, value in weights.items():
            if value.dtype == mx.float16:
                weights[key] = value.astype(mx.float32)
    try:
        model.load_weights(list(weights.items()), strict=True)
    except ValueError as exc:
        detail = " ".join(str(exc).split())[:300]
        raise MacftError(f"{name}: tensors do not fit the {cfg['model_type']} model described "
                         f"by its metadata ({detail})") from None
    model.eval()
    mx.eval(model.parameters())
    q = quantization_config(quantized)
    if q:
        cfg["quantization"] = q
    return model


def load_gguf(path: str | Path):
    """Load a GGUF file: returns ``(model, tokenizer, hf_config)``.

    ``model`` is an mlx-lm zoo model with Hugging Face parameter names; Q4_0/Q4_1/Q8_0 tensors
    are kept as ``nn.QuantizedLinear``/``nn.QuantizedEmbedding`` (affine, group 32, bits per
    tensor), other quantized types are dequantized to float32. ``tokenizer`` is an mlx-lm
    ``TokenizerWrapper`` rebuilt from the metadata. ``hf_config`` is the config.json dict, with
    mlx-lm's ``"quantization"`` entry when some layers are quantized, so that a saved folder
    reloads with ``mlx_lm.utils.load_model``.
    """
    from macft.gguf.tokenizer import read_gguf_tokenizer

    header = read_header(path)
    cfg = hf_config(header)
    weights = _rename(header, read_tensors(header), cfg)
    model = _build_model(header, cfg, weights)
    tokenizer = read_gguf_tokenizer(header.metadata, name=header.path.name)
    return model, tokenizer, cfg
