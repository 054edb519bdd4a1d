"""A GGUF base without a chat template (Gemma 3 270M's) exports with the template the model was
trained with, so llama.cpp front ends render the same turns; a base with its own keeps it."""

from __future__ import annotations

import json

import macft  # noqa: F401  (loads OpenBLAS before mlx)

from conftest import CHATML, write_tiny_model
from macft.cli import main
from macft.export.writer import write_gguf
from macft.gguf.reader import read_header
from macft.models.chat_templates import GEMMA
from macft.models.load import load_base


def test_template_added_only_where_the_base_file_has_none(tmp_path):
    folder = write_tiny_model(tmp_path / "hf")
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    bare = tmp_path / "bare.gguf"
    assert main(["export", str(folder), "--gguf", str(bare), "--quant", "f32"]) == 0
    assert "tokenizer.chat_template" not in read_header(bare).metadata

    loaded = load_base(str(bare), chat_template="gemma")
    out = write_gguf(loaded.model, loaded.config, loaded.tokenizer, tmp_path / "out.gguf", "f32",
                     tokenizer_gguf=bare).path
    assert read_header(out).metadata["tokenizer.chat_template"] == GEMMA

    own = tmp_path / "own.gguf"
    assert main(["export", str(write_tiny_model(tmp_path / "hf2")), "--gguf", str(own),
                 "--quant", "f32"]) == 0
    loaded = load_base(str(own), chat_template="gemma")     # trained with another template
    out = write_gguf(loaded.model, loaded.config, loaded.tokenizer, tmp_path / "out2.gguf",
                     "f32", tokenizer_gguf=own).path
    assert read_header(out).metadata["tokenizer.chat_template"] == CHATML   # the file's own
