"""Typed recipe dataclasses: the only home of every option's type, default and help text.

A recipe is YAML. Each section maps onto one frozen dataclass below; unknown keys are rejected
with a "did you mean" hint, values are type-checked, and ``dotted.key=value`` overrides from
the command line go through the same validation. The CLI, the docs and the TUI form derive from
these fields (``fields_of``), never from a second copy.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from macft.errors import MacftError
from macft.train.objectives import OBJECTIVES  # the registry's names (it loads no MLX)


@dataclass(frozen=True)
class Bounds:
    """The numbers a numeric option allows: ``ge``/``gt`` below, ``le``/``lt`` above, and
    ``also`` for special values outside that range (``lora.layers: -1`` means all blocks)."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    also: tuple = ()

    def allows(self, value) -> bool:
        if value in self.also:
            return True
        if isinstance(value, float) and not math.isfinite(value):
            return False        # nan passes every comparison; no option means infinity
        return not ((self.ge is not None and value < self.ge)
                    or (self.gt is not None and value <= self.gt)
                    or (self.le is not None and value > self.le)
                    or (self.lt is not None and value >= self.lt))

    def describe(self) -> str:
        """``>= 0``, ``> 0``, ``in [0, 1]``, ``>= 1 or -1`` ..."""
        low = ("[", self.ge) if self.ge is not None else ("(", self.gt)
        high = ("]", self.le) if self.le is not None else (")", self.lt)
        if low[1] is not None and high[1] is not None:
            text = f"in {low[0]}{_num(low[1])}, {_num(high[1])}{high[0]}"
        elif low[1] is not None:
            text = f"{'>=' if low[0] == '[' else '>'} {_num(low[1])}"
        elif high[1] is not None:
            text = f"{'<=' if high[0] == ']' else '<'} {_num(high[1])}"
        else:
            text = "any number"
        return text + "".join(f" or {_num(v)}" for v in self.also)

    def check(self, value, what: str) -> None:
        """Raise the one-line error naming ``what`` (a key or a flag), the value and the range."""
        if value is not None and not self.allows(value):
            raise MacftError(f"{what} must be {self.describe()}, got {_num(value)}")


def _num(v) -> str:
    return str(int(v)) if isinstance(v, float) and v.is_integer() and abs(v) < 1e15 else str(v)


AT_LEAST_0, AT_LEAST_1, ABOVE_0 = Bounds(ge=0), Bounds(ge=1), Bounds(gt=0)
SEED = Bounds(ge=0, le=2**32 - 1)


def opt(default, help: str, choices: tuple | None = None, bounds: Bounds | None = None, **kw):
    """A recipe field: default, help text and (optionally) the allowed values or range."""
    meta = {"help": help, "choices": choices, "bounds": bounds}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta, **kw)
    return field(default=default, metadata=meta, **kw)


class _RecipeLoader(yaml.SafeLoader):
    """YAML read the way people write recipes (a SafeLoader: the same plain types, nothing else).

    YAML 1.1 reads ``1e-4`` as a string (its floats need a dot) and ``on``/``off``/``yes``/``no``
    as booleans, so ``learning_rate: 1e-4`` was refused and ``compile: off`` was False. Here any
    decimal with an exponent is a float, and only true/false are booleans: the other words stay
    text, which bool fields still accept (``_as_bool``).
    """


