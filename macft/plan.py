"""Pre-flight plan of a run: measured peak memory and step time, and settings that fit a budget.

The plan sets the run up exactly as ``macft run`` would (same model, adapters, data, optimizer;
the run folder is a temporary one), then trains two steps on the longest batch the data can
produce (the recipe's batch size of the longest sequences) and reads MLX's peak memory, which
includes the model and everything the run keeps. When that peak is over the budget it measures
smaller micro-batches (with more accumulation, so the optimizer sees the same batch) and then
gradient checkpointing, and reports the first setting that fits. Nothing is printed here; the
CLI formats the result.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tempfile
import time
from dataclasses import dataclass, field

from macft.errors import MacftError
from macft.recipe import Recipe

SAFE_SHARE = 0.7        # of the machine's memory, when no budget is given
_UNITS = {"": 1, "B": 1, "K": 1e3, "KB": 1e3, "M": 1e6, "MB": 1e6, "G": 1e9, "GB": 1e9,
          "T": 1e12, "TB": 1e12, "KIB": 2 ** 10, "MIB": 2 ** 20, "GIB": 2 ** 30}


def parse_size(text: str) -> float:
    """'1.5GB', '800MB', '2GiB' -> bytes; a one-line error otherwise."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(text))
    unit = m.group(2).upper() if m else None
    if m is None or unit not in _UNITS or float(m.group(1)) <= 0:
        raise MacftError(f"--memory-budget: '{text}' is not a size like 1.5GB, 800MB or 2GiB")
    return float(m.group(1)) * _UNITS[unit]


def machine_memory() -> float:
    import mlx.core as mx

    if mx.metal.is_available():
        info = mx.metal.device_info()
        return float(info.get("max_recommended_working_set_size") or info["memory_size"])
    return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def default_budget() -> float:
    return SAFE_SHARE * machine_memory()


@dataclass(frozen=True)
class Setting:
    batch_size: int
    grad_accum: int
    grad_checkpoint: bool

    def overrides(self) -> list[str]:
        out = [f"train.batch_size={self.batch_size}", f"train.grad_accum={self.grad_accum}"]
        return out + (["train.grad_checkpoint=true"] if self.grad_checkpoint else [])

    def describe(self) -> str:
        return " ".join(self.overrides())


@dataclass(frozen=True)
class Measured:
    setting: Setting
    peak_bytes: float
    seconds_per_step: float


@dataclass
class Plan:
    recipe: Recipe
    budget: float
    longest: tuple[int, int]            # (rows, tokens per row) of the longest micro-batch
    total_steps: int
    fill: float                         # mean batch tokens / longest batch tokens
    measured: list[Measured] = field(default_factory=list)

    @property
    def first(self) -> Measured:
        return self.measured[0]

    @property
    def fits(self) -> bool:
        return self.first.peak_bytes <= self.budget

    @property
    def advice(self) -> Measured | None:
        """The first measured setting other than the recipe's that fits the budget."""
        return next((m for m in self.measured[1:] if m.peak_bytes <= self.budget), None)

    @property
    def run_seconds(self) -> float:
        """The whole run, from the longest batch's step time scaled by the mean batch fill."""
        return self.first.seconds_per_step * self.fill * self.total_steps

    def verdict(self) -> str:
        """Peak at the longest batch against the budget: fits or not."""
        m, (rows, length) = self.first, self.longest
        fits = "fits" if self.fits else "does NOT fit"
        return (f"plan: peak {gb(m.peak_bytes)} at the longest batch ({rows} x {length} tokens, "
                f"grad_accum {m.setting.grad_accum}); budget {gb(self.budget)}: {fits}")

    def summary(self) -> str:
        return f"{self.verdict()}; {self.first.seconds_per_step:.2f} s/step"

    def report(self, recipe_label: str) -> list[str]:
        """What `macft plan` prints (and the TUI shows): the verdict, the run's time, every
        other setting measured, and the advice, as `macft run <recipe_label> ...`."""
        minutes = self.run_seconds / 60
        lines = [self.summary(),
                 f"the run: {self.total_steps} steps, about {minutes:.0f} min "
                 f"({self.run_seconds:.0f} s; mean batch fill {self.fill:.0%} of the longest)"]
        for m in self.measured[1:]:
            verdict = "fits" if m.peak_bytes <= self.budget else "too big"
            lines.append(f"  {m.setting.describe()}: peak {gb(m.peak_bytes)}, "
                         f"{m.seconds_per_step:.1f} s/step ({verdict})")
        if self.fits:
            return lines
        if self.advice:
            return lines + [f"use: macft run {recipe_label} {self.advice.setting.describe()}"]
        return lines + ["nothing tried fits: lower data.max_length, or use method=qlora"]

    def to_json(self) -> dict:
        """The measured numbers (not the recipe), for `macft plan --json`."""
        return {"budget": self.budget, "longest": list(self.longest),
                "total_steps": self.total_steps, "fill": self.fill,
                "measured": [dataclasses.asdict(m) for m in self.measured]}

    @classmethod
    def from_json(cls, recipe: Recipe, data: dict) -> "Plan":
        measured = [Measured(Setting(**m["setting"]), m["peak_bytes"], m["seconds_per_step"])
                    for m in data["measured"]]
        return cls(recipe, data["budget"], tuple(data["longest"]), data["total_steps"],
                   data["fill"], measured)

    def refusal(self) -> str:
        head = (f"plan: peak {gb(self.first.peak_bytes)} exceeds the {gb(self.budget)} budget")
        if self.advice:
            return (f"{head}; {self.advice.setting.describe()} fits "
                    f"({gb(self.advice.peak_bytes)}); rerun with those overrides, or --force")
        tried = ", ".join(f"{m.setting.describe()} ({gb(m.peak_bytes)})"
                          for m in self.measured[1:])
        return (f"{head}; nothing tried fits ({tried}); lower data.max_length or use "
                "method=qlora, or --force")


