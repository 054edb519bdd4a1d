"""Only the tokenizer of a model (no weights are read), for stats and length filters."""

from __future__ import annotations

from macft.recipe import ModelSpec


def load_tokenizer(spec: ModelSpec):
    from macft.models.load import NO_REMOTE_CODE, read_json, resolve

    kind, source = resolve(spec.path, spec.revision)
    if kind == "gguf":
        from macft.gguf.reader import read_header
        from macft.gguf.tokenizer import read_gguf_tokenizer

        return read_gguf_tokenizer(read_header(source).metadata, name=source.name)
    from mlx_lm.utils import load_tokenizer as mlx_load_tokenizer

    config = read_json(source / "config.json")
    return mlx_load_tokenizer(source, NO_REMOTE_CODE, eos_token_ids=config.get("eos_token_id"))
