"""The console's fleet view shows a baseline build running on the fleet as one row: units done / total and
its ETA, then where its file went; nothing (no room taken) when no build ran. A real build of a tiny spec,
its units run by an in-process fair worker, the clock injected."""

from __future__ import annotations

import time

import pytest
from textual.widgets import Static

from console.app import ConsoleApp
from queue_schema import records
from queue_schema.connection import rq_connection
from runtime import baseline_fleet
from tests.baseline_helpers import tiny_spec
from workers.fair_worker import FairSimpleWorker

SIZE = (160, 40)
T0 = 1_790_000_000.0

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def until(pilot, condition, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await pilot.pause(0.05)


def row(app: ConsoleApp) -> Static:
    return app.screen.query_one("#fleet-pipelines", Static)


async def test_a_baseline_build_is_a_row_of_the_fleet_view(r):
    plan = tiny_spec(rounds=2, batch=2, random_studies=2, strong_rounds=2).baseline_plan()
    now = {"t": T0}
    app = ConsoleApp(r, refresh_s=0.1, clock=lambda: now["t"])
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, app.ready.is_set)
        await pilot.press("5")
        await until(pilot, lambda: app.current_mode == "fleet")
        assert not row(app).display  # no build: the view is as it always was

        started = baseline_fleet.start(r, plan, now=T0)
        FairSimpleWorker(connection=rq_connection()).work(burst=True, max_jobs=2, logging_level="WARNING")
        now["t"] = T0 + 10  # 2 units in 10 s, 4 to go: 20 s
        await until(pilot, lambda: row(app).display and "2/6 units" in str(row(app).render()))
        text = str(row(app).render())
        assert "baselines tiny" in text and "ETA 0m20s" in text and started.build_id in text

        FairSimpleWorker(connection=rq_connection()).work(burst=True, logging_level="WARNING")
        records.mark_written(r, started.build_id, "/srv/specs/tiny.baselines.json", "v1", T0 + 30)
        await until(pilot, lambda: "6/6 units" in str(row(app).render()))
        assert "written /srv/specs/tiny.baselines.json" in str(row(app).render())
        await pilot.press("q")
