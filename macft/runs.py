"""The run folder: the one module that knows its layout, and the atomic writes into it.

A run folder holds ``recipe.yaml`` (the recipe as trained), ``metrics.jsonl`` (one event per
line), ``adapters.safetensors`` + ``adapter_config.json`` (the final adapter), ``best/`` (the
adapter of the best validation loss), ``checkpoints/step-NNNNNNN/`` with a ``latest`` pointer,
``reference_logps.safetensors`` (DPO/IPO), ``started.json`` (the recipe values and data
digests it started with), ``.lock`` while a trainer holds it (``macft.lock``), ``finished.json``
once it is done, and for a staged recipe one ``stage-N-<name>/`` sub-folder per stage, each a
run folder itself. Everything else asks this module for those paths. It also rebuilds a run's
history from its events (the TUI's monitor and run list). Nothing here imports Textual or MLX.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from macft import events as ev, write_errors
from macft.errors import MacftError

RECIPE = "recipe.yaml"
METRICS = "metrics.jsonl"
FINISHED = "finished.json"
BEST = "best"
CHECKPOINTS = "checkpoints"
LATEST = "latest"
ADAPTERS = "adapters.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
REFERENCE_LOGPS = "reference_logps.safetensors"
STARTED = "started.json"
SCORE = "score.json"          # the TUI's Evaluate: base vs tuned on the recipe's test split
STAGE_GLOB = "stage-*"


# ----- atomic writes --------------------------------------------------------------------------
@contextlib.contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path next to ``path`` (same suffix); when the block succeeds it
    replaces ``path`` in one rename, so a kill leaves the old file or the new one, never half.
    A folder works too (an existing one is removed first)."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    _remove(tmp)
    try:
        yield tmp
        _fsync_tree(tmp)             # the bytes are on disk before the name points at them
        if tmp.is_dir() and path.is_dir():
            shutil.rmtree(path)
        os.replace(tmp, path)
        _fsync_dir(path.parent)      # and the rename itself survives a power cut
    except (OSError, RuntimeError, write_errors.WriteError) as exc:  # disk full, read-only
        error = write_errors.translate(exc, path)
        if error is None:
            raise
        raise error from exc
    finally:
        _remove(tmp)


def _fsync_tree(p: Path) -> None:
    """fsync a file, or every file of a folder and the folder itself."""
    if p.is_dir():
        for child in p.iterdir():
            _fsync_tree(child)
        _fsync_dir(p)
    elif p.is_file():
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_dir(p: Path) -> None:
    try:
        fd = os.open(p, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass                         # some file systems cannot fsync a folder
    finally:
        os.close(fd)


# The temporary names atomic_path makes: ".<stem>.tmp<pid><suffix>".
_TEMP_NAME = re.compile(r"^\.(?P<stem>.+)\.tmp(?P<pid>\d+)(?P<suffix>\.[^/]*)?$")


def stale_temps(folder: str | Path) -> list[Path]:
    """Temporary files and folders under ``folder`` left by writers that were killed (their
    pid no longer runs here); a live writer's are left alone."""
    from macft.lock import pid_alive

    out = []
    for p in sorted(Path(folder).rglob(".*.tmp*")):
        m = _TEMP_NAME.match(p.name)
        if m and not pid_alive(int(m["pid"])) and not any(q in out for q in p.parents):
            out.append(p)
    return out


def remove_stale_temps(folder: str | Path) -> list[Path]:
    """Remove ``stale_temps(folder)``; returns what was removed."""
    removed = stale_temps(folder)
    for p in removed:
        _remove(p)
    return removed


def _remove(p: Path) -> None:
    if p.is_dir():
        shutil.rmtree(p, ignore_errors=True)
    elif p.exists():
        p.unlink()


def atomic_write(path: str | Path, data: str | bytes) -> Path:
    """Write ``data`` to ``path`` atomically (flushed to disk before the rename)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data.encode() if isinstance(data, str) else data)
            fh.flush()
            os.fsync(fh.fileno())
    return Path(path)


# ----- layout ---------------------------------------------------------------------------------
def recipe_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / RECIPE


def metrics_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / METRICS


def best_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / BEST


def checkpoints_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / CHECKPOINTS


def reference_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / REFERENCE_LOGPS


def started_path(run_dir: str | Path) -> Path:
    """The recipe values and data digests the run started with (``train.resume``)."""
    return Path(run_dir) / STARTED


def is_run_dir(path: str | Path) -> bool:
    p = Path(path)
    return p.is_dir() and recipe_path(p).exists()


def has_stages(run_dir: str | Path) -> bool:
    return any(Path(run_dir).glob(STAGE_GLOB))


def stage_dir(run_dir: str | Path, index: int, label: str) -> Path:
    """The folder of stage ``index`` (0-based) of a staged run."""
    return Path(run_dir) / f"stage-{index + 1}-{label}"


def has_adapter(folder: str | Path) -> bool:
    return (Path(folder) / ADAPTERS).exists()


def is_finished(run_dir: str | Path) -> bool:
    return (Path(run_dir) / FINISHED).exists()


def write_finished(run_dir: str | Path, info: dict) -> Path:
    return atomic_write(Path(run_dir) / FINISHED, json.dumps(info))


def read_json_record(path: str | Path) -> dict | None:
    """A small JSON file of the run folder; None when it is absent, one line when it is bad."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise MacftError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from None


