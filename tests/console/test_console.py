"""The organizer console on a real Redis: every view, stop and rescore through the service, read-only mode,
the filter, live keyed updates; and snapshots of the main screens (fixed data, injected clock)."""

from __future__ import annotations

import asyncio
import time

import pytest
from textual.widgets import DataTable, Log

from artifacts import archive
from competition import audit, service
from competition.submit import create_submission
from console.app import ConsoleApp
from console.data import ConsoleData
from console.screens.help import HelpScreen
from console.widgets.confirm import ConfirmDialog
from console.widgets.plot import BraillePlot
from console.widgets.table import RowTable
from queue_schema import keys
from queue_schema.records import load_submission, transition
from queue_schema.states import FailureCause, SubmissionState
from tests import console_helpers as fixed
from tests.conftest import SUBMISSIONS

SIZE = (160, 40)

# Textual's Pilot is async: anyio's pytest plugin (anyio comes with httpx) runs these tests on asyncio.
pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def until(pilot, condition, timeout: float = 20.0) -> None:
    """Let the app run until `condition()` holds (generous: the machine is shared)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await pilot.pause(0.05)


def table(app: ConsoleApp, selector: str) -> DataTable | RowTable:
    return app.screen.query_one(selector)


def column(app: ConsoleApp, selector: str, name: str) -> list[str]:
    grid = app.screen.query_one(selector)
    if isinstance(grid, RowTable):
        return grid.column_text(name)
    return [str(grid.get_cell(row.key, name)) for row in grid.ordered_rows]


def log_text(log: Log) -> list[str]:
    return [line for line in log.lines if line]


def real_submission(r, team: str, spec=None):
    spec = spec or fixed.demo_spec()
    data = archive.pack(SUBMISSIONS / "random_search", spec.submission)
    return create_submission(r, team=team, data=data, spec=spec, phase="feedback", backend="process")


# -- data layer ------------------------------------------------------------------------------------------


def test_data_load_then_poll_returns_only_what_changed(r):
    ids = fixed.fixed_competition(r)
    data = ConsoleData(r)
    rows = data.load()
    assert [row.id for row in rows] == list(reversed(ids.values()))  # newest first
    assert data.poll().rows == []
    transition(r, ids["queued_alpha"], SubmissionState.RUNNING)
    changes = data.poll()
    assert [(row.id, row.state) for row in changes.rows] == [(ids["queued_alpha"], "running")]
    assert not changes.board_dirty
    transition(r, ids["queued_alpha"], SubmissionState.SCORED, score=50.0)
    assert data.poll().board_dirty


def test_braille_plot_draws_both_series():
    lines = BraillePlot([("a", [1.0, 0.5, 0.0], "cyan"), ("b", [1.0, 1.0, 1.0], "yellow")]).render_lines(
        30, 6
    )
    assert len(lines) == 6
    drawn = "".join(line.plain for line in lines[:-1])
    assert any(0x2800 < ord(ch) <= 0x28FF for ch in drawn)
    assert "a" in lines[-1].plain and "b" in lines[-1].plain


# -- views -----------------------------------------------------------------------------------------------


async def test_every_view_shows_its_data(r):
    ids = fixed.fixed_competition(r)
    jobs_key = keys.submission_jobs(ids["running_gamma"], 1)
    r.sadd(jobs_key, "job-gamma-1")
    fixed.job_log(r, "job-gamma-1", [f"line {i}" for i in range(3000)] + ["[harness] study 0 complete"])
    fixed.heartbeat(r, "worker-1", "busy", "job-gamma-1", time.time())
    fixed.autoscaler_decision(r, time.time())
    app = ConsoleApp(r, refresh_s=0.2)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, app.ready.is_set)
        assert column(app, "#submissions-table", "id") == list(reversed(ids.values()))
        shown = column(app, "#submissions-table", "id")
        states = dict(zip(shown, column(app, "#submissions-table", "state"), strict=True))
        assert states[ids["failed_beta"]] == "failed"
        causes = column(app, "#submissions-table", "cause")
        assert any(c.startswith("optimizer_crashed: suggest raised") for c in causes)

        # Detail: the running submission (third newest row)
        await pilot.press("down", "down", "enter")
        await until(pilot, lambda: app.current_mode == "detail")
        await until(pilot, lambda: table(app, "#detail-studies").row_count > 0)
        assert app.screen.sid == ids["running_gamma"]
        assert "DT-iris-acc" in column(app, "#detail-studies", "problem / study")
        assert app.screen.query_one("#detail-plot")._series[1][1]  # a curve to draw

        # Logs of its job, follow mode, search
        await pilot.press("3")
        log = app.screen.query_one("#logs-log", Log)
        await until(pilot, lambda: len(log_text(log)) == 3001)
        await pilot.press("slash")
        await pilot.press(*"complete", "enter")
        await until(pilot, lambda: log_text(log) == ["[harness] study 0 complete"])
        fixed.job_log(r, "job-gamma-1", ["[harness] study 1 complete", "noise"])
        # followed, and filtered by the search
        await until(
            pilot, lambda: log_text(log) == ["[harness] study 0 complete", "[harness] study 1 complete"]
        )

        # Leaderboard: both scored teams, best first
        await pilot.press("4")
        await until(pilot, lambda: table(app, "#board-table").row_count == 2)
        assert column(app, "#board-table", "team") == ["alpha", "beta"]
        await pilot.press("p")  # the final phase: nobody yet
        await until(pilot, lambda: "final" in str(app.screen.query_one("#board-title").render()))

        # Fleet: the worker, its job, the autoscaler's decision
        await pilot.press("5")
        await until(pilot, lambda: table(app, "#fleet-workers").row_count == 1)
        assert column(app, "#fleet-workers", "current job") == ["job-gamma-1"]
        assert table(app, "#fleet-decisions").row_count == 1

        await pilot.press("question_mark")
        await until(pilot, lambda: isinstance(app.screen, HelpScreen))
        await pilot.press("escape")
        await pilot.press("q")


async def test_a_new_event_updates_rows_in_place(r):
    ids = fixed.fixed_competition(r)
    app = ConsoleApp(r, refresh_s=0.1)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, app.ready.is_set)
        screen = app.submissions
        grid = screen.table
        populated = screen.populations
        transition(r, ids["queued_alpha"], SubmissionState.RUNNING)
        await until(pilot, lambda: str(grid.get_cell(ids["queued_alpha"], "state")) == "running")
        fresh = real_submission(r, "gamma")
        await until(pilot, lambda: grid.row_count == 6)
        assert column(app, "#submissions-table", "id")[0] == fresh.id  # newest on top
        assert screen.populations == populated  # keyed updates, no reload
        assert len(app.tick_ms) >= 2


async def test_filter_by_team_state_and_text(r):
    ids = fixed.fixed_competition(r)
    app = ConsoleApp(r, refresh_s=0.2)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, app.ready.is_set)
        await pilot.press("slash")
        await pilot.press(*"team:beta", "enter")
        assert sorted(column(app, "#submissions-table", "id")) == sorted(
            [ids["scored_beta"], ids["failed_beta"]]
        )
        await pilot.press("slash")
        await pilot.press("ctrl+u", *"state:fail", "enter")
        assert column(app, "#submissions-table", "id") == [ids["failed_beta"]]
        # A row that starts matching the filter appears; one that stops matching leaves.
        transition(r, ids["running_gamma"], SubmissionState.FAILED)
        await until(pilot, lambda: table(app, "#submissions-table").row_count == 2)
        await pilot.press("escape")
        await until(pilot, lambda: table(app, "#submissions-table").row_count == 5)


# -- actions -----------------------------------------------------------------------------------------------


async def test_stop_asks_then_stops_through_the_service(r, monkeypatch):
    monkeypatch.setenv("BBO_ACTOR", "console-tester")
    sub = real_submission(r, "alpha")
    app = ConsoleApp(r, refresh_s=0.2)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, app.ready.is_set)
        await pilot.press("s")
        await until(pilot, lambda: isinstance(app.screen, ConfirmDialog))
        body = str(app.screen.query_one("#dialog-body").render())
        assert sub.id in body and "alpha" in body
        await pilot.press("n")  # cancelled: nothing happens
        await pilot.pause(0.2)
        assert load_submission(r, sub.id).state == SubmissionState.QUEUED
        await pilot.press("s")
        await until(pilot, lambda: isinstance(app.screen, ConfirmDialog))
        await pilot.press("y")
        await until(pilot, lambda: load_submission(r, sub.id).state == SubmissionState.STOPPED)
        await until(pilot, lambda: str(app.submissions.table.get_cell(sub.id, "state")) == "stopped")
    (entry,) = audit.read(r, target=sub.id)
    assert (entry.action, entry.actor) == ("stop", "console-tester")


async def test_rescore_asks_naming_the_version_then_creates_it(r, monkeypatch):
    monkeypatch.setenv("BBO_ACTOR", "console-tester")
    sub = real_submission(r, "beta")
    service.stop(r, sub.id, actor="setup")
    app = ConsoleApp(r, refresh_s=0.2)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, app.ready.is_set)
        await pilot.press("r")
        await until(pilot, lambda: isinstance(app.screen, ConfirmDialog))
        body = str(app.screen.query_one("#dialog-body").render())
        assert "version 2" in body and "beta" in body
        await pilot.press("y")
        await until(pilot, lambda: load_submission(r, sub.id).score_version == 2)
        await until(pilot, lambda: str(app.submissions.table.get_cell(sub.id, "state")) == "queued")
    assert load_submission(r, sub.id).state == SubmissionState.QUEUED
    assert [e.action for e in audit.read(r, target=sub.id) if e.actor == "console-tester"] == ["rescore"]


async def test_a_hostile_team_name_and_log_are_shown_as_text_never_parsed(r):
    """Markup in a team's name (records take what they are given), in its failure message and in its
    job log: shown as written in the table, the stop dialog, the detail title and the log; an action
    tag (`[ @click=app.quit]`, which Rich's escape leaves to Textual) never becomes one."""
    spec = fixed.demo_spec()
    team = "evil[ @click=app.quit][/]\x1b]0;t\x07"
    sub = fixed.record(r, "s0000000eeeeeeeee1", team, fixed.NOW, spec)
    r.sadd(keys.submission_jobs(sub.id, 1), "job-evil-1")
    fixed.job_log(r, "job-evil-1", ["[/] [link=file:///etc/passwd]x[/link] \x1b]52;c;aGk=\x07 \x9b2J"])
    app = ConsoleApp(r, refresh_s=0.2)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, app.ready.is_set)
        assert column(app, "#submissions-table", "team") == ["evil[ @click=app.quit][/]␛]0;t␇"]
        await pilot.press("s")  # a MarkupError in the dialog's body before
        await until(pilot, lambda: isinstance(app.screen, ConfirmDialog))
        body = app.screen.query_one("#dialog-body").render()
        assert "evil[ @click=app.quit][/]␛]0;t␇" in str(body)
        await pilot.press("n")
        await pilot.press("3")
        log = app.screen.query_one("#logs-log", Log)
        await until(pilot, lambda: len(log_text(log)) == 1)
        assert log_text(log) == ["[/] [link=file:///etc/passwd]x[/link] ␛]52;c;aGk=␇ \\u009b2J"]
        await pilot.press("2")
        await until(pilot, lambda: app.screen.sid == sub.id)
        await until(pilot, lambda: "evil" in str(app.screen.query_one("#detail-title").render()))
        assert app.is_running  # no action ran