_BOOL_TAG = "tag:yaml.org,2002:bool"
_RecipeLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != _BOOL_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_RecipeLoader.add_implicit_resolver(
    _BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
_EXP_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")
_RecipeLoader.add_implicit_resolver("tag:yaml.org,2002:float", _EXP_FLOAT, list("-+0123456789."))


class _RecipeDumper(yaml.SafeDumper):
    """Quotes a string that either reading would take for something else ("off", "1e5")."""


_RecipeDumper.add_implicit_resolver("tag:yaml.org,2002:float", _EXP_FLOAT, list("-+0123456789."))

# The words YAML 1.1 reads as booleans; a bool field takes them as YAML 1.1 did.
_BOOL_WORDS = {"yes": True, "no": False, "on": True, "off": False, "y": True, "n": False}


def parse_yaml(text: str):
    """A recipe file's or an override's text as values (raises yaml.YAMLError)."""
    return yaml.load(text, Loader=_RecipeLoader)  # noqa: S506 (a SafeLoader subclass)


def _as_bool(value):
    if isinstance(value, str) and value.lower() in _BOOL_WORDS:
        return _BOOL_WORDS[value.lower()]
    return value


METHODS = ("lora", "dora", "qlora", "full")


@dataclass(frozen=True)
class RopeScalingSpec:
    type: str = opt("none", "RoPE scaling for tuning and running past the model's native "
                            "context: linear (positions divided by factor) or yarn (NTK-by-parts "
                            "interpolation with attention temperature); carried into the "
                            "exported GGUF's rope.scaling metadata.",
                    choices=("none", "linear", "yarn"))
    factor: float = opt(1.0, "Context extension factor (new context / native context).")
    original_max_position_embeddings: int = opt(
        0, "The native context the model was trained at; 0: the model's own "
           "max_position_embeddings (GGUF: context_length).")
    beta_fast: float = opt(32.0, "yarn: rotations below which a dimension is interpolated "
                                 "fully (llama.cpp and Hugging Face default 32).")
    beta_slow: float = opt(1.0, "yarn: rotations above which a dimension is left as it was "
                                "(default 1).")
    attn_factor: float = opt(1.0, "yarn: factor on the attention temperature 1 + 0.1 ln(factor) "
                                  "(llama.cpp's yarn_attn_factor; default 1). GGUF export "
                                  "takes only 1: llama.cpp applies other values differently.")


@dataclass(frozen=True)
class ModelSpec:
    path: str = opt("smollm2-135m-instruct",
                    "A local Hugging Face folder, a hub id, a .gguf file, or an alias "
                    "(smollm2-135m-instruct, gemma3-270m).")
    revision: str | None = opt(None, "Hub revision (branch, tag or commit) for a hub id.")
    dtype: str = opt("auto", "Compute dtype: auto = float32 on CPU, bfloat16 on a GPU.",
                     choices=("auto", "float32", "bfloat16", "float16"))
    chat_template: str | None = opt(
        None, "Chat template for a base model without one: a built-in (gemma, chatml) or a "
              ".jinja file; default: the model's own, else its family's (Gemma 3: gemma).")
    rope_scaling: RopeScalingSpec = field(default_factory=RopeScalingSpec,
                                          metadata={"help": "RoPE scaling (long context)."})


@dataclass(frozen=True)
class LoraSpec:
    rank: int = opt(16, "Rank of the low-rank update.", bounds=AT_LEAST_1)
    alpha: float = opt(32.0, "Scaling numerator: the update is multiplied by alpha / rank.",
                       bounds=ABOVE_0)
    dropout: float = opt(0.0, "Dropout on the adapter's input.", bounds=Bounds(ge=0, lt=1))
    targets: list = opt(["all"],
                        "Linear layers to adapt, by name (q_proj, v_proj, ...) or 'all' for every "
                        "linear layer of attention and MLP.")
    layers: int = opt(-1, "Adapt only the last N transformer blocks; -1 for all of them.",
                      bounds=Bounds(ge=1, also=(-1,)))


@dataclass(frozen=True)
class QuantSpec:
    bits: int = opt(4, "Bits of the frozen base for qlora (ignored when the base is already "
                       "quantized, e.g. a Q4_1 GGUF).", choices=(4, 8))
    group_size: int = opt(64, "Quantization group size for qlora.", choices=(32, 64, 128))


@dataclass(frozen=True)
class DataSpec:
    train: str = opt("", "Training data: a JSONL file, a folder saved with datasets' "
                         "save_to_disk, or a parquet/arrow file.")
    valid: str | None = opt(None, "Validation data (same forms as train).")
    test: str | None = opt(None, "Test data for `macft eval` (same forms as train).")
    format: str = opt("auto", "Row format; auto detects it from the first row's keys.",
                      choices=("auto", "chat", "completions", "text"))
    max_length: int = opt(512, "Longest sequence in tokens.", bounds=AT_LEAST_1)
    overlong: str = opt("truncate", "What to do with examples longer than max_length.",
                        choices=("truncate", "drop"))
    packing: bool = opt(False, "Pack short examples into full sequences (no attention or "
                               "position leaks between them).")
    train_on_prompt: bool = opt(False, "Also put the loss on prompt/user/system tokens.")
    system_prompt: str | None = opt(None, "System message added to rows that have none.")


@dataclass(frozen=True)
class TrainSpec:
    steps: int = opt(0, "Optimizer steps; 0 means derive them from epochs.", bounds=AT_LEAST_0)
    epochs: float = opt(1.0, "Passes over the training data (used when steps is 0).",
                        bounds=ABOVE_0)
    batch_size: int = opt(4, "Sequences per micro-batch.", bounds=AT_LEAST_1)
    grad_accum: int = opt(1, "Micro-batches per optimizer step.", bounds=AT_LEAST_1)
    learning_rate: float = opt(1e-4, "Peak learning rate.", bounds=ABOVE_0)
    schedule: str = opt("cosine", "Learning-rate schedule after warmup.",
                        choices=("cosine", "linear", "constant"))
    warmup_steps: int = opt(0, "Linear warmup steps from 0 to learning_rate.", bounds=AT_LEAST_0)
    min_lr_ratio: float = opt(0.0, "Final learning rate as a fraction of the peak.",
                              bounds=Bounds(ge=0, le=1))
    weight_decay: float = opt(0.0, "AdamW weight decay.", bounds=AT_LEAST_0)
    max_grad_norm: float = opt(1.0, "Clip the global gradient norm to this; 0 turns it off.",
                               bounds=AT_LEAST_0)
    max_nonfinite_steps: int = opt(3, "A step whose loss or gradient norm is NaN or Inf is "
                                      "skipped (no update); after this many in a row the run "
                                      "stops, keeping its last finite checkpoint; 0: never "
                                      "stop.", bounds=AT_LEAST_0)
    grad_checkpoint: bool = opt(False, "Recompute each block's activations in the backward "
                                       "pass (less memory, ~30% more time).")
    compile: str = opt("auto", "Compile the SFT step with mx.compile, one graph per batch "
                               "shape; on the CPU this runs the fast float32 exp of "
                               "attention, SiLU and the loss. auto = on the CPU in float32 "
                               "with kernels not stock, when each batch shape of the data "
                               "recurs at least 3 times in the run; on; off.",
                       choices=("auto", "on", "off"))
    seed: int = opt(0, "Seed for initialisation, dropout and data order.", bounds=SEED)
    eval_every: int = opt(50, "Validation loss every N steps (0: only at the end).",
                          bounds=AT_LEAST_0)
    eval_batches: int = opt(0, "Validation batches per evaluation; 0 for all.", bounds=AT_LEAST_0)
    save_every: int = opt(100, "Checkpoint every N steps (0: only at the end).", bounds=AT_LEAST_0)
    patience: int = opt(0, "Early stopping: stop after N evaluations without a better "
                           "validation loss; 0 turns it off.", bounds=AT_LEAST_0)
    general_max_rise: float = opt(0.0, "Forgetting guard: at each evaluation also measure "
                                       "perplexity on macft's general text; past (1 + this) "
                                       "times the base model's, apply general_action "
                                       "(e.g. 0.2 = a 20% rise); 0 turns it off.",
                                       bounds=AT_LEAST_0)
    general_action: str = opt("stop", "What the forgetting guard does: stop the run, or "
                                      "keep_best (train on, but an evaluation past the bound "
                                      "never becomes the best adapter).",
                              choices=("stop", "keep_best"))
    sample_every: int = opt(0, "Generate from sample_prompts every N steps (0: never).",
                            bounds=AT_LEAST_0)
    sample_prompts: list = opt([], "Fixed prompts for sample generations.")
    sample_max_tokens: int = opt(64, "Longest sample generation in tokens.", bounds=AT_LEAST_1)


@dataclass(frozen=True)
class PreferenceSpec:
    beta: float = opt(0.1, "dpo/ipo/kto: strength of the pull toward the reference (KL "
                           "weight); simpo: reward scale.", bounds=ABOVE_0)
    label_smoothing: float = opt(0.0, "dpo: probability that a pair's labels are flipped "
                                      "(conservative DPO).", bounds=Bounds(ge=0, lt=0.5))
    orpo_lambda: float = opt(0.1, "orpo: weight of the odds-ratio term added to the SFT loss.",
                             bounds=AT_LEAST_0)
    simpo_gamma: float = opt(0.5, "simpo: target reward margin.", bounds=AT_LEAST_0)
    nll_weight: float = opt(0.0, "dpo/ipo/simpo/orpo: weight of the chosen answers' mean "
                                 "per-token NLL added to the loss (RPO). The pairwise losses "
                                 "can be met by pushing the rejected answers down alone; this "
                                 "pulls the chosen ones up, which is what moves generations. "
                                 "0: off.", bounds=AT_LEAST_0)
    dpop_lambda: float = opt(0.0, "dpo: DPOP penalty, lambda * max(0, reference - policy "
                                  "log-prob of the chosen answer) inside DPO's sigmoid (the "
                                  "DPOP paper uses 50). 0: plain DPO.", bounds=AT_LEAST_0)
    kto_desirable_weight: float = opt(1.0, "kto: weight of the desirable (label: true) rows' "
                                           "loss.", bounds=ABOVE_0)
    kto_undesirable_weight: float = opt(1.0, "kto: weight of the undesirable (label: false) "
                                             "rows' loss.", bounds=ABOVE_0)


@dataclass(frozen=True)
class MoeSpec:
    aux_loss_weight: float = opt(
        0.0, "Mixture-of-experts models: weight of the router's load-balancing loss added to "
             "the SFT loss (Switch Transformer: n_experts * sum_i f_i * P_i, f_i the share of "
             "routed tokens and P_i the mean router probability of expert i, averaged over "
             "the MoE layers; 1 when balanced); 0 turns it off; e.g. 0.01.", bounds=AT_LEAST_0)
    train_experts: list = opt(
        [], "Mixture-of-experts models: train only these experts (indices) of every MoE "
            "layer; the other experts' LoRA (or, with method full, weights) stay bitwise "
            "unchanged; attention and the router still train. Empty: all experts.")


GRPO_LOSSES = ("grpo", "dr_grpo", "dapo", "gspo")


@dataclass(frozen=True)
class GrpoSpec:
    loss: str = opt("grpo", "grpo: clipped ratio, advantages normalised by the group's std, "
                            "per-sequence mean; dr_grpo: no std normalisation, sum over tokens "
                            "divided by rows x max_new_tokens; dapo: clip-higher "
                            "(epsilon_high), token-level mean, groups with equal rewards "
                            "dropped; gspo: one importance ratio per sequence (geometric mean "
                            "of the token ratios), clipped to [1-epsilon, 1+epsilon_high].",
                    choices=GRPO_LOSSES)
    group_size: int = opt(8, "Completions sampled per prompt (G); advantages compare them.",
                          bounds=Bounds(ge=2))
    prompts_per_step: int = opt(4, "Prompts per rollout batch (rows: prompts x group_size).",
                                bounds=AT_LEAST_1)
    max_new_tokens: int = opt(64, "Longest sampled completion in tokens.", bounds=AT_LEAST_1)
    temperature: float = opt(1.0, "Sampling temperature of the rollouts.", bounds=ABOVE_0)
    top_p: float = opt(1.0, "Nucleus sampling of the rollouts; 1 keeps every token.",
                       bounds=Bounds(gt=0, le=1))
    beta: float = opt(0.0, "Weight of the KL term to the base model (adapters off); 0 "
                           "skips the reference pass.", bounds=AT_LEAST_0)
    epsilon: float = opt(0.2, "Clip range of the importance ratio: lower bound 1-epsilon "
                              "(and upper 1+epsilon for grpo and dr_grpo).",
                      bounds=Bounds(ge=0, le=1))
    epsilon_high: float = opt(0.28, "Upper clip bound 1+epsilon_high of dapo and gspo.",
                              bounds=AT_LEAST_0)
    updates_per_rollout: int = opt(1, "Optimizer steps on each rollout batch (its ratio "
                                      "moves from 1 after the first).", bounds=AT_LEAST_1)
    rewards: list = opt([], "Rewards with weights, e.g. [{name: json_valid, weight: 1}, "
                            "{name: user, file: my_rewards.py, function: score}]; a user "
                            "reward runs your own Python file.")
    sample_every: int = opt(10, "Sample events with a few rollout completions and their "
                                "rewards every N steps (0: never).", bounds=AT_LEAST_0)
    samples: int = opt(2, "Completions shown per Sample step.", bounds=AT_LEAST_0)


@dataclass(frozen=True)
class EvalSpec:
    max_tokens: int = opt(128, "Longest generated answer in `macft eval`.", bounds=AT_LEAST_1)
    batch_size: int = opt(32, "Prompts generated together in `macft eval`.", bounds=AT_LEAST_1)


@dataclass(frozen=True)
class Recipe:
    name: str = opt("run", "Name of the run (the default output folder is runs/<name>).")
    model: ModelSpec = field(default_factory=ModelSpec, metadata={"help": "The base model."})
    method: str = opt("lora", "Fine-tuning method.", choices=METHODS)
    lora: LoraSpec = field(default_factory=LoraSpec,
                           metadata={"help": "Adapter settings (lora, dora, qlora)."})
    quantize: QuantSpec = field(default_factory=QuantSpec,
                                metadata={"help": "Base quantization for qlora."})
    data: DataSpec = field(default_factory=DataSpec, metadata={"help": "Data sets and format."})
    train: TrainSpec = field(default_factory=TrainSpec, metadata={"help": "Optimisation."})
    eval: EvalSpec = field(default_factory=EvalSpec, metadata={"help": "`macft eval` settings."})
    moe: MoeSpec = field(default_factory=MoeSpec,
                         metadata={"help": "Mixture-of-experts routing and expert choice."})
    objective: str = opt("sft", "Training objective: sft on chat/completions/text data; dpo, "
                               "ipo, orpo or simpo on preference pairs; kto on unpaired "
                               "rows marked good or bad; grpo on prompts with rewards.",
                    choices=OBJECTIVES)
    preference: PreferenceSpec = field(default_factory=PreferenceSpec,
                                       metadata={"help": "Preference-objective settings."})
    grpo: GrpoSpec = field(default_factory=GrpoSpec,
                           metadata={"help": "GRPO (objective grpo) settings."})
    kernels: str = opt("auto", "Training ops: auto = device kernels (Metal) where they apply "
                               "and passed their parity check on this device (run once, "
                               "cached), else the memory-bounded references (tiled attention, "
                               "chunked cross-entropy); device = the device kernels unchecked; "
                               "reference = always the references; stock = MLX's own ops.",
                       choices=("auto", "device", "reference", "stock"))
    init_adapter: str | None = opt(None, "Start from these adapter weights (a folder with "
                                         "adapters.safetensors) instead of fresh ones.")
    stages: list = opt([], "Stages run in order (e.g. sft then dpo); each is a partial recipe "
                           "over this one, and starts from the previous stage's adapter.")
    output: str | None = opt(None, "Run folder; default runs/<name>.")

    @property
    def run_dir(self) -> Path:
        return Path(self.output or f"runs/{self.name}")


SECTIONS = {f.name: f.type for f in dataclasses.fields(Recipe)}


def fields_of(cls) -> list[dataclasses.Field]:
    return list(dataclasses.fields(cls))


def _resolved_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_section(tp) -> bool:
    return dataclasses.is_dataclass(tp)


def _check_value(value, tp, name: str, src: str, choices, bounds=None):
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        tp = next(a for a in args if a is not type(None))
        origin = typing.get_origin(tp)
    if tp is bool:
        value = _as_bool(value)
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif tp is str:
        ok = isinstance(value, str)
    elif tp is list or origin is list:
        if isinstance(value, (str, int, float)):
            value = [value]
        ok = isinstance(value, list)
    else:
        ok = True
    if not ok:
        tname = getattr(tp, "__name__", str(tp))
        raise MacftError(f"{src}: key '{name}' must be {tname}, got {value!r}")
    if choices and value not in choices:
        raise MacftError(f"{src}: key '{name}' must be one of {', '.join(map(str, choices))}; "
                         f"got {value!r}")
    if bounds is not None:
        bounds.check(value, f"{src}: key '{name}'")
    return value


def _unknown(key: str, prefix: str, known: list[str], src: str) -> MacftError:
    full = f"{prefix}{key}"
    hint = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if not hint:
        # "lerning_rate" at the top level probably meant a nested key.
        nested = [f"{s}.{f.name}" for s, t in _resolved_types(Recipe).items() if _is_section(t)
                  for f in dataclasses.fields(t)]
        hint = difflib.get_close_matches(full, nested, n=1, cutoff=0.6)
        hint = [h for h in hint]
        suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
    else:
        suggestion = f" (did you mean '{prefix}{hint[0]}'?)"
    return MacftError(f"{src}: unknown key '{full}'{suggestion}")


def _build(cls, raw: dict, src: str, prefix: str = ""):
    if not isinstance(raw, dict):
        raise MacftError(f"{src}: key '{prefix.rstrip('.') or '<top>'}' must be a mapping, "
                         f"got {raw!r}")
    hints = _resolved_types(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        if key not in known:
            raise _unknown(str(key), prefix, known, src)
        tp = hints[key]
        if _is_section(tp):
            if cls is Recipe and key == "model" and isinstance(value, str):
                value = {"path": value}  # `model: <path>` shorthand
            kwargs[key] = _build(tp, value or {}, src, f"{prefix}{key}.")
        else:
            f = next(f for f in dataclasses.fields(cls) if f.name == key)
            kwargs[key] = _check_value(value, tp, prefix + key, src, f.metadata.get("choices"),
                                       f.metadata.get("bounds"))
    return cls(**kwargs)


def _validate(recipe: Recipe, src: str) -> Recipe:
    """Checks beyond each field's type, choices and range (those ``_build`` checks as it reads)."""
    _check_name(recipe.name, f"{src}: key 'name'")
    _validate_moe(recipe.moe, recipe.objective, src)
    _validate_rope(recipe.model.rope_scaling, src)
    if recipe.objective == "grpo":
        _validate_grpo(recipe.grpo, src)
        if recipe.train.grad_accum != 1:
            raise MacftError(f"{src}: key 'train.grad_accum' must be 1 for objective grpo "
                             "(train.batch_size sets the rows of each forward pass of the "
                             "update; grpo.prompts_per_step the rollout batch)")
    return recipe


def _check_name(name: str, what: str) -> None:
    """A run's name becomes the folder runs/<name>: it must not lead anywhere else."""
    if (not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name
            or name.startswith("~")):
        raise MacftError(f"{what} must be a plain folder name (no '/', '\\', '..' or '~'), "
                         f"got {name!r}; use output=PATH to choose the folder")


def _validate_rope(rope: RopeScalingSpec, src: str) -> None:
    key = "model.rope_scaling"
    if rope.type == "none":
        return
    if rope.factor < 1:
        raise MacftError(f"{src}: key '{key}.factor' must be >= 1, got {rope.factor}")
    if rope.original_max_position_embeddings < 0:
        raise MacftError(f"{src}: key '{key}.original_max_position_embeddings' must be >= 0")
    if rope.beta_fast <= rope.beta_slow or rope.beta_slow <= 0:
        raise MacftError(f"{src}: keys '{key}.beta_fast' > '{key}.beta_slow' > 0 required, "
                         f"got {rope.beta_fast} and {rope.beta_slow}")
    if rope.attn_factor <= 0:
        raise MacftError(f"{src}: key '{key}.attn_factor' must be positive")


def _validate_moe(moe: MoeSpec, objective: str, src: str) -> None:
    if moe.aux_loss_weight > 0 and objective != "sft":
        raise MacftError(f"{src}: key 'moe.aux_loss_weight' applies to objective sft only "
                         f"(this recipe's objective is {objective})")
    for i in moe.train_experts:
        if not isinstance(i, int) or isinstance(i, bool) or i < 0:
            raise MacftError(f"{src}: key 'moe.train_experts' holds expert indices (integers "
                             f">= 0), got {i!r}")


def _validate_grpo(g: GrpoSpec, src: str) -> None:
    if not g.rewards:
        raise MacftError(f"{src}: key 'grpo.rewards' is required for objective grpo "
                         "(e.g. [{name: json_valid, weight: 1.0}])")
    from macft.rewards import check_specs

    check_specs(g.rewards, Path.cwd(), src)     # relative files resolve from the cwd, as data


def from_dict(raw: dict, src: str = "<recipe>") -> Recipe:
    recipe = _validate(_build(Recipe, raw or {}, src), src)
    stage_recipes(recipe, src)  # a stage with an unknown key fails at load time, not later
    return recipe


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def stage_recipes(recipe: Recipe, src: str = "<recipe>") -> list[Recipe]:
    """The full recipe of each stage: the stage's keys over the parent's, its own folder."""
    from macft import runs

    base = to_dict(recipe)
    base["stages"] = []
    out = []
    for i, stage in enumerate(recipe.stages):
        where = f"{src}: stages[{i}]"
        if not isinstance(stage, dict):
            raise MacftError(f"{where} must be a mapping of recipe keys")
        if "stages" in stage or "output" in stage:
            raise MacftError(f"{where}: key '{'stages' if 'stages' in stage else 'output'}' "
                             f"is not allowed inside a stage")
        raw = _merge(base, stage)
        label = stage.get("name") or stage.get("objective") or "sft"
        raw["name"] = f"{recipe.name}-{label}"
        raw["output"] = str(runs.stage_dir(recipe.run_dir, i, label))
        out.append(_validate(_build(Recipe, raw, where), where))
    return out


def to_dict(recipe: Recipe) -> dict:
    return dataclasses.asdict(recipe)


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise MacftError(f"override '{text}' must look like section.key=value")
    key, _, value = text.partition("=")
    return key.strip().split("."), parse_value(value)


def parse_value(text: str) -> Any:
    """One value as typed in an override or the TUI form: as in a recipe file, and text that
    is not valid YAML stays text (the field's check then names the key)."""
    if text == "":
        return ""
    try:
        return parse_yaml(text)
    except yaml.YAMLError:
        return text


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    raw = dict(raw or {})
    for text in overrides:
        path, value = parse_override(text)
        node = raw
        for part in path[:-1]:
            child = node.get(part)
            if isinstance(child, str) and part == "model":
                child = {"path": child}
            child = dict(child) if isinstance(child, dict) else {}
            node[part] = child
            node = child
        node[path[-1]] = value
    return raw


def read_yaml(path: str | Path) -> dict:
    p = Path(path)
    if not p.exists():
        raise MacftError(f"{p}: recipe file not found")
    try:
        raw = parse_yaml(p.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise MacftError(f"{p}{line}: {problem}") from None
    if raw is None:
        raise MacftError(f"{p}: recipe file is empty")
    if not isinstance(raw, dict):
        raise MacftError(f"{p}: a recipe must be a mapping of keys to values")
    return raw


def load(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read, override and validate a recipe. Relative data paths stay relative to the cwd;
    the files rewards name (a user reward's ``file``, a schema) to the recipe's folder."""
    raw = apply_overrides(read_yaml(path), overrides or [])
    return from_dict(_anchor_reward_files(raw, Path(path).resolve().parent), str(path))


REWARD_FILE_KEYS = ("file", "schema")


def _anchor_reward_files(raw: dict, folder: Path) -> dict:
    """Reward files as absolute paths from the recipe's folder, so the run folder's copy of
    the recipe (resume, eval) finds the same files from anywhere."""
    def anchor(section):
        grpo = section.get("grpo") if isinstance(section, dict) else None
        rewards = grpo.get("rewards") if isinstance(grpo, dict) else None
        if not isinstance(rewards, list):
            return
        grpo["rewards"] = [
            {k: str(folder / v) if k in REWARD_FILE_KEYS and isinstance(v, str)
             and not Path(v).expanduser().is_absolute() else v for k, v in r.items()}
            if isinstance(r, dict) else r for r in rewards]
    anchor(raw)
    for stage in raw.get("stages") or []:
        anchor(stage)
    return raw


def dump(recipe: Recipe, path: str | Path) -> None:
    from macft import runs

    runs.atomic_write(path, yaml.dump(to_dict(recipe), Dumper=_RecipeDumper, sort_keys=False))


def describe(cls=Recipe, prefix: str = "") -> list[tuple[str, str, Any, str]]:
    """(key, type, default, help) for every option, for docs and the TUI form."""
    rows = []
    hints = _resolved_types(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if _is_section(tp):
            rows += describe(tp, f"{prefix}{f.name}.")
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        tname = getattr(tp, "__name__", str(tp).replace("typing.", ""))
        rows.append((prefix + f.name, tname, default, f.metadata.get("help", "")))
    return rows


def field_of(key: str, cls=None) -> dataclasses.Field:
    """The dataclass field of a dotted key ("train.seed"), for its metadata."""
    cls = Recipe if cls is None else cls
    head, _, rest = key.partition(".")
    f = next(f for f in dataclasses.fields(cls) if f.name == head)
    return field_of(rest, _resolved_types(cls)[head]) if rest else f


def bounds_of(key: str) -> Bounds | None:
    """The range a numeric option allows (None when any value of its type is fine)."""
    return field_of(key).metadata.get("bounds")


def describe_values(recipe: Recipe, obj=None, prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted key, value) for every leaf option of a recipe."""
    obj = recipe if obj is None else obj
    rows = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            rows += describe_values(recipe, value, f"{prefix}{f.name}.")
        else:
            rows.append((prefix + f.name, value))
    return rows