def read_finished(run_dir: str | Path) -> dict | None:
    return read_json_record(Path(run_dir) / FINISHED)


def score_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / SCORE


def write_score(run_dir: str | Path, info: dict) -> Path:
    return atomic_write(score_path(run_dir), json.dumps(info, indent=1) + "\n")


def read_score(run_dir: str | Path) -> dict | None:
    return read_json_record(score_path(run_dir))


def tuned_exact_match(run_dir: str | Path) -> float | None:
    """The stored test exact match of the tuned model (None without a readable score.json)."""
    try:
        score = read_score(run_dir)
    except MacftError:
        return None
    try:
        return float(score["tuned"]["exact_match"]) if score else None
    except (KeyError, TypeError, ValueError):
        return None


# ----- checkpoints ----------------------------------------------------------------------------
def checkpoint_name(step: int) -> str:
    return f"step-{step:07d}"


def complete_checkpoints(run_dir: str | Path) -> list[Path]:
    """Checkpoint folders that were written to the end, oldest first."""
    root = checkpoints_dir(run_dir)
    return sorted(p for p in root.glob("step-*") if (p / "state.json").exists())


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    root = checkpoints_dir(run_dir)
    if not root.exists():
        return None
    pointer = root / LATEST
    if pointer.exists():
        candidate = root / pointer.read_text().strip()
        if (candidate / "state.json").exists():
            return candidate
    done = complete_checkpoints(run_dir)
    return done[-1] if done else None


def adapter_dir(run_dir: str | Path) -> Path:
    """The adapter a finished run is used with: its best checkpoint if it had validation."""
    run_dir = Path(run_dir)
    if has_adapter(best_dir(run_dir)):
        return best_dir(run_dir)
    if has_adapter(run_dir):
        return run_dir
    latest = latest_checkpoint(run_dir)
    if latest is None:
        raise MacftError(f"{run_dir}: run has no adapter or checkpoint yet")
    return latest


# ----- history (the TUI's monitor and run list) -----------------------------------------------
KEPT_SAMPLES = 20        # the monitor lists a run's newest samples (scrollable)


def trainer_alive(run_dir: str | Path):
    """The lock's holder when a live process trains ``run_dir`` (one on another host counts
    as live: it cannot be checked from here); None when nobody holds its lock."""
    import socket

    from macft.lock import pid_alive, read_holder

    holder = read_holder(run_dir)
    if holder is None:
        return None
    return holder if holder.host != socket.gethostname() or pid_alive(holder.pid) else None

def read_history(run_dir: str | Path) -> list[ev.Event]:
    return _typed(ev.read_metrics(metrics_path(run_dir)))