async def test_a_held_refund_and_an_expired_log_are_said_so(r):
    """A refund past the team's daily cap waits for an organizer: the submissions view and the detail
    say so (and `refund:held` filters for them); a job whose log expired after the spec's retention says
    that its log is gone instead of showing an empty log."""
    from runtime import lifecycle

    spec = fixed.demo_spec()
    r.set(keys.spec(spec.hash), spec.to_json())
    old = fixed.NOW - 30 * 86_400  # long past the 14 days of retention
    subs = [fixed.record(r, f"s0000000ffffffff{i:02d}", "flaky", old + i, spec) for i in range(4)]
    for sub in subs:
        lifecycle.fail(r, sub.id, 1, FailureCause.INFRASTRUCTURE, "worker lost")
    held = subs[-1]
    r.hset(
        keys.submission(held.id),
        "record",
        load_submission(r, held.id).model_copy(update={"updated_at": old}).to_json(),
    )
    r.sadd(keys.submission_jobs(held.id, 1), "job-expired-1")
    app = ConsoleApp(r, refresh_s=0.2, clock=lambda: fixed.NOW)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, app.ready.is_set)
        causes = column(app, "#submissions-table", "cause")
        assert sum(cause.startswith("refund held!") for cause in causes) == 1, causes
        await pilot.press("slash")
        await pilot.press(*"refund:held", "enter")
        await until(pilot, lambda: len(column(app, "#submissions-table", "cause")) == 1)
        await pilot.press("enter")
        await until(pilot, lambda: app.screen.sid == held.id)
        await until(pilot, lambda: "refund held" in str(app.screen.query_one("#detail-title").render()))
        assert f"bbo admin refund {held.id}" in str(app.screen.query_one("#detail-title").render())
        await pilot.press("3")
        log = app.screen.query_one("#logs-log", Log)
        await until(pilot, lambda: len(log_text(log)) == 1)
        assert "log is gone: logs are kept 14 days" in log_text(log)[0]


