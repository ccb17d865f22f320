"""The organizer console: `bbo admin console [--readonly]`.

All I/O runs in thread workers (console/data.py does it); the UI thread only applies what they bring back.
The first load reads every submission once; then, every `refresh_s`, a worker reads the new events and
the submissions they name, and the UI applies keyed row updates. `tick_ms` records the UI thread's time
per refresh and `ready` is set once the first load is on screen (the console benchmark reads both).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from textual import work
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.css.query import NoMatches
from textual.screen import Screen

from console.data import Changes, ConsoleData, SubmissionRow
from console.screens.detail import DetailScreen
from console.screens.fleet import FleetScreen
from console.screens.help import HelpScreen
from console.screens.leaderboard import LeaderboardScreen
from console.screens.logs import LogsScreen
from console.screens.submissions import SubmissionsScreen
from console.widgets.confirm import ConfirmDialog
from queue_schema.connection import connect
from queue_schema.states import SubmissionState
from queue_schema.untrusted import redact_urls_in, safe_text

# Every state, in the order the submissions summary lists them (the states are queue_schema/states.py's).
_SUMMARY_ORDER = (
    SubmissionState.QUEUED,
    SubmissionState.RUNNING,
    SubmissionState.SCORED,
    SubmissionState.FAILED,
    SubmissionState.STOPPED,
)

VIEWS = ("submissions", "detail", "logs", "leaderboard", "fleet")
QUEUE_HISTORY = 120  # sparkline points: two minutes at the default refresh


class ConsoleApp(App):
    CSS_PATH = Path(__file__).with_name("console.tcss")
    TITLE = "bbo-arena organizer console"
    ENABLE_COMMAND_PALETTE = True
    BINDINGS = [
        Binding("1", "view('submissions')", "Submissions"),
        Binding("2", "view('detail')", "Detail"),
        Binding("3", "view('logs')", "Logs"),
        Binding("4", "view('leaderboard')", "Board"),
        Binding("5", "view('fleet')", "Fleet"),
        Binding("s", "stop", "Stop"),
        Binding("r", "rescore", "Rescore"),
        Binding("question_mark", "help", "Help"),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(
        self,
        r: redis.Redis | None = None,
        *,
        readonly: bool = False,
        refresh_s: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__()
        if r is None:
            r = connect()
        self.data = ConsoleData(r, clock=clock)
        self.readonly = readonly
        self.refresh_s = refresh_s
        self.clock = clock
        self.tick_ms: list[float] = []
        self.ready = threading.Event()
        self.rows: dict[str, SubmissionRow] = {}
        self.created: dict[str, float] = {}  # id -> creation time: the newest-first order, the ages
        self.selected_sid: str | None = None
        self.fleet_snapshot: dict[str, Any] | None = None
        self.queue_depths: deque[int] = deque(maxlen=QUEUE_HISTORY)
        self.views: dict[str, Screen] = {
            "submissions": SubmissionsScreen(clock),
            "detail": DetailScreen(),
            "logs": LogsScreen(),
            "leaderboard": LeaderboardScreen(),
            "fleet": FleetScreen(),
        }
        for name, screen in self.views.items():
            self.add_mode(name, lambda screen=screen: screen)
        if readonly:
            self.sub_title = "read-only"

    # -- start-up -------------------------------------------------------------------------------------

    async def on_mount(self) -> None:
        await self.switch_mode("submissions")  # composed before the first rows can arrive
        self._first_load()

    @work(thread=True, exclusive=True, group="load")
    def _first_load(self) -> None:
        rows = self.data.load()
        fleet = self.data.fleet()
        self.deliver(self._loaded, rows, fleet)
        self._first_board()

    def _loaded(self, rows: list[SubmissionRow], fleet: dict[str, Any]) -> None:
        self.rows = {row.id: row for row in rows}
        self.created = {row.id: row.created_at for row in rows}
        self.fleet_snapshot = fleet
        self.queue_depths.append(int(fleet["queued"]))
        self.submissions.populate(rows)
        self.submissions.table.focus()
        self.ready.set()
        self.set_interval(self.refresh_s, self._poll)

    def _first_board(self) -> None:
        """The board as the console opened (for "rank change since open"), off the UI thread."""
        spec_name = self.spec_name()
        if spec_name is None:
            return
        try:
            rows = self.data.leaderboard("feedback", spec_name)
        except Exception:  # the board is a convenience here; its view reports errors when opened
            return
        self.deliver(self.views["leaderboard"].take, "feedback", rows)

    # -- refresh ----------------------------------------------------------------------------------------

    @work(thread=True, exclusive=True, group="poll")
    def _poll(self) -> None:
        try:
            changes = self.data.poll()
            fleet = self.data.fleet()
        except redis.RedisError as exc:  # the store restarting: say so, and try again next refresh
            self.deliver(self.say, f"store unreachable: {exc}", severity="error", timeout=3)
            return
        self.deliver(self._apply, changes, fleet)

    def _apply(self, changes: Changes, fleet: dict[str, Any]) -> None:
        started = time.perf_counter()
        now = self.clock()
        screen = self.submissions
        added = False
        for row in changes.rows:
            self.rows[row.id] = row
            self.created[row.id] = row.created_at
            added |= screen.upsert(row)
        for sid in changes.gone:
            self.rows.pop(sid, None)
            self.created.pop(sid, None)
            screen.remove(sid)
        if added:
            screen.resort(self.created)
        if changes.rows or changes.gone:
            screen.update_summary()
        if screen.is_current:
            screen.refresh_ages(self.created, now)
        self.fleet_snapshot = fleet
        self.queue_depths.append(int(fleet["queued"]))
        if self.views["fleet"].is_current:
            self.refresh_fleet_view()
        if changes.board_dirty:
            self.views["leaderboard"].mark_dirty()
        detail = self.views["detail"]
        if detail.is_current and any(row.id == detail.sid for row in changes.rows):
            detail.reload()
        self.tick_ms.append((time.perf_counter() - started) * 1000.0)

    def refresh_fleet_view(self) -> None:
        if self.fleet_snapshot is not None:
            self.views["fleet"].show(
                self.fleet_snapshot, list(self.queue_depths), self.data.autoscaler_events, self.clock()
            )

    # -- from worker threads to the UI thread -------------------------------------------------------------

    def deliver(self, callback: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Run `callback` on the UI thread, from a worker thread. Dropped when the console is closing: the
        app may have stopped, or the widgets the callback fills may already be gone."""

        def guarded() -> None:
            # A view whose widgets are gone (the console is closing) has nothing left to update.
            with contextlib.suppress(NoMatches):
                callback(*args, **kwargs)

        if not self.is_running:
            return
        with contextlib.suppress(RuntimeError):  # the app's loop stopped meanwhile
            self.call_from_thread(guarded)

    def say(self, message: str, **kwargs: Any) -> None:
        """A notification whose text is not all ours (exception text, a team's name): shown as written
        (controls visible, never parsed as markup), URL credentials redacted."""
        self.notify(safe_text(redact_urls_in(str(message))), markup=False, **kwargs)

    # -- what screens ask -------------------------------------------------------------------------------

    @property
    def submissions(self) -> SubmissionsScreen:
        return self.views["submissions"]

    def rows_newest_first(self) -> list[SubmissionRow]:
        return sorted(self.rows.values(), key=lambda row: (row.created_at, row.id), reverse=True)

    def state_counts(self) -> dict[str, int]:
        counts = Counter(row.state for row in self.rows.values())
        return {state.value: counts.get(state.value, 0) for state in _SUMMARY_ORDER}

    def spec_name(self) -> str | None:
        """The competition the board shows: the one most submissions belong to."""
        counts = Counter(row.spec_name for row in list(self.rows.values()))
        return counts.most_common(1)[0][0] if counts else None

    def open_detail(self, sid: str) -> None:
        self.selected_sid = sid
        self.switch_mode("detail")

    def current_submission(self) -> str | None:
        picker = getattr(self.screen, "selected", None)
        sid = picker() if callable(picker) else None
        return sid or self.selected_sid

    # -- keys -------------------------------------------------------------------------------------------

    def action_view(self, name: str) -> None:
        if name in ("detail", "logs") and self.current_mode == "submissions":
            self.selected_sid = self.submissions.selected() or self.selected_sid
        self.switch_mode(name)

    def action_help(self) -> None:
        self.push_screen(HelpScreen(self.readonly))

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # Read-only: stop and rescore are hidden from the footer and their keys do nothing.
        return not (self.readonly and action in ("stop", "rescore"))

    def action_stop(self) -> None:
        sid = self.current_submission()
        if sid is None:
            self.notify("no submission selected", severity="warning")
            return
        row = self.rows.get(sid)
        if row is not None and not row.active:
            self.notify(f"{sid} is already {row.state}; only queued or running ones stop", severity="warning")
            return
        team = row.team if row else "?"  # made safe by the row's reader; the dialog shows no markup
        body = (
            f"Stop submission {sid} of team {team}?\n\n"
            "Its queued jobs are cancelled and its running sandboxes killed; finished studies are kept. "
            f"The action is recorded in the audit log under {self.data.actor()!r}."
        )
        self.push_screen(
            ConfirmDialog(f"Stop {sid}", body, "Stop"),
            lambda yes: self._run_action("stop", sid) if yes else None,
        )

    def action_rescore(self) -> None:
        sid = self.current_submission()
        if sid is None:
            self.notify("no submission selected", severity="warning")
            return
        self._plan_rescore(sid)

    @work(thread=True, exclusive=True, group="plan")
    def _plan_rescore(self, sid: str) -> None:
        try:
            plan = self.data.rescore_plan(sid)
        except Exception as exc:
            self.deliver(self.say, f"rescore: {exc}", severity="error")
            return
        self.deliver(self._confirm_rescore, sid, plan)

    def _confirm_rescore(self, sid: str, plan: dict[str, Any]) -> None:
        if plan["state"] in ("queued", "running"):
            self.notify(f"{sid} is {plan['state']}; stop it first, then rescore", severity="warning")
            return
        body = (
            f"Rescore submission {sid} of team {safe_text(plan['team'])}?\n\n"
            f"Score version {plan['version']} will be created under spec {plan['spec']} "
            f"({plan['spec_hash']}) with the current baselines; its jobs go to the priority queue. "
            "Earlier versions stay readable and the leaderboard shows the last scored one meanwhile. "
            f"Recorded in the audit log under {self.data.actor()!r}."
        )
        self.push_screen(
            ConfirmDialog(f"Rescore {sid} as version {plan['version']}", body, "Rescore"),
            lambda yes: self._run_action("rescore", sid) if yes else None,
        )

    @work(thread=True, group="action")
    def _run_action(self, action: str, sid: str) -> None:
        try:
            sub = self.data.stop(sid) if action == "stop" else self.data.rescore(sid)
        except Exception as exc:  # the service's refusal (conflict, missing baselines...), one line
            self.deliver(self.say, f"{action} {sid}: {exc}", severity="error")
            return
        done = "stopped" if action == "stop" else f"rescoring as version {sub.score_version}"
        self.deliver(self.say, f"{sid} (team {sub.team}): {done}")

    def get_system_commands(self, screen: Screen):
        yield from super().get_system_commands(screen)
        for key, name in enumerate(VIEWS, start=1):
            yield SystemCommand(f"View: {name}", f"Show the {name} view (key {key})", self._view_cb(name))
        if not self.readonly:
            yield SystemCommand(
                "Stop submission", "Stop the selected submission (asks first)", self.action_stop
            )
            yield SystemCommand(
                "Rescore submission", "Rescore the selected submission (asks first)", self.action_rescore
            )
        yield SystemCommand("Keys", "Show the key help", self.action_help)

    def _view_cb(self, name: str) -> Callable[[], None]:
        return lambda: self.action_view(name)