def _typed(rows: list[dict]) -> list[ev.Event]:
    return [e for e in map(ev.event_from_json, rows) if e is not None]


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
    # GRPO runs: per-step reward metrics ("reward", "reward_<name>", "zero_spread") and the
    # validation reward, as (step, value); empty for every other objective.
    rewards: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    eval_rewards: list[tuple[int, float]] = field(default_factory=list)
    samples: list[ev.Sample] = field(default_factory=list)
    checkpoints: list[ev.Checkpoint] = field(default_factory=list)
    log: list[str] = field(default_factory=list)
    started: ev.RunStarted | None = None
    error: str = ""
    reason: str = ""             # the Finished event's: completed, stopped, early_stopping
    elapsed: float | None = None  # training seconds so far (the last Step's or Finished's)
    live: bool = False           # trained by this process right now
    phase: ev.Progress | None = None   # a validation pass or a set-up under way, else None

    @classmethod
    def from_folder(cls, run_dir: str | Path, rows: list[dict] | None = None) -> "RunState":
        """The run's state from its metrics.jsonl (``rows``: those lines, already read)."""
        state = cls(str(run_dir))
        for event in _typed(ev.read_metrics(metrics_path(run_dir)) if rows is None else rows):
            state.apply(event)
        if state.status == "running" and trainer_alive(run_dir) is None:
            state.status = "interrupted"   # no live trainer holds its lock: it was killed
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
        self.rewards = {k: [p for p in v if p[0] <= e.start_step]
                        for k, v in self.rewards.items()}
        self.eval_rewards = [p for p in self.eval_rewards if p[0] <= e.start_step]
        self.status, self.error, self.reason, self.phase = "running", "", "", None
        verb = f"resumed at step {e.start_step}" if e.start_step else "started"
        self._log(f"{verb}: {e.method} on {e.model} ({e.device}, {e.dtype}), "
                  f"{e.trainable_params:,} trainable of {e.total_params:,} parameters")

    def _on_KernelCheck(self, e: ev.KernelCheck) -> None:
        self._log(e.line())

    def _on_Notice(self, e: ev.Notice) -> None:
        self._log(e.text)

    def _on_Progress(self, e: ev.Progress) -> None:
        self.phase = e

    def _on_Step(self, e: ev.Step) -> None:
        self.last, self.step, self.total_steps, self.phase = e, e.step, e.total_steps, None
        self.elapsed = e.elapsed
        self.losses.append((e.step, e.loss))
        self.learning_rates.append(e.learning_rate)
        if "zero_spread" in e.metrics:   # only GRPO reports the share of zero-spread groups
            for k, v in e.metrics.items():
                if (k == "reward" or k == "zero_spread" or k.startswith("reward_")) and \
                        not k.endswith("_std") and isinstance(v, (int, float)):
                    self.rewards.setdefault(k, []).append((e.step, float(v)))

    def _on_Eval(self, e: ev.Eval) -> None:
        self.phase = None
        self.evals.append((e.step, e.val_loss))
        self.best_val = e.best_val_loss
        best = " (best)" if e.improved else ""
        if self.rewards and isinstance(e.metrics.get("reward"), (int, float)):
            # GRPO validates greedy answers: its "val loss" is minus their mean total reward
            self.eval_rewards.append((e.step, float(e.metrics["reward"])))
            acc = e.metrics.get("accuracy")
            acc = f", accuracy {acc:.0%}" if isinstance(acc, (int, float)) else ""
            self._log(f"step {e.step}: val reward {e.metrics['reward']:.4f}{acc}{best}")
            return
        self._log(f"step {e.step}: val loss {e.val_loss:.4f}{best}")

    def _on_Sample(self, e: ev.Sample) -> None:
        self.samples = (self.samples + [e])[-KEPT_SAMPLES:]

    def _on_Checkpoint(self, e: ev.Checkpoint) -> None:
        self.checkpoints.append(e)
        what = "saved the best adapter" if e.best else f"checkpoint {Path(e.path).name}"
        self._log(f"step {e.step}: {what}")

    def _on_Finished(self, e: ev.Finished) -> None:
        self.step, self.reason, self.elapsed, self.phase = e.step, e.reason, e.elapsed, None
        self.status = "stopped" if e.reason == "stopped" else "finished"
        if e.best_val_loss is not None:
            self.best_val = e.best_val_loss
        self._log(f"{e.reason} at step {e.step}")

    def _on_Failed(self, e: ev.Failed) -> None:
        self.status, self.error, self.phase = "failed", e.error, None
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
    test_score: float | None = None   # tuned exact match on the test split (score.json)
    started: float | None = None      # when it first started (epoch seconds)
    duration: float | None = None     # training seconds, resumes included
    outcome: str = ""                 # why it ended: completed, early_stopping, the error

    @property
    def note(self) -> str:
        """The status with its reason where one is known: "failed: <error>",
        "finished: early_stopping"."""
        if self.outcome and self.outcome not in ("completed", "stopped"):
            return f"{self.status}: {self.outcome}"
        return self.status


def run_info(run_dir: Path) -> RunInfo:
    from macft import recipe as recipe_mod

    rows = ev.read_metrics(metrics_path(run_dir))
    state = RunState.from_folder(run_dir, rows)
    try:
        recipe = recipe_mod.load(recipe_path(run_dir))
        method, model = recipe.method, recipe.model.path
    except MacftError:
        method, model = "?", "?"
    status, outcome = state.status, state.error or state.reason
    if status == "new":               # no events (or none left): finished.json may know more
        done = _finished_record(run_dir)
        if done is not None:
            status, outcome = "finished", str(done.get("reason", ""))
    return RunInfo(run_dir, status, method, model, state.step, state.total_steps,
                   state.best_val, tuned_exact_match(run_dir), _started_at(rows),
                   state.elapsed, outcome)


