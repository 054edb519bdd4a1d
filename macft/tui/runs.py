"""Run folders as the TUI sees them: history from metrics.jsonl, status, the recent-runs list.

Nothing here imports Textual or MLX, so it is cheap to use from tests and from the home screen.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

from macft import events as ev
from macft.errors import MacftError

# A run whose metrics.jsonl has not changed for this long is no longer trained by anyone.
STALE_AFTER = 600.0

EVENT_TYPES = {cls.__name__: cls for cls in (ev.RunStarted, ev.KernelCheck, ev.Step, ev.Eval,
                                             ev.Sample, ev.Checkpoint, ev.Finished, ev.Failed)}


def event_from_json(row: dict) -> ev.Event | None:
    """The typed event of one metrics.jsonl line (None for an unknown or damaged line)."""
    cls = EVENT_TYPES.get(row.get("event", ""))
    if cls is None:
        return None
    names = {f.name for f in dataclasses.fields(cls)}
    try:
        return cls(**{k: v for k, v in row.items() if k in names})
    except TypeError:
        return None


def read_history(run_dir: str | Path) -> list[ev.Event]:
    rows = ev.read_metrics(Path(run_dir) / "metrics.jsonl")
    return [e for e in map(event_from_json, rows) if e is not None]


@dataclass
class RunState:
    """Everything the monitor shows about one run, rebuilt from events in order."""

    run_dir: str
    status: str = "new"  # new running paused stopping stopped finished failed interrupted
    total_steps: int = 0
    step: int = 0
    last: ev.Step | None = None
    losses: list[tuple[int, float]] = field(default_factory=list)
    learning_rates: list[float] = field(default_factory=list)
    evals: list[tuple[int, float]] = field(default_factory=list)
    best_val: float | None = None
    samples: list[ev.Sample] = field(default_factory=list)
    checkpoints: list[ev.Checkpoint] = field(default_factory=list)
    log: list[str] = field(default_factory=list)
    started: ev.RunStarted | None = None
    error: str = ""
    live: bool = False           # trained by this process right now

    @classmethod
    def from_folder(cls, run_dir: str | Path) -> "RunState":
        state = cls(str(run_dir))
        for event in read_history(run_dir):
            state.apply(event)
        metrics = Path(run_dir) / "metrics.jsonl"
        if state.status == "running" and time.time() - metrics.stat().st_mtime > STALE_AFTER:
            state.status = "interrupted"  # killed: no process has written to it for a while
        return state

    def apply(self, e: ev.Event) -> None:
        handler = getattr(self, f"_on_{type(e).__name__}", None)
        if handler is not None:
            handler(e)

    def _on_RunStarted(self, e: ev.RunStarted) -> None:
        # A resumed run replays the steps after its last checkpoint: forget those.
        self.started, self.total_steps, self.step = e, e.total_steps, e.start_step
        self.losses = [p for p in self.losses if p[0] <= e.start_step]
        self.learning_rates = self.learning_rates[:len(self.losses)]
        self.evals = [p for p in self.evals if p[0] <= e.start_step]
        self.status, self.error = "running", ""
        verb = f"resumed at step {e.start_step}" if e.start_step else "started"
        self._log(f"{verb}: {e.method} on {e.model} ({e.device}, {e.dtype}), "
                  f"{e.trainable_params:,} trainable of {e.total_params:,} parameters")

    def _on_KernelCheck(self, e: ev.KernelCheck) -> None:
        self._log(e.line())

    def _on_Step(self, e: ev.Step) -> None:
        self.last, self.step, self.total_steps = e, e.step, e.total_steps
        self.losses.append((e.step, e.loss))
        self.learning_rates.append(e.learning_rate)

    def _on_Eval(self, e: ev.Eval) -> None:
        self.evals.append((e.step, e.val_loss))
        self.best_val = e.best_val_loss
        self._log(f"step {e.step}: val loss {e.val_loss:.4f}" + (" (best)" if e.improved else ""))

    def _on_Sample(self, e: ev.Sample) -> None:
        self.samples = (self.samples + [e])[-6:]

    def _on_Checkpoint(self, e: ev.Checkpoint) -> None:
        self.checkpoints.append(e)
        what = "saved the best adapter" if e.best else f"checkpoint {Path(e.path).name}"
        self._log(f"step {e.step}: {what}")

    def _on_Finished(self, e: ev.Finished) -> None:
        self.step = e.step
        self.status = "stopped" if e.reason == "stopped" else "finished"
        if e.best_val_loss is not None:
            self.best_val = e.best_val_loss
        self._log(f"{e.reason} at step {e.step}")

    def _on_Failed(self, e: ev.Failed) -> None:
        self.status, self.error = "failed", e.error
        self._log(f"failed at step {e.step}: {e.error}")

    def _log(self, line: str) -> None:
        self.log = (self.log + [line])[-50:]

    @property
    def resumable(self) -> bool:
        """Stopped, failed or killed: training the recipe again carries on from its checkpoint."""
        return not self.live and self.status in ("stopped", "failed", "interrupted")


@dataclass(frozen=True)
class RunInfo:
    """One line of the home screen's run list."""

    path: Path
    status: str
    method: str
    model: str
    step: int
    total_steps: int
    best_val: float | None


def run_info(run_dir: Path) -> RunInfo:
    from macft import recipe as recipe_mod

    state = RunState.from_folder(run_dir)
    try:
        recipe = recipe_mod.load(run_dir / "recipe.yaml")
        method, model = recipe.method, recipe.model.path
    except MacftError:
        method, model = "?", "?"
    return RunInfo(run_dir, state.status, method, model, state.step, state.total_steps,
                   state.best_val)


def scan_runs(runs_root: Path) -> list[RunInfo]:
    """Run folders (with recipe.yaml) under ``runs_root``, most recently active first."""
    if not runs_root.is_dir():
        return []
    folders = [p for p in runs_root.iterdir() if (p / "recipe.yaml").is_file()]

    def activity(p: Path) -> float:
        metrics = p / "metrics.jsonl"
        return (metrics if metrics.exists() else p / "recipe.yaml").stat().st_mtime

    return [run_info(p) for p in sorted(folders, key=lambda p: (-activity(p), p.name))]


def recipe_files(folders: list[Path]) -> list[Path]:
    """*.yaml recipes of the given folders, the first occurrence of a file name winning."""
    seen, out = set(), []
    for folder in folders:
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.yaml")):
            if path.name not in seen:
                seen.add(path.name)
                out.append(path)
    return out


def display_path(path: str | Path, root: Path) -> str:
    """``path`` relative to ``root`` when it lies inside it (shorter, and stable in tests)."""
    p = Path(path)
    try:
        return str(p.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(p)
