"""Home: the shipped and local recipes, and the recent runs under runs/ with what they did
(started, duration, best validation loss, test score, why they ended); runs can be started,
deleted, renamed, duplicated, and marked to overlay their loss curves."""

from __future__ import annotations

import time
from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Label, Static

from macft import recipe as recipe_mod, runs as runs_mod
from macft.errors import MacftError

STATUS_STYLE = {"running": "bold green", "finished": "cyan", "stopped": "yellow",
                "failed": "bold red", "interrupted": "magenta"}

# The runs list's columns by terminal width (from the widest): all of them from 120 columns,
# without method and model from 100, and without the date below that (80x24 stays readable).
RUN_COLUMNS = (
    (120, ("run", "status", "step", "started", "duration", "best val", "test score", "method",
           "model")),
    (100, ("run", "status", "step", "started", "duration", "best val", "test score")),
    (0, ("run", "status", "step", "duration", "best val", "test")),
)
STATUS_WIDTH = {120: 40, 100: 24, 0: 18}     # a failure's reason is cut to fit


def _tier(width: int) -> int:
    return next(at for at, _ in RUN_COLUMNS if width >= at)


def run_columns(width: int) -> tuple[str, ...]:
    return dict(RUN_COLUMNS)[_tier(width)]


def duration_text(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(round(seconds))
    h, m = divmod(s // 60, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s % 60:02d}s" if m else f"{s}s"


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


def run_cells(info: runs_mod.RunInfo, name: str, live_status: str | None, marked: bool,
              width: int) -> dict:
    """The runs list's cells of one run, by column name, for a terminal ``width`` wide."""
    status = live_status or info.status
    note = status if live_status else info.note
    wide = width >= 120
    started = "-" if info.started is None else \
        time.strftime("%Y-%m-%d %H:%M" if wide else "%m-%d %H:%M", time.localtime(info.started))
    score = f"{info.test_score:.1%}" if info.test_score is not None else "-"
    label = Text(name)
    if marked:
        label = Text.assemble(("✓ ", "bold green"), name)
    return {"run": label,
            "status": Text(_cut(note, STATUS_WIDTH[_tier(width)]),
                           style=STATUS_STYLE.get(status, "")),
            "started": started, "duration": duration_text(info.duration),
            "step": f"{info.step}/{info.total_steps}",
            "best val": f"{info.best_val:.4f}" if info.best_val is not None else "-",
            "test score": score, "test": score,
            "method": info.method, "model": info.model}


class HomeScreen(Screen):
    BINDINGS = [
        Binding("n", "new_recipe", "New recipe"),
        Binding("d", "inspect", "Inspect data"),
        Binding("t", "compare", "Compare"),
        Binding("e", "export", "Export"),
        Binding("v", "evaluate", "Eval"),       # 80 columns keep Quit
        Binding("g", "reload", "Refresh", show=False),   # 80 columns keep Quit
        # Shown in the help line rather than the footer (80 columns keep Quit).
        Binding("ctrl+r", "start", "Start", show=False),
        Binding("space", "mark", "Mark run", show=False),
        Binding("l", "curves", "Loss curves", show=False),
        Binding("x", "delete", "Delete run", show=False),
        Binding("m", "rename", "Rename run", show=False),
        Binding("c", "duplicate", "Copy run", show=False),
        Binding("f", "first_run", "First run", show=False),
    ]

    def __init__(self):
        super().__init__()
        self.marked: list[str] = []     # runs marked with Space (their keys), in that order
        self._columns: tuple[str, ...] = ()

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("Enter opens · ^r starts · Tab switches list · Space marks runs, l "
                     "overlays their losses · x delete · m rename · c copy · ^p commands",
                     id="home-help")
        yield Label("Recipes", classes="section-title")
        yield DataTable(id="recipes", cursor_type="row", zebra_stripes=True)
        yield Label("Recent runs", classes="section-title")
        yield DataTable(id="runs", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#recipes", DataTable).add_columns("recipe", "method", "model", "data",
                                                          "file")
        self.action_reload()
        self.query_one("#recipes", DataTable).focus()

    def on_screen_resume(self) -> None:
        self.action_reload()

    def on_resize(self) -> None:
        if run_columns(self.app.size.width) != self._columns:
            self.action_reload()

    def action_reload(self) -> None:
        """Fill both tables again, each cursor staying on the row it was on (by its key)."""
        kept = {t.id: self._cursor_key(t) for t in self.query(DataTable)}
        self._fill()
        for table in self.query(DataTable):
            keys = [row.key.value for row in table.ordered_rows]
            if kept.get(table.id) in keys:
                table.move_cursor(row=keys.index(kept[table.id]), animate=False)

    @staticmethod
    def _cursor_key(table: DataTable) -> str | None:
        if not table.row_count:
            return None
        return table.coordinate_to_cell_key(table.cursor_coordinate)[0].value

    def _fill(self) -> None:
        app = self.app
        recipes = self.query_one("#recipes", DataTable)
        recipes.clear()
        for path in app.recipes():
            try:
                r = recipe_mod.load(path)
                cells = (r.name, r.method, r.model.path, app.show_path(r.data.train or "-"))
            except MacftError as exc:
                cells = (path.stem, "invalid", str(exc)[-40:], "")
            recipes.add_row(*cells, app.show_recipe(path), key=str(path))
        runs = self.query_one("#runs", DataTable)
        columns = run_columns(app.size.width)
        runs.clear(columns=columns != self._columns)
        if columns != self._columns:
            runs.add_columns(*columns)
            self._columns = columns
        for info in app.runs():
            cells = run_cells(info, app.show_path(info.path), self._live_status(info),
                              str(info.path) in self.marked, app.size.width)
            runs.add_row(*(cells[c] for c in columns), key=str(info.path))

    def _live_status(self, info: runs_mod.RunInfo) -> str | None:
        live = self.app.states.get(str(info.path.resolve()))
        return live.status if live is not None and live.live else None

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        path = Path(event.row_key.value)
        if event.data_table.id == "recipes":
            self.app.open_recipe(path)
        else:
            self.app.open_run(path)

    def _focused(self) -> tuple[str, Path] | None:
        """(table id, path) of the cursor row of the focused table (the recipes when neither
        has focus)."""
        table = self.focused if isinstance(self.focused, DataTable) else \
            self.query_one("#recipes", DataTable)
        key = self._cursor_key(table)
        if key is None:
            self.notify(f"no {table.id} yet", severity="warning")
            return None
        return table.id, Path(key)

    def _run_of(self) -> Path | None:
        """The focused run, or the run folder of the focused recipe when it has one."""
        picked = self._focused()
        if picked is None:
            return None
        table, path = picked
        if table == "runs":
            return path
        try:
            run_dir = recipe_mod.load(path).run_dir
        except MacftError as exc:
            self.notify(str(exc), severity="error")
            return None
        if not runs_mod.is_run_dir(run_dir):
            self.notify(f"{path.stem} has no run yet ({self.app.show_path(run_dir)}); "
                        "start it first", severity="warning")
            return None
        return run_dir

    def action_new_recipe(self) -> None:
        self.app.open_recipe(None)

    def action_first_run(self) -> None:
        self.app.open_first_run()

    def action_inspect(self) -> None:
        picked = self._focused()
        if picked is None:
            return
        table, path = picked
        try:
            if table == "runs":           # the run's own copy of its recipe
                recipe = recipe_mod.load(runs_mod.recipe_path(path), [f"output={path}"])
            else:
                recipe = recipe_mod.load(path)
        except MacftError as exc:
            self.notify(str(exc), severity="error")
            return
        self.app.open_data(recipe)

    def action_compare(self) -> None:
        path = self._run_of()
        if path is not None:
            self.app.open_compare(path)

    def action_export(self) -> None:
        path = self._run_of()
        if path is not None:
            self.app.open_export(path)

    def action_evaluate(self) -> None:
        path = self._run_of()
        if path is None:
            return
        live = self.app.states.get(str(path.resolve()))
        if live is not None and live.live:
            self.notify(f"{self.app.show_path(path)} is still training; evaluate it once it "
                        "has finished", severity="warning")
            return
        self.app.open_evaluate(path)

    # ----- managing runs ------------------------------------------------------------------
    def action_start(self) -> None:
        """Start the focused recipe, or the focused run again (asks when it holds a run)."""
        picked = self._focused()
        if picked is None:
            return
        table, path = picked
        try:
            recipe = recipe_mod.load(path) if table == "recipes" else \
                recipe_mod.load(runs_mod.recipe_path(path), [f"output={path}"])
        except MacftError as exc:
            self.notify(str(exc), severity="error")
            return
        self.app.start_recipe(recipe)

    def _picked_run(self, doing: str) -> Path | None:
        """The cursor row of the runs list, when it has the focus and nobody trains it."""
        table = self.query_one("#runs", DataTable)
        key = self._cursor_key(table)
        if self.focused is not table or key is None:
            self.notify(f"pick a run in the runs list to {doing}", severity="warning")
            return None
        path = Path(key)
        try:
            live = self.app.live
            if live is not None and live.key == str(path.resolve()):
                raise MacftError(f"{self.app.show_path(path)}: cannot {doing} it: this app "
                                 "is training it; stop it first")
            runs_mod.refuse_if_training(path, doing, self.app.show_path(path))
        except MacftError as exc:
            self.notify(str(exc), severity="error")
            return None
        return path

    def _forget(self, path: Path) -> None:
        self.app.states.pop(str(path.resolve()), None)
        if str(path) in self.marked:
            self.marked.remove(str(path))

    def _done(self, action, path: Path, what: str) -> Path | None:
        """Run one management step; its error becomes a notification."""
        try:
            out = action()
        except (MacftError, OSError) as exc:
            self.notify(str(exc), severity="error")
            return None
        self._forget(path)
        self.notify(what if out is None else f"{what} {self.app.show_path(out)}")
        self.action_reload()
        return out

    def action_delete(self) -> None:
        from macft.tui.screens.confirm import ConfirmScreen

        path = self._picked_run("delete")
        if path is None:
            return
        name = self.app.show_path(path)

        def answer(yes: bool) -> None:
            if yes:
                self._done(lambda: runs_mod.delete_run(path), path, f"deleted {name}")

        self.app.push_screen(ConfirmScreen(f"Delete {name}? Its checkpoints, adapters and "
                                           "metrics go with it.", yes="Delete", no="Cancel"),
                             answer)

    def _ask_name(self, path: Path, question: str, default: str, label: str, then) -> None:
        from macft.tui.screens.confirm import NameScreen

        def check(name: str) -> str:
            return self.app.name_problem(path, name)

        self.app.push_screen(NameScreen(question, default, [
            ("enter", label, "go"), ("escape", "Cancel", None)], check, named=("go",)),
            lambda answer: then(answer[1]) if answer else None)

    def action_rename(self) -> None:
        path = self._picked_run("rename")
        if path is not None:
            self._ask_name(path, f"Rename {self.app.show_path(path)} to:", path.name, "Rename",
                           lambda name: self._done(lambda: runs_mod.rename_run(path, name),
                                                   path, "renamed to"))

    def action_duplicate(self) -> None:
        path = self._picked_run("duplicate")
        if path is not None:
            self._ask_name(path, f"Copy the recipe of {self.app.show_path(path)} into a new "
                           "run (no checkpoints; ^r starts it):", runs_mod.free_name(path),
                           "Copy", lambda name: self._done(
                               lambda: runs_mod.duplicate_run(path, name), path, "copied to"))

    def action_mark(self) -> None:
        table = self.query_one("#runs", DataTable)
        key = self._cursor_key(table)
        if self.focused is not table or key is None:
            self.notify("Space marks runs in the runs list", severity="warning")
            return
        if key in self.marked:
            self.marked.remove(key)
        else:
            self.marked.append(key)
        self.action_reload()

    def action_curves(self) -> None:
        """The loss curves of the marked runs (or of the cursor run) on one chart."""
        table = self.query_one("#runs", DataTable)
        keys = [k for k in self.marked if Path(k).is_dir()]
        if not keys and self.focused is table and self._cursor_key(table) is not None:
            keys = [self._cursor_key(table)]
        if not keys:
            self.notify("mark runs with Space, then l overlays their loss curves",
                        severity="warning")
            return
        self.app.open_curves([Path(k) for k in keys])
