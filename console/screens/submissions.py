"""View 1: one row per submission, newest first, updated in place as events arrive."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Footer, Header, Input, Static

from console.data import SubmissionRow
from console.widgets.cells import BAR_WIDTH, age, progress_bar, safe_cell, score_cell, state_cell
from console.widgets.table import Column, RowTable

CAUSE_WIDTH = 48
TABLE_COLUMNS = (
    Column("team", "team", 16),
    Column("id", "id", 19),
    Column("age", "age", 6),
    Column("state", "state", 11),
    Column("studies", "studies", BAR_WIDTH + 10),
    Column("evals", "evals", 6),
    Column("score", "score", 8),
    Column("cause", "failure", CAUSE_WIDTH),
)
COLUMNS = tuple(c.key for c in TABLE_COLUMNS)


def _evals(row: SubmissionRow) -> Text:
    percent = 100 * row.evals_done / row.evals_total if row.evals_total else 0.0
    return Text(f"{percent:5.1f}%", style="dim" if not row.active else "")


def _cause(row: SubmissionRow) -> Text:
    if not row.failure_cause:
        return Text("")
    message = (row.failure_message or "").splitlines()[0] if row.failure_message else ""
    # A refund waiting for an organizer's ruling comes first: it is the one thing to act on.
    held = "refund held! " if row.refund == "held" else ""
    return Text(f"{held}{row.failure_cause}: {message}"[:CAUSE_WIDTH], style="red")


class SubmissionsScreen(Screen):
    AUTO_FOCUS = "#submissions-table"  # the data, never a hidden input box
    BINDINGS = [
        Binding("slash", "filter", "Filter"),
        Binding("escape", "clear_filter", "Clear filter", show=False),
    ]

    def __init__(self, clock: Callable[[], float]) -> None:
        super().__init__(id="submissions")
        self.clock = clock
        self.query_text = ""
        self._ages: dict[str, str] = {}  # id -> the age text its line was last drawn with
        self.shown: set[str] = set()  # ids in the table (the filter may hide some)
        self.populations = 0  # whole-table loads: the first, then one per filter change (never per tick)

    def compose(self) -> ComposeResult:
        yield Header()
        yield Input(
            placeholder="filter: team:NAME state:STATE cause:CAUSE text  (enter applies)", id="filter"
        )
        yield Static("loading submissions...", id="submissions-summary")
        yield RowTable(TABLE_COLUMNS, self._cells, id="submissions-table")
        yield Footer()

    @property
    def table(self) -> RowTable:
        return self.query_one("#submissions-table", RowTable)

    # -- rows (called by the app on the UI thread) ----------------------------------------------------

    def _cells(self, row: SubmissionRow) -> tuple:
        """A row's cells, built when its line is drawn; the age shown is remembered for refresh_ages."""
        text = age(self.clock() - row.created_at)
        self._ages[row.id] = text
        return (
            row.team,
            row.id,
            text,
            state_cell(row.state, row.disqualified),
            progress_bar(row.studies_done, row.studies_total),
            _evals(row),
            score_cell(row.score, row.running_score),
            _cause(row),
        )

    def populate(self, rows: Iterable[SubmissionRow]) -> None:
        """The whole table, from rows already newest first (first load, or a new filter)."""
        table = self.table
        table.clear()
        self._ages.clear()
        self.populations += 1
        query = self.query_text
        chosen = [(row.id, row) for row in rows if not query or row.matches(query)]
        table.add_rows(chosen)
        self.shown = {sid for sid, _ in chosen}
        self.update_summary()

    def upsert(self, row: SubmissionRow) -> bool:
        """Update a row in place (or add it, or drop it if the filter no longer matches); True when a row
        was added (the caller then restores the newest-first order once for the whole batch)."""
        table = self.table
        if self.query_text and not row.matches(self.query_text):
            self.remove(row.id)
            return False
        if row.id not in self.shown:
            table.add_row(row.id, row)
            self.shown.add(row.id)
            return True
        table.update_row(row.id, row)
        return False

    def remove(self, sid: str) -> None:
        if sid in self.shown:
            self.table.remove_row(sid)
            self.shown.discard(sid)
            self._ages.pop(sid, None)

    def resort(self, created: dict[str, float]) -> None:
        # Rows are only appended; one sort per batch of new submissions puts them back newest first.
        self.table.sort(key=lambda sid: (created.get(sid, 0.0), sid), reverse=True)

    def refresh_ages(self, created: dict[str, float], now: float) -> None:
        """Ages of the rows on screen only: a cell is touched when its coarse text changes."""
        table = self.table
        if not table.row_count:
            return
        for sid in table.visible_keys():
            drawn = self._ages.get(sid)
            if drawn is not None and drawn != age(now - created.get(sid, now)):
                table.invalidate(sid)

    def update_summary(self, counts: dict[str, int] | None = None) -> None:
        counts = counts if counts is not None else self.app.state_counts()
        parts = [f"{n} {state}" for state, n in counts.items() if n]
        shown = self.table.row_count
        suffix = f"  |  filter {self.query_text!r}: {shown} shown" if self.query_text else ""
        # The filter is shown as typed (a `[` in it is not markup).
        self.query_one("#submissions-summary", Static).update(
            safe_cell(f"{sum(counts.values())} submissions: " + ", ".join(parts) + suffix)
        )

    def selected(self) -> str | None:
        return self.table.selected_key()

    # -- keys -----------------------------------------------------------------------------------------

    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.display = True
        box.focus()

    def action_clear_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.value = ""
        box.display = False
        if self.query_text:
            self.apply_filter("")
        self.table.focus()

    def apply_filter(self, text: str) -> None:
        self.query_text = text.strip()
        self.populate(self.app.rows_newest_first())

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "filter":
            self.apply_filter(event.value)
            if not event.value.strip():
                event.input.display = False
            self.table.focus()

    def on_row_table_selected(self, event: RowTable.Selected) -> None:
        self.app.open_detail(event.key)
