"""View 4: the organizers' live leaderboard (feedback or final), with rank changes.

Recomputed only when a scoring event arrived (the app marks it dirty), at most every few seconds, in a
thread. "since open" compares with the first board the console computed, "since last" with the board
before the latest recomputation.
"""

from __future__ import annotations

import time
from typing import Any

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static

from console.widgets.cells import rank_change, safe_cell

PHASES = ("feedback", "final")
MIN_RECOMPUTE_S = 3.0


class LeaderboardScreen(Screen):
    AUTO_FOCUS = "#board-table"  # the data, never a hidden input box
    BINDINGS = [Binding("p", "switch_phase", "Feedback/final")]

    def __init__(self) -> None:
        super().__init__(id="leaderboard")
        self.phase = "feedback"
        self.rows: dict[str, list[dict[str, Any]]] = {}
        self.at_open: dict[str, dict[str, int]] = {}
        self.before_last: dict[str, dict[str, int]] = {}
        self.dirty = True
        self._computed_at = 0.0

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("", id="board-title")
        yield DataTable(id="board-table", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_screen_resume(self) -> None:
        self.show()
        if self.dirty:
            self.recompute()

    def mark_dirty(self) -> None:
        self.dirty = True
        if self.is_current and time.monotonic() - self._computed_at >= MIN_RECOMPUTE_S:
            self.recompute()

    def recompute(self) -> None:
        self.dirty = False
        self._computed_at = time.monotonic()
        self.compute(self.phase)

    @work(thread=True, exclusive=True, group="board")
    def compute(self, phase: str) -> None:
        spec_name = self.app.spec_name()
        try:
            rows = self.app.data.leaderboard(phase, spec_name) if spec_name else []
        except Exception as exc:  # e.g. a final board whose studies are missing: shown, not fatal
            self.app.deliver(self.app.say, f"leaderboard: {exc}", severity="error")
            return
        self.app.deliver(self.take, phase, rows)

    def take(self, phase: str, rows: list[dict[str, Any]]) -> None:
        """A freshly computed board (the app also calls this for the first board, at start-up)."""
        ranks = {row["team"]: row["rank"] for row in rows}
        self.at_open.setdefault(phase, ranks)
        if phase in self.rows:
            old = {row["team"]: row["rank"] for row in self.rows[phase]}
            if old != ranks:
                self.before_last[phase] = old
        self.rows[phase] = rows
        if self.is_mounted and phase == self.phase:
            self.show()

    def show(self) -> None:
        table = self.query_one("#board-table", DataTable)
        table.clear(columns=True)
        final = self.phase == "final"
        columns = ["rank", "since open", "since last", "team", "score"]
        columns += ["95% interval", "rank holds", "studies"] if final else []
        columns += ["version", "submission", "scored at"]
        for name in columns:
            table.add_column(name, key=name)
        rows = self.rows.get(self.phase)
        spec = self.app.spec_name() or "-"
        if rows is None:
            title = f"{spec} / {self.phase}: computing..."
        else:
            title = f"{spec} / {self.phase}: {len(rows)} team(s)  (p: feedback/final)"
        self.query_one("#board-title", Static).update(safe_cell(title))
        at_open = self.at_open.get(self.phase, {})
        before = self.before_last.get(self.phase, at_open)
        for row in rows or []:
            cells: list[Any] = [
                str(row["rank"]),
                rank_change(at_open.get(row["team"]), row["rank"]),
                rank_change(before.get(row["team"]), row["rank"]),
                safe_cell(row["team"], style="bold"),
                f"{row['score']:.3f}",
            ]
            if final:
                cells += [
                    f"{row['ci_low']:.3f} - {row['ci_high']:.3f}",
                    f"{row['rank_stability']:.0%}",
                    str(row["studies"]),
                ]
            cells += [f"v{row['score_version']}", safe_cell(row["submission"]), safe_cell(row["scored_at"])]
            table.add_row(*cells, key=row["team"])

    def action_switch_phase(self) -> None:
        self.phase = PHASES[(PHASES.index(self.phase) + 1) % len(PHASES)]
        self.show()
        self.recompute()

    def selected(self) -> str | None:
        table = self.query_one("#board-table", DataTable)
        rows = self.rows.get(self.phase) or []
        if not rows or not table.row_count:
            return None
        return rows[min(table.cursor_row, len(rows) - 1)]["submission"]
