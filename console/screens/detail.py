"""View 2: one submission: its problems and studies, a convergence plot against random search, provenance."""

from __future__ import annotations

import json
from typing import Any

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widgets import Collapsible, DataTable, Footer, Header, Static

from console.widgets.cells import safe_cell, score_cell, state_cell
from console.widgets.plot import ConvergencePlot
from queue_schema.untrusted import safe_text


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


class DetailScreen(Screen):
    AUTO_FOCUS = "#detail-studies"  # the data, never a hidden input box

    def __init__(self) -> None:
        super().__init__(id="detail")
        self.sid: str | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("select a submission in view 1 and press enter", id="detail-title")
        with Horizontal(id="detail-body"):
            problems: DataTable = DataTable(id="detail-studies", cursor_type="row", zebra_stripes=True)
            for name in ("problem / study", "state", "score", "normalized", "rounds"):
                problems.add_column(name, key=name)
            yield problems
            with VerticalScroll(id="detail-side"):
                yield ConvergencePlot(id="detail-plot")
                # Collapsed: long, and read when a score is questioned rather than at every look.
                with Collapsible(title="provenance", collapsed=True, id="detail-provenance-box"):
                    yield Static("", id="detail-provenance")
        yield Footer()

    def on_screen_resume(self) -> None:
        self.reload()

    def reload(self) -> None:
        sid = self.app.selected_sid
        if sid is None:
            return
        self.sid = sid
        self._load(sid)

    @work(thread=True, exclusive=True, group="detail")
    def _load(self, sid: str) -> None:
        try:
            found = self.app.data.detail(sid)
        except Exception as exc:  # shown, never fatal: the store may be mid-change
            self.app.deliver(self._failed, sid, str(exc))
            return
        self.app.deliver(self._show, sid, found)

    def _failed(self, sid: str, message: str) -> None:
        self.query_one("#detail-title", Static).update(safe_cell(f"{sid}: {message}", style="red"))

    def _show(self, sid: str, found: dict[str, Any]) -> None:
        if sid != self.sid:
            return
        row = found["row"]
        title = Text.assemble(
            (f"{row.id}", "bold"),
            f"  team {row.team}  ",
            state_cell(row.state, row.disqualified),
            f"  v{row.score_version}  {row.phase}  studies {row.studies_done}/{row.studies_total}  score ",
            score_cell(row.score, row.running_score),
        )
        if row.failure_cause:
            title.append(f"\n{row.failure_cause}: {row.failure_message}", style="red")
        if row.refund == "held":
            title.append(
                f"\nrefund held: the team is past its automatic refunds today; rule with "
                f"`bbo admin refund {row.id}` (or --deny)",
                style="bold yellow",
            )
        if found.get("error"):
            title.append(f"\n{safe_text(found['error'])}", style="yellow")
        self.query_one("#detail-title", Static).update(title)
        table = self.query_one("#detail-studies", DataTable)
        table.clear()
        for problem in found["problems"]:
            key = problem["problem"]
            table.add_row(
                safe_cell(key, style="bold"),
                f"{len(problem['studies'])} studies",
                _score(problem["score"]),
                _score(problem["normalized"]),
                "",
                key=key,
            )
            for study in problem["studies"]:
                rounds = len(study["losses"])
                state = study["state"] + (
                    f" ({study['cut_off_reason']})" if study.get("cut_off_reason") else ""
                )
                table.add_row(
                    f"  study {study['study']}",
                    safe_cell(state),  # a DataTable reads a str cell as markup
                    _score(study.get("score")),
                    _score(study.get("normalized")),
                    str(rounds),
                    key=f"{key}#{study['study']}",
                )
        self.query_one("#detail-plot", ConvergencePlot).show(found["curve"], found["random"])
        provenance = json.dumps(found["provenance"], indent=1, sort_keys=True, default=str)
        self.query_one("#detail-provenance", Static).update(Text(provenance, style="dim"))

    def selected(self) -> str | None:
        return self.sid
