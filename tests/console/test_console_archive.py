"""The console on an archived score version: the logs view shows a job's log from the archive and says
so (runtime/archiver.py moved it out of Redis)."""

from __future__ import annotations

import pytest
from textual.widgets import Log

from console.app import ConsoleApp
from queue_schema import keys, records
from runtime import archiver
from tests.console.test_console import SIZE, log_text, until
from tests.runtime.test_archiver import scored, store  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("unsafe_ok")]


async def test_an_archived_jobs_log_is_shown_from_the_archive_and_said_so(r, scored):  # noqa: F811
    jobs = sorted(records.version_jobs(r, scored.id, 1))
    live = [line for _, line in records.read_job_log_entries(r, jobs[0], "-", 1000)]
    assert live
    assert archiver.archive_version(r, scored.id, 1, grace=0).outcome == "archived"
    assert not r.exists(keys.job_log(jobs[0]))
    records._load_archive.cache_clear()  # a console started afterwards: cold

    app = ConsoleApp(r, refresh_s=0.2)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, app.ready.is_set)
        await pilot.press("enter")
        await until(pilot, lambda: getattr(app.screen, "sid", None) == scored.id)
        await pilot.press("3")
        log = app.screen.query_one("#logs-log", Log)
        await until(pilot, lambda: len(log_text(log)) > len(live))
        shown = log_text(log)
        assert "archived on" in shown[0] and "shown from the archive" in shown[0]
        assert all(line in "\n".join(shown) for line in live[:3])
