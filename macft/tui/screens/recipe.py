"""Recipe: a form with one row per option, derived from ``recipe.describe()``: the essential
options on top, the rest under Advanced; an error is shown on its field; plan, save, start."""

from __future__ import annotations

from pathlib import Path

from textual import events, on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import Button, Checkbox, Collapsible, Footer, Header, Input, Label, \
    Select, Static

from macft import recipe as recipe_mod, recipe_edit
from macft.errors import MacftError
from macft.recipe_form import FormField, error_key, essential_first, form_fields, from_text, \
    recipe_values, to_text, values_to_recipe


def field_id(key: str) -> str:
    return "opt-" + key.replace(".", "-")


def row_id(key: str) -> str:
    return "row-" + key.replace(".", "-")


class RecipeScreen(Screen):
    BINDINGS = [
        Binding("ctrl+s", "save", "Save", priority=True),
        Binding("ctrl+l", "plan", "Plan", priority=True),
        Binding("ctrl+r", "start", "Start run", priority=True),
        Binding("ctrl+d", "inspect", "Inspect data", priority=True),
        Binding("escape", "back", "Back"),
    ]

    def __init__(self, recipe: recipe_mod.Recipe, path: Path | None = None):
        super().__init__()
        self.recipe = recipe
        self.path = path
        # The essential options, then top-level ones (objective, output ...), then a block per
        # section under Advanced.
        self.essential, self.advanced = essential_first(form_fields())
        self.fields = self.essential + self.advanced
        self.by_id = {field_id(f.key): f for f in self.fields}
        self._suggested = ""
        self._saved: dict = {}          # the editors' values as last loaded or saved

    @property
    def src(self) -> str:
        """Where error messages say the recipe comes from, as the YAML loader does."""
        return self.app.show_recipe(self.path) if self.path else "<new recipe>"

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="recipe-bar"):
            yield Label("save as ", classes="bar-label")
            yield Input(self._default_save_path(), id="save-path", compact=True)
        values = recipe_values(self.recipe)
        with VerticalScroll(id="form"):
            yield Static("essentials", classes="form-section")
            for f in self.essential:        # out of their sections: the whole key
                yield self._row(f, values[f.key], f.key)
            with Collapsible(title="Advanced: every other option", collapsed=True,
                             id="advanced"):
                section = None
                for f in self.advanced:
                    if f.section != section:
                        section = f.section
                        yield Static(section or "recipe", classes="form-section")
                    yield self._row(f, values[f.key], f.key.rpartition(".")[2])
        yield Static("", id="field-help")
        yield Static("", id="form-error")
        with Horizontal(id="recipe-buttons"):
            yield Button("Save  ^s", id="save", compact=True)
            yield Button("Plan  ^l", id="plan", compact=True)
            yield Button("Inspect data  ^d", id="inspect", compact=True)
            yield Button("Start run  ^r", id="start", variant="primary", compact=True)
        yield Footer()

    def _row(self, f: FormField, value, label: str) -> Horizontal:
        return Horizontal(Label(label, classes="field-key"),
                          self._editor(f, value), classes="field-row", id=row_id(f.key))

    def _default_save_path(self) -> str:
        """The file itself for the user's recipes; a copy under recipes/ for shipped ones."""
        if self.path is not None and not self.app.is_shipped(self.path):
            return self.app.show_path(self.path)
        self._suggested = f"recipes/{self.path.stem if self.path else self.recipe.name}.yaml"
        return self._suggested

    @staticmethod
    def _editor(f: FormField, value):
        wid = field_id(f.key)
        if f.kind == "choice":
            return Select([(str(c), c) for c in f.choices], value=value, allow_blank=False,
                          id=wid, compact=True, tooltip=f.help)
        if f.kind == "bool":
            return Checkbox("", value=bool(value), id=wid, compact=True, tooltip=f.help)
        placeholder = "(none)" if f.optional else ""
        return Input(to_text(value), placeholder=placeholder, id=wid, compact=True,
                     tooltip=f.help)

    def on_mount(self) -> None:
        self.query_one(f"#{field_id(self.fields[0].key)}").focus()
        self._saved = self.values()

    @property
    def unsaved(self) -> dict:
        """The options edited since the file was opened or saved: what saving writes."""
        return recipe_edit.changed(self._saved, self.values())

    @on(Input.Changed, "#opt-name")
    def _name_changed(self, event: Input.Changed) -> None:
        # A new recipe is saved as recipes/<name>.yaml unless the person chose another file.
        box = self.query_one("#save-path", Input)
        if self.path is None and box.value == self._suggested:
            self._suggested = box.value = f"recipes/{event.value}.yaml"

    def on_descendant_focus(self, event: events.DescendantFocus) -> None:
        f = self.by_id.get(event.widget.id or "")
        if f is not None:
            self._reveal(event.widget)
            default = to_text(f.default) or "none"
            self.query_one("#field-help", Static).update(
                f"[b]{f.key}[/b] ({f.type}, default {default}): {f.help}")

    # ----- values -----------------------------------------------------------------------------
    def values(self) -> dict:
        out = {}
        for wid, f in self.by_id.items():
            widget = self.query_one(f"#{wid}")
            out[f.key] = from_text(widget.value, f) if isinstance(widget, Input) else widget.value
        return out

    def set_value(self, key: str, value) -> None:
        """Set one option's editor (for the command palette and tests)."""
        widget = self.query_one(f"#{field_id(key)}")
        widget.value = to_text(value) if isinstance(widget, Input) else value

    def validated(self) -> recipe_mod.Recipe | None:
        try:
            recipe = values_to_recipe(self.values(), self.src)
        except MacftError as exc:
            self.show_error(str(exc))
            return None
        self.show_error("")
        return recipe

    def show_error(self, text: str) -> None:
        """The message under the form and, when it names an option, under that option's
        field too: the row is marked, an Advanced section holding it opens, the cursor goes
        there."""
        error = self.query_one("#form-error", Static)
        error.update(text)
        error.set_class(bool(text), "shown")
        for old in self.query(".field-error"):
            old.remove()
        for row in self.query(".field-row.invalid"):
            row.remove_class("invalid")
        key = error_key(text, {f.key for f in self.fields}) if text else None
        if key is None:
            return
        row = self.query_one(f"#{row_id(key)}")
        row.add_class("invalid")
        note = Static(text.partition(": ")[2] or text, classes="field-error")
        row.parent.mount(note, after=row)
        editor = self.query_one(f"#{field_id(key)}")
        self._reveal(editor)
        editor.focus(scroll_visible=False)
        self.call_after_refresh(note.scroll_visible, animate=False)

    def _reveal(self, widget: Widget) -> None:
        """Open the Advanced section when it holds ``widget``."""
        advanced = self.query_one("#advanced", Collapsible)
        if advanced.collapsed and advanced in widget.ancestors:
            advanced.collapsed = False

    # ----- actions ----------------------------------------------------------------------------
    def action_save(self) -> None:
        recipe = self.validated()
        if recipe is None:
            return
        target = Path(self.query_one("#save-path", Input).value.strip() or
                      f"recipes/{recipe.name}.yaml")
        if not target.is_absolute():
            target = self.app.root / target
        own = self.path is not None and target.resolve() == Path(self.path).resolve()
        if target.exists() and not own:
            from macft.tui.screens.confirm import ConfirmScreen

            self.app.push_screen(
                ConfirmScreen(f"{self.app.show_path(target)} exists. Overwrite it?",
                              yes="Overwrite", no="Cancel"),
                lambda yes: self._save(recipe, target) if yes else None)
            return
        self._save(recipe, target)

    def _save(self, recipe: recipe_mod.Recipe, target: Path) -> None:
        """Write only the changed keys into the opened file's text (comments and order kept);
        a new recipe starts from a `macft run` comment line."""
        shown = self.app.show_path(target)
        try:
            recipe_edit.save(self.path, target, self.unsaved, header=f"macft run {shown}")
        except (MacftError, OSError) as exc:
            self.notify(str(exc), severity="error")
            return
        self.path, self.recipe = target, recipe
        self._saved = self.values()
        self.notify(f"saved {shown}")

    def action_back(self) -> None:
        if not self.unsaved:
            self.app.pop_screen()
            return
        from macft.tui.screens.confirm import ConfirmScreen

        keys = ", ".join(self.unsaved)
        self.app.push_screen(ConfirmScreen(f"Discard the unsaved changes ({keys})?",
                                           yes="Discard", no="Keep editing"),
                             lambda yes: self.app.pop_screen() if yes else None)

    def action_start(self) -> None:
        recipe = self.validated()
        if recipe is None:
            return
        try:
            self.app.preflight(recipe)
        except MacftError as exc:          # on the form, where it can be fixed
            self.show_error(f"{self.src}: {exc}")
            return
        self.app.start_recipe(recipe)      # asks first when its run folder holds a run

    def action_plan(self) -> None:
        """`macft plan` for the form's values (saved or not), on a screen of its own; its
        advice, when taken, goes into the batch fields."""
        recipe = self.validated()
        if recipe is None:
            return
        from macft.tui.screens.plan import PlanScreen

        label = self.app.show_path(self.path) if self.path else "RECIPE.yaml"
        self.app.push_screen(PlanScreen(recipe, label), self._take_advice)

    def _take_advice(self, setting) -> None:
        if setting is None:
            return
        self.set_value("train.batch_size", setting.batch_size)
        self.set_value("train.grad_accum", setting.grad_accum)
        self.set_value("train.grad_checkpoint", setting.grad_checkpoint)
        self.notify(f"set {setting.describe()} (not saved yet)")

    def action_inspect(self) -> None:
        recipe = self.validated()
        if recipe is not None:
            self.app.open_data(recipe)

    @on(Button.Pressed)
    def _button(self, event: Button.Pressed) -> None:
        {"save": self.action_save, "start": self.action_start, "plan": self.action_plan,
         "inspect": self.action_inspect}[event.button.id]()
