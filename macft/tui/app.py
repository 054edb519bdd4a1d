"""The macft Textual app: starts and follows training runs and routes their events to screens.

Training runs in a child process (``trainer.TrainerProcess``: `macft run`), never in the UI's
interpreter; the app reads the events it appends to the run folder's metrics.jsonl, applies them
to the run's ``RunState`` in the UI thread and tells the screens to redraw.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Iterable

from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import Screen

from macft import recipe as recipe_mod, runs, shipped
from macft.errors import MacftError
from macft.runs import RunState, display_path, recipe_files, scan_runs
from macft.tui.trainer import AttachedTrainer, Trainer, TrainerProcess

SHIPPED_RECIPES = shipped.RECIPES     # package data: there after a non-editable install too


@dataclass
class LiveRun:
    key: str
    trainer: Trainer

# How often the app reads a live run's new events (only while one trains: idle costs nothing).
POLL_SECONDS = 0.25


def run_key(run_dir: str | Path) -> str:
    return str(Path(run_dir).resolve())


class MacftApp(App):
    CSS_PATH = "app.tcss"
    TITLE = "macft"
    SUB_TITLE = "local fine-tuning"
    BINDINGS = [Binding("q", "quit", "Quit"),
                Binding("question_mark", "help", "Help", key_display="?"),
                Binding("ctrl+p", "command_palette", "Commands", show=False)]

    def __init__(self, root: str | Path | None = None, target: str | None = None,
                 recipe_dirs: list[Path] | None = None, welcome: bool = False):
        super().__init__()
        self.root = Path(root or Path.cwd())
        self.target = target
        self.welcome = welcome        # open the first-run screen in a folder with nothing yet
        self.recipe_dirs = recipe_dirs or [self.root / "recipes", SHIPPED_RECIPES]
        self.states: dict[str, RunState] = {}
        self.live: LiveRun | None = None
        self._poller = None
        self._quit_when_stopped = False

    # ----- places ---------------------------------------------------------------------------
    def show_path(self, path: str | Path) -> str:
        return display_path(path, self.root)

    def name_problem(self, run_dir: Path, name: str) -> str:
        """Why ``name`` cannot be a new run folder beside ``run_dir`` ("" when it can)."""
        try:
            target = runs.sibling(run_dir, name)
        except MacftError as exc:
            return str(exc)
        return f"{self.show_path(target)} already exists" if target.exists() else ""

    def is_shipped(self, path: Path) -> bool:
        """A recipe of the macft checkout itself (and not of the folder the app works in)."""
        p = Path(path).resolve()
        return p.parent == SHIPPED_RECIPES and not p.is_relative_to(self.root.resolve())

    def show_recipe(self, path: Path) -> str:
        return f"{Path(path).name} (shipped)" if self.is_shipped(path) else self.show_path(path)

    def recipes(self) -> list[Path]:
        return recipe_files(self.recipe_dirs)

    def runs(self):
        return scan_runs(self.root / "runs")

    def on_mount(self) -> None:
        from macft.tui.screens.home import HomeScreen

        self.push_screen(HomeScreen())
        if self.target:
            self.open_target(self.target)
        elif self.welcome and self.is_new_folder():
            self.open_first_run()

    def is_new_folder(self) -> bool:
        """No runs and no recipes of its own: a person's first visit."""
        return not self.runs() and not recipe_files([self.root / "recipes"])

    def open_target(self, target: str) -> None:
        path = Path(target)
        if runs.recipe_path(path).is_file():
            self.open_run(path)
        elif path.is_file():
            self.open_recipe(path)
        else:
            self.notify(f"{target}: neither a recipe file nor a run folder", severity="error")

    def open_recipe(self, path: Path | None) -> None:
        from macft.tui.screens.recipe import RecipeScreen

        try:
            recipe = recipe_mod.load(path) if path else recipe_mod.Recipe()
        except MacftError as exc:
            self.notify(str(exc), severity="error", timeout=10)
            return
        self.push_screen(RecipeScreen(recipe, path))

    def open_first_run(self) -> None:
        from macft.tui.screens.first_run import FirstRunScreen

        self.push_screen(FirstRunScreen())

    def open_run(self, run_dir: str | Path) -> None:
        from macft.tui.screens.monitor import MonitorScreen

        self.push_screen(MonitorScreen(Path(run_dir)))

    def open_data(self, recipe: recipe_mod.Recipe) -> None:
        from macft.tui.screens.data import DataScreen

        self.push_screen(DataScreen(recipe))

    def open_compare(self, run_dir: str | Path) -> None:
        from macft.tui.screens.compare import CompareScreen

        self.push_screen(CompareScreen(Path(run_dir)))

    def open_evaluate(self, run_dir: str | Path) -> None:
        from macft.tui.screens.evaluate import EvaluateScreen

        self.push_screen(EvaluateScreen(Path(run_dir)))

    def open_curves(self, run_dirs: list[Path]) -> None:
        from macft.tui.screens.curves import CurvesScreen

        self.push_screen(CurvesScreen(run_dirs))

    def open_export(self, run_dir: str | Path) -> None:
        from macft.tui.screens.export import ExportScreen

        self.push_screen(ExportScreen(Path(run_dir)))

    def action_home(self) -> None:
        from macft.tui.screens.home import HomeScreen

        while len(self.screen_stack) > 2 and not isinstance(self.screen, HomeScreen):
            self.pop_screen()

    # ----- the training run -----------------------------------------------------------------
    def state_for(self, run_dir: str | Path) -> RunState:
        key = run_key(run_dir)
        state = self.states.get(key)
        if state is None or not state.live:
            state = RunState.from_folder(run_dir) if Path(run_dir).is_dir() else \
                RunState(str(run_dir))
            self.states[key] = state
        return state

    @staticmethod
    def preflight(recipe: recipe_mod.Recipe) -> None:
        """What can be checked before a run starts: its data files exist (MacftError naming
        the key otherwise), so a typo is shown where it was typed, not as a failed run."""
        from macft.data.rows import check_source

        holder = runs.trainer_alive(recipe.run_dir)
        if holder is not None:
            raise MacftError(f"{recipe.run_dir}: already being trained by "
                             f"{holder.describe()}; open it from Home to follow it")
        for key in ("train", "valid"):
            path = getattr(recipe.data, key)
            if path:
                try:
                    check_source(path)
                except MacftError as exc:
                    raise MacftError(f"key 'data.{key}': {exc}") from None

    def start_training(self, recipe: recipe_mod.Recipe) -> RunState | None:
        """Train (or resume) ``recipe`` in a thread; None when another run is training or the
        recipe cannot start (said in a notification)."""
        if self.live is not None:
            self.notify(f"{self.show_path(self.live.key)} is training; stop it first",
                        severity="error")
            return None
        try:
            self.preflight(recipe)
        except MacftError as exc:
            self.notify(str(exc), severity="error", timeout=10)
            return None
        key = run_key(recipe.run_dir)
        state = self.state_for(recipe.run_dir)
        state.live, state.status, state.error = True, "starting", ""
        self._follow(LiveRun(key, TrainerProcess(recipe)))
        self.redraw(state)
        return state

    def start_recipe(self, recipe: recipe_mod.Recipe) -> None:
        """Start ``recipe`` and open its monitor. When its run folder already holds a run
        (finished, stopped, failed, killed), ask first: resume it (when it can be), a new run
        in a free folder beside it (<name>-2 by default, editable), or cancel."""
        from macft.tui.screens.confirm import NameScreen

        run_dir = Path(recipe.run_dir)
        state = RunState.from_folder(run_dir)
        status = state.status
        if status == "new" and runs.is_finished(run_dir):
            status = "finished"            # a staged run: the events are in its stages
        if status in ("new", "running"):   # nothing there yet; a live trainer is refused next
            self._start_and_open(recipe)
            return
        choices = [("r", "Resume", "resume")] if state.resumable else []
        choices += [("n", "New run", "new"), ("escape", "Cancel", None)]
        what = "Resume it, or start a new run" if state.resumable else "Start a new run"
        where = f" at step {state.step}/{state.total_steps}" if state.total_steps else ""
        question = (f"{self.show_path(run_dir)} already holds a run ({status}{where}). "
                    f"{what} in the folder below (Tab edits its name):")

        def check(name: str) -> str:
            return self.name_problem(run_dir, name)

        def answer(choice) -> None:
            if choice == "resume":
                self._start_and_open(recipe)
            elif choice is not None:
                target = runs.sibling(run_dir, choice[1])
                self._start_and_open(runs.with_output(recipe, target))

        self.push_screen(NameScreen(question, runs.free_name(run_dir), choices, check,
                                    named=("new",), focus_name=False), answer)

    def _start_and_open(self, recipe: recipe_mod.Recipe) -> None:
        if self.start_training(recipe) is not None:
            self.open_run(recipe.run_dir)

    def attach(self, run_dir: str | Path) -> bool:
        """Follow (and steer) a run another process trains, when this app trains none."""
        holder = runs.trainer_alive(run_dir)
        if self.live is not None or holder is None or holder.host != Trainer.host():
            return False
        state = self.state_for(run_dir)
        state.live = True
        self._follow(LiveRun(run_key(run_dir), AttachedTrainer(Path(run_dir), holder.pid)))
        self.notify(f"following {self.show_path(run_dir)}, trained by pid {holder.pid}")
        return True

    def _follow(self, live: LiveRun) -> None:
        self.live = live
        if self._poller is None:
            self._poller = self.set_interval(POLL_SECONDS, self.poll_live)

    def poll_live(self) -> None:
        """Apply the live run's new events; when it has ended, stop polling."""
        live = self.live
        if live is None:
            self._stop_polling()
            return
        events = live.trainer.poll()
        state = self.states.get(live.key)
        if state is None:
            return
        before = state.status
        for event in events:
            state.apply(event)
        self.announce(state, before)
        if live.trainer.ended:
            state.live, self.live = False, None
            self._stop_polling()
            if self._quit_when_stopped:
                self.exit()
        elif state.status == "running" and live.trainer.stopping:
            state.status = "stopping"
        elif state.status == "running" and live.trainer.paused:
            state.status = "paused"
        if events or not state.live:
            self.redraw(state)

    def announce(self, state: RunState, before: str | None) -> None:
        """A bell and a notification when a run has just finished or failed (``before``: its
        status before the events just applied), wherever the app is: once per ending."""
        if state.status == before or state.status not in ("finished", "failed"):
            return
        self.bell()
        name = self.show_path(state.run_dir)
        if state.status == "failed":
            self.notify(f"{name} failed: {state.error}", severity="error", timeout=10)
            return
        best = f", best val loss {state.best_val:.4f}" if state.best_val is not None else ""
        self.notify(f"{name} finished at step {state.step}{best}", timeout=10)

    def _stop_polling(self) -> None:
        if self._poller is not None:
            self._poller.stop()
            self._poller = None

    def redraw(self, state: RunState) -> None:
        for screen in self.screen_stack:
            show = getattr(screen, "show_state", None)
            if show is not None and getattr(screen, "key", None) == run_key(state.run_dir):
                show(state)

    async def action_quit(self) -> None:
        live = self.live
        if live is None:
            self.exit()
            return
        from macft.tui.screens.confirm import ChoiceScreen

        self.push_screen(ChoiceScreen(
            f"{self.show_path(live.key)} is training.",
            [("k", "Keep training in the background", "keep"),
             ("s", "Stop with a checkpoint", "stop"), ("escape", "Cancel", None)]),
            self._quit_choice)

    def _quit_choice(self, choice: str | None) -> None:
        live = self.live
        if choice == "keep" or (choice == "stop" and live is None):
            self.exit()
        elif choice == "stop":
            # The trainer writes a checkpoint when stopped; quit once it has ended.
            self.notify("stopping the run and saving a checkpoint before quitting")
            live.trainer.stop()
            self._quit_when_stopped = True

    def action_help(self) -> None:
        from macft.tui.screens.help import HelpScreen

        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen(self.screen))

    # ----- command palette ------------------------------------------------------------------
    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        yield SystemCommand("Home", "Recipes and recent runs", self.action_home)
        yield SystemCommand("New recipe", "A recipe form with every default",
                            partial(self.open_recipe, None))
        yield SystemCommand("First run", "Pick a model and a data file; write, plan, start",
                            self.open_first_run)
        for path in self.recipes():
            yield SystemCommand(f"Recipe: {path.stem}", f"Edit and start {self.show_path(path)}",
                                partial(self.open_recipe, path))
        for info in self.runs():
            name = self.show_path(info.path)
            yield SystemCommand(f"Run: {name}", f"Monitor ({info.status})",
                                partial(self.open_run, info.path))
            yield SystemCommand(f"Compare: {name}", "Base and tuned answers side by side",
                                partial(self.open_compare, info.path))
            yield SystemCommand(f"Export: {name}", "A GGUF, an Ollama or LM Studio folder, "
                                "the adapter alone, a Hugging Face folder",
                                partial(self.open_export, info.path))
