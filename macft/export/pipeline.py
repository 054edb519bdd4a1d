"""``macft export``: load a run or model, fuse its adapters, write GGUF(s), optionally verify."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from macft.errors import MacftError


def _name(target: str) -> str:
    path = Path(target)
    return path.stem if path.suffix == ".gguf" else path.name or "macft"


def occupied(path: str | Path) -> bool:
    """A file that exists, or a folder with something in it (an empty one is simply used)."""
    p = Path(path)
    return any(p.iterdir()) if p.is_dir() else p.exists()


def refuse_overwrite(paths, force: bool) -> None:
    """One line naming the first file or folder that exists, unless ``force``: export never
    overwrites what the person did not say it may."""
    for path in paths:
        if path and occupied(path) and not force:
            raise MacftError(f"{path}: exists; pass --force to overwrite it")


def outputs(target: str, gguf: str | None = None, adapter_gguf: str | None = None,
            hf: str | None = None, to: tuple[str, str] | None = None,
            quant: str = "f16") -> list[Path]:
    """Every file or folder ``export`` with these arguments writes (the TUI asks before
    overwriting them, the CLI wants --force), known before anything is loaded."""
    from macft.export.targets import APPS

    out = [Path(p) for p in (hf, adapter_gguf, gguf) if p]
    if to and to[0] in APPS:
        out += APPS[to[0]].outputs(_name(target), quant, Path(to[1]))
    return out


def written_gguf(target: str, gguf: str | None = None, to: tuple[str, str] | None = None,
                 quant: str = "f16") -> Path | None:
    """The fused model's GGUF these arguments write (what `macft chat` opens), if any."""
    from macft.export.targets import APPS

    if to and to[0] in APPS:
        return APPS[to[0]].outputs(_name(target), quant, Path(to[1]))[0]
    return Path(gguf) if gguf else None


def export(target: str, gguf: str | None = None, quant: str = "f16",
           adapter_gguf: str | None = None, verify: bool = False, verify_text: str | None = None,
           say: Callable[[str], None] = print, hf: str | None = None,
           to: tuple[str, str] | None = None, force: bool = False) -> int:
    """Write the fused model (``gguf``), the LoRA adapter alone (``adapter_gguf``) and/or the
    fused model as a Hugging Face folder (``hf``): the targets of ``export.targets``; ``to``
    (app, folder) writes the GGUF where an app of ``targets.APPS`` runs it."""
    from macft import finite
    from macft.export import verify as verify_mod
    from macft.export.quant_plan import QUANTS
    from macft.models.load import is_run_dir, load_for_inference
    from macft.export.targets import APPS, TARGETS, fuse_to_folder

    if not gguf and not adapter_gguf and not hf and not to:
        raise MacftError("export: give " + " and/or ".join(
            [f"{t.flag} {t.metavar}" for t in TARGETS.values()] + ["--to APP DIR"]))
    if to and to[0] not in APPS:
        raise MacftError(f"export: unknown --to '{to[0]}' (choose from {', '.join(APPS)})")
    if to and gguf:
        raise MacftError("export: give --gguf or --to, not both")
    if quant not in QUANTS:
        raise MacftError(f"unknown --quant '{quant}' (choose from {', '.join(QUANTS)})")
    if hf and not is_run_dir(target):
        raise MacftError(f"{target}: --hf needs a run folder (with recipe.yaml)")
    if adapter_gguf and not is_run_dir(target):
        raise MacftError(f"{target}: --gguf-adapter needs a run folder (with recipe.yaml)")
    refuse_overwrite(outputs(target, gguf, adapter_gguf, hf, to, quant), force)
    text = None
    if verify:
        from macft.export import llamacpp

        llamacpp.require()                                  # fail before the slow part
        text = verify_mod.HELD_OUT
        if verify_text:
            try:
                text = Path(verify_text).read_text(encoding="utf-8")
            except OSError as exc:
                raise MacftError(f"{verify_text}: cannot read ({exc.strerror})") from None
    if hf:
        n, folder = fuse_to_folder(target, hf, force)
        say(f"fused {n} adapter layers into {folder}")
        if not gguf and not adapter_gguf and not to:
            return 0
    loaded, _ = load_for_inference(target)
    finite.check(loaded.model.parameters(), target)       # never write a NaN GGUF
    name = _name(target)
    base_gguf = loaded.source if loaded.kind == "gguf" else None
    finish = None
    if to:
        gguf, finish = APPS[to[0]].prepare(loaded.tokenizer, name, quant, Path(to[1]), force)

    if adapter_gguf:
        from macft.export.adapter import write_lora_gguf

        path = write_lora_gguf(loaded.model, loaded.config, adapter_gguf, name=f"{name}-lora")
        say(f"wrote LoRA adapter {path} ({path.stat().st_size / 1e6:.1f} MB)")
        if verify:
            if base_gguf is None:
                say("adapter not verified: llama.cpp needs a GGUF base (export one with --gguf)")
            else:
                result = verify_mod.verify_gguf(loaded.model, loaded.tokenizer, base_gguf,
                                                verify_mod.EXACT_BLOCKS, text, lora=path)
                _report(say, "adapter on its base", result)
    if gguf:
        from macft.export.writer import write_gguf
        from macft.models.fuse import fuse_in_place

        n = fuse_in_place(loaded.model, dequantize=True)  # rounded once, into the GGUF type
        written = write_gguf(loaded.model, loaded.config, loaded.tokenizer, gguf, quant,
                             name=name, tokenizer_gguf=base_gguf)
        fused = f", {n} adapter layers fused" if n else ""
        say(f"wrote {written.path} ({quant}, {written.nbytes / 1e6:.1f} MB{fused})")
        if verify:
            limit = verify_mod.thresholds_for(written.types, written.rounded)
            result = verify_mod.verify_gguf(loaded.model, loaded.tokenizer, written.path,
                                            limit, text)
            _report(say, f"{quant} vs MLX", result)
    if finish is not None:
        for line in finish():
            say(line)
    return 0


def _report(say, what: str, result) -> None:
    say(f"verified with llama.cpp ({what}):")
    for line in result.lines():
        say(f"  {line}")