def _started_at(rows: list[dict]) -> float | None:
    """The time of the run's first RunStarted event (a resume keeps the first date)."""
    for row in rows:
        if row.get("event") == "RunStarted":
            t = row.get("time")
            return float(t) if isinstance(t, (int, float)) and t > 0 else None
    return None


def _finished_record(run_dir: Path) -> dict | None:
    try:
        done = read_finished(run_dir)
    except MacftError:
        return None
    return done if isinstance(done, dict) else None


# ----- managing run folders (the TUI's delete, rename, duplicate, new run) --------------------
def refuse_if_training(run_dir: str | Path, doing: str, shown: str | None = None) -> None:
    """One line naming the trainer when a live process holds ``run_dir``'s lock (``shown``:
    the folder as the line names it)."""
    holder = trainer_alive(run_dir)
    if holder is not None:
        raise MacftError(f"{shown or run_dir}: cannot {doing} it: it is being trained by "
                         f"{holder.describe()}; stop it first")


def _refuse_existing(target: Path) -> None:
    if target.exists() or target.is_symlink():
        raise MacftError(f"{target}: already exists; choose another name")


def sibling(run_dir: str | Path, name: str) -> Path:
    """The folder ``name`` beside ``run_dir``; a name is one folder name, not a path."""
    name = name.strip()
    if not name or name in (".", "..") or "/" in name or os.sep in name:
        raise MacftError(f"{name!r}: a run name is one folder name (no '/')")
    return Path(run_dir).parent / name


def free_name(run_dir: str | Path) -> str:
    """The first of <name>-2, <name>-3 ... that is not a folder beside ``run_dir`` yet
    (a name that already ends in -N counts on from it)."""
    run_dir = Path(run_dir)
    m = re.fullmatch(r"(?P<base>.+)-(?P<n>\d+)", run_dir.name)
    base, n = (m["base"], int(m["n"]) + 1) if m else (run_dir.name, 2)
    while (run_dir.parent / f"{base}-{n}").exists():
        n += 1
    return f"{base}-{n}"


def with_output(recipe, run_dir: str | Path):
    """``recipe`` training into ``run_dir`` (as the override ``output=run_dir`` makes it):
    a staged recipe's stages move with it."""
    from macft import recipe as recipe_mod

    raw = recipe_mod.to_dict(recipe)
    raw["output"] = _output_text(Path(run_dir))
    return recipe_mod.from_dict(raw, str(recipe_path(run_dir)))


def _output_text(run_dir: Path) -> str:
    """A folder under the working directory as a relative path (as runs/<name> is), so the
    project can move; anything else as given."""
    try:
        return str(run_dir.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(run_dir)


def delete_run(run_dir: str | Path) -> None:
    """Remove a run folder that nobody trains (its lock is held while it goes)."""
    from macft.lock import run_lock

    run_dir = Path(run_dir)
    refuse_if_training(run_dir, "delete")
    with run_lock(run_dir):          # a trainer starting now waits for nothing: it is gone
        shutil.rmtree(run_dir)


def rename_run(run_dir: str | Path, name: str) -> Path:
    """Move a run folder that nobody trains to ``name`` beside it; never onto an existing
    folder. Its recipe.yaml then names the new folder as its output."""
    from macft import recipe as recipe_mod
    from macft.lock import lock_path, run_lock

    run_dir = Path(run_dir)
    target = sibling(run_dir, name)
    refuse_if_training(run_dir, "rename")
    _refuse_existing(target)
    with run_lock(run_dir):
        os.rename(run_dir, target)
        lock_path(target).unlink()   # ours, carried along: the folder is free again
    try:
        recipe = recipe_mod.load(recipe_path(target))
    except MacftError:
        return target                # an unreadable recipe moves as it is
    recipe_mod.dump(with_output(recipe, target), recipe_path(target))
    return target


def duplicate_run(run_dir: str | Path, name: str) -> Path:
    """A new run folder ``name`` beside ``run_dir`` holding only its recipe (output set to
    the new folder): no events, checkpoints or adapters, ready to start."""
    from macft import recipe as recipe_mod

    run_dir = Path(run_dir)
    target = sibling(run_dir, name)
    _refuse_existing(target)
    recipe = with_output(recipe_mod.load(recipe_path(run_dir)), target)
    target.mkdir(parents=True)
    recipe_mod.dump(recipe, recipe_path(target))
    return target


def scan_runs(runs_root: Path) -> list[RunInfo]:
    """Run folders (with recipe.yaml) under ``runs_root``, most recently active first."""
    if not runs_root.is_dir():
        return []
    folders = [p for p in runs_root.iterdir() if recipe_path(p).is_file()]

    def activity(p: Path) -> float:
        metrics = metrics_path(p)
        return (metrics if metrics.exists() else recipe_path(p)).stat().st_mtime

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
