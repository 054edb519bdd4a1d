"""Home: the shipped and local recipes, and the recent runs under runs/."""

from __future__ import annotations

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


class HomeScreen(Screen):
    BINDINGS = [
        Binding("n", "new_recipe", "New recipe"),
        Binding("d", "inspect", "Inspect data"),
        Binding("t", "compare", "Compare"),
        Binding("e", "export", "Export"),
        Binding("v", "evaluate", "Eval"),       # 80 columns keep Quit
        Binding("g", "reload", "Refresh", show=False),   # 80 columns keep Quit
        Binding("f", "first_run", "First run", show=False),
    ]

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("Enter opens a recipe or a run · Tab moves between the lists · "
                     "Ctrl+P for every command", id="home-help")
        yield Label("Recipes", classes="section-title")
        yield DataTable(id="recipes", cursor_type="row", zebra_stripes=True)
        yield Label("Recent runs", classes="section-title")
        yield DataTable(id="runs", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#recipes", DataTable).add_columns("recipe", "method", "model", "data",
                                                          "file")
        self.query_one("#runs", DataTable).add_columns("run", "status", "step", "method",
                                                       "model", "best val loss", "test score")
        self.action_reload()
        self.query_one("#recipes", DataTable).focus()

    def on_screen_resume(self) -> None:
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
        runs.clear()
        for info in app.runs():
            live = app.states.get(str(info.path.resolve()))
            status = live.status if live is not None and live.live else info.status
            best = f"{info.best_val:.4f}" if info.best_val is not None else "-"
            score = f"{info.test_score:.1%}" if info.test_score is not None else "-"
            runs.add_row(app.show_path(info.path), Text(status, style=STATUS_STYLE.get(status, "")),
                         f"{info.step}/{info.total_steps}", info.method, info.model, best, score,
                         key=str(info.path))

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