async def test_readonly_hides_and_disables_the_actions(r):
    sub = real_submission(r, "alpha")
    app = ConsoleApp(r, readonly=True, refresh_s=0.2)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, app.ready.is_set)
        actions = {active.binding.action for active in app.screen.active_bindings.values()}
        assert "stop" not in actions and "rescore" not in actions  # not in the footer either
        assert "view('fleet')" in actions
        await pilot.press("s")
        await pilot.pause(0.3)
        assert not isinstance(app.screen, ConfirmDialog)
        assert load_submission(r, sub.id).state == SubmissionState.QUEUED


# -- snapshots -----------------------------------------------------------------------------------------------


def _fixed_app(r) -> ConsoleApp:
    fixed.fixed_competition(r)
    fixed.heartbeat(r, "worker-1", "busy", "s0000000ccccccccc1-v1-DT-iris-acc-c0", fixed.NOW - 3)
    fixed.heartbeat(r, "worker-2", "idle", None, fixed.NOW - 45)
    fixed.autoscaler_decision(r, fixed.NOW - 120)
    return ConsoleApp(r, refresh_s=3600, clock=lambda: fixed.NOW)


def _ready_then(*keys_: str, wait_for: str | None = None):
    async def run_before(pilot) -> None:
        app = pilot.app
        while not app.ready.is_set():
            await asyncio.sleep(0.02)
        if keys_:
            await pilot.press(*keys_)
        if wait_for is not None:
            deadline = time.monotonic() + 20
            while not app.screen.query_one(wait_for).row_count and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        await pilot.pause(0.2)

    return run_before


@pytest.mark.parametrize(
    ("keys_", "wait_for"),
    [
        pytest.param((), None, id="submissions"),
        pytest.param(("down", "down", "enter"), "#detail-studies", id="detail"),
        pytest.param(("4",), "#board-table", id="leaderboard"),
        pytest.param(("5",), "#fleet-workers", id="fleet"),
    ],
)
def test_snapshot(r, snap_compare, keys_, wait_for):
    assert snap_compare(_fixed_app(r), terminal_size=SIZE, run_before=_ready_then(*keys_, wait_for=wait_for))


def test_admin_console_command_is_registered():
    from typer.testing import CliRunner

    from cli.main import app as bbo

    done = CliRunner().invoke(bbo, ["admin", "console", "--help"])
    assert done.exit_code == 0, done.output
    assert "--readonly" in done.output