def gb(n: float) -> str:
    """Bytes as GB (MB below 1 GB: tiny models have tiny peaks)."""
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def _shape(batch) -> tuple[int, int]:
    if hasattr(batch, "rollout"):    # GRPO: the update's rows are the rollout's completions
        return batch.shape
    b = getattr(batch, "batch", batch)
    return tuple(b.inputs.shape)


def _fill(batcher, rows: int, longest_tokens: int) -> float:
    """Mean tokens of a real batch over the longest batch's (for the run's time estimate)."""
    seqs = getattr(batcher, "sequences")
    mean = sum(len(s.ids) for s in seqs) / max(len(seqs), 1)
    return min(1.0, mean * rows / max(longest_tokens, 1))


def _measure(recipe: Recipe, setting: Setting, steps: int = 2) -> tuple[Measured, object]:
    import gc

    import mlx.core as mx

    from macft.train.loop import Trainer

    gc.collect()                     # the previous measurement's model must not count here
    mx.clear_cache()
    mx.reset_peak_memory()
    with tempfile.TemporaryDirectory(prefix="macft-plan-") as tmp:
        r = dataclasses.replace(
            recipe, output=tmp,
            train=dataclasses.replace(recipe.train, batch_size=setting.batch_size,
                                      grad_accum=setting.grad_accum,
                                      grad_checkpoint=setting.grad_checkpoint))
        trainer = Trainer(r, [])
        try:
            trainer.setup()
            batches = [trainer.data.train.longest(setting.batch_size)] * setting.grad_accum
            times = []
            for step in range(steps):
                start = time.perf_counter()
                trainer.train_step(step, batches)
                times.append(time.perf_counter() - start)
            peak = float(mx.get_peak_memory())
        finally:
            trainer.close()             # the next measurement starts from a clean process
    return Measured(setting, peak, times[-1]), trainer


def _candidates(s: Setting) -> list[Setting]:
    """Smaller micro-batches with the same batch per step, then checkpointing."""
    out, b, a = [], s.batch_size, s.grad_accum
    while b > 1:
        b, a = b // 2, a * 2
        out.append(Setting(b, a, s.grad_checkpoint))
    if not s.grad_checkpoint:
        out += [Setting(s.batch_size, s.grad_accum, True)]
        out += [dataclasses.replace(c, grad_checkpoint=True) for c in out[:-1]]
    return out


def plan(recipe: Recipe, budget: float | None = None, steps: int = 2) -> Plan:
    """Measure the recipe as it stands; when over budget, measure candidates until one fits."""
    from macft.train.loop import total_steps

    if recipe.stages:
        raise MacftError("plan: staged recipes are planned one stage at a time "
                         "(plan each stage's recipe)")
    budget = budget or default_budget()
    setting = Setting(recipe.train.batch_size, recipe.train.grad_accum,
                      recipe.train.grad_checkpoint)
    first, trainer = _measure(recipe, setting, steps)
    batcher = trainer.data.train
    rows, length = _shape(batcher.longest(setting.batch_size))
    result = Plan(recipe, budget, (rows, length),
                  total_steps(recipe, batcher.batches_per_epoch),
                  _fill(batcher, setting.batch_size, rows * length), [first])
    del trainer
    if result.fits:
        return result
    for candidate in _candidates(setting):
        measured, trainer = _measure(recipe, candidate, 1)
        del trainer
        result.measured.append(measured)
        if measured.peak_bytes <= budget:
            break
    return result
