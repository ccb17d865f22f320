"""`?`: the keys of the console."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Static

KEYS = [
    ("1", "Submissions: every submission, newest first, live"),
    ("2", "Detail: problems, studies, convergence plot, provenance"),
    ("3", "Logs: the organizer-only log of a job of the selected submission"),
    ("4", "Leaderboard: feedback / final (p switches), rank changes"),
    ("5", "Fleet: workers, queue depth, autoscaler decisions"),
    ("enter", "open the selected submission"),
    ("/", "filter: team:NAME state:STATE cause:CAUSE or any text (logs: search)"),
    ("s", "stop the selected submission (asks first)"),
    ("r", "rescore the selected submission as a new score version (asks first)"),
    ("f", "logs: follow mode on/off"),
    ("ctrl+p", "command palette"),
    ("?", "this help"),
    ("q", "quit"),
]


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,question_mark", "dismiss", "Close")]

    def __init__(self, readonly: bool) -> None:
        super().__init__()
        self.readonly = readonly

    def compose(self) -> ComposeResult:
        shown = [(k, what) for k, what in KEYS if not (self.readonly and k in ("s", "r"))]
        lines = "\n".join(f"[b]{key:>7}[/b]  {what}" for key, what in shown)
        if self.readonly:
            lines += "\n\n[dim]read-only: stop and rescore are disabled[/dim]"
        with Vertical(id="help"):
            yield Static("[b]Organizer console[/b] — keys", id="help-title")
            yield Static(lines)
