"""A baseline build on the fleet, in process: its units enqueued on the organizers' queue and counted like
scoring jobs, run by a real (simple, in-process) fair worker, each stored once; a rerun resumes without
enqueueing anything twice; a unit that failed for good is reported and enqueued again; the aggregate
equals the local build. A tiny spec on real objectives; the whole-stack test with killed workers is
tests/cli/test_baselines_fleet.py."""

from __future__ import annotations

import pytest
from rq import Queue

from baselines.build import build_baselines, plan_units
from queue_schema import keys, records
from queue_schema.connection import rq_connection
from runtime import baseline_fleet, dispatch
from tests.baseline_helpers import tiny_spec
from workers.baseline_unit import run_baseline_unit
from workers.fair_worker import FairSimpleWorker


def work(max_jobs: int | None = None) -> None:
    FairSimpleWorker(connection=rq_connection()).work(burst=True, max_jobs=max_jobs, logging_level="WARNING")


@pytest.fixture()
def plan():
    return tiny_spec(rounds=2, batch=2, random_studies=2, strong_rounds=2).baseline_plan()


def test_units_go_to_the_priority_queue_and_the_aggregate_equals_the_local_build(r, plan):
    started = baseline_fleet.start(r, plan)
    total = len(plan_units(plan))
    assert (started.total, started.stored, started.pending, started.enqueued) == (total, 0, 0, total)
    depths = dispatch.queue_depths(r)  # what the autoscaler reads
    assert depths["per_queue"][keys.PRIORITY_QUEUE]["depth"] == total and depths["queued"] == total
    assert records.build_progress(r, started.build_id).done == 0

    work()
    state = baseline_fleet.follow(r, plan, poll_s=0.01)
    assert state.complete and state.done == total
    fleet = baseline_fleet.aggregate(r, plan)
    local = build_baselines(plan, workers=1)
    assert fleet["problems"] == local["problems"] and fleet["version"] == local["version"]
    assert fleet["provenance"]["machine"]["workers"] == "fleet"


def test_a_rerun_resumes_and_enqueues_nothing_twice(r, plan):
    total = len(plan_units(plan))
    baseline_fleet.start(r, plan)
    work(max_jobs=2)
    again = baseline_fleet.start(r, plan)
    assert (again.stored, again.pending, again.enqueued) == (2, total - 2, 0)
    assert Queue(keys.PRIORITY_QUEUE, connection=rq_connection()).count == total - 2
    work()
    done = baseline_fleet.start(r, plan)
    assert (done.stored, done.pending, done.enqueued) == (total, 0, 0)
    assert Queue(keys.PRIORITY_QUEUE, connection=rq_connection()).count == 0


def test_a_unit_run_twice_is_stored_once(r, plan):
    baseline_fleet.start(r, plan)
    job = Queue(keys.PRIORITY_QUEUE, connection=rq_connection()).jobs[0]
    first = run_baseline_unit(job.args[0])
    assert first["stored"] is True
    stored = records.read_units(r, job.args[0]["build_id"])
    # A requeued copy (its worker died after storing): nothing runs, nothing changes.
    assert run_baseline_unit(job.args[0])["stored"] is False
    assert records.read_units(r, job.args[0]["build_id"]) == stored
    # And a second store of the same unit, racing the first, is refused by the store itself.
    assert not records.store_unit(r, job.args[0]["build_id"], job.args[0]["unit"], [[[0.0, 0.0]]])


def test_a_unit_that_failed_for_good_is_reported_then_enqueued_again(r, plan):
    bid = baseline_fleet.build_id(plan)
    victim = plan_units(plan)[0]
    # A job of that unit that cannot succeed (its payload does not match its unit), run to failure.
    bad = baseline_fleet._job_options(bid, victim, 0.1) | {"retry": None}
    bad["args"] = ({**bad["args"][0], "unit": "random:nowhere:0"},)
    Queue(keys.PRIORITY_QUEUE, connection=rq_connection()).enqueue_call(**bad)
    first = baseline_fleet.start(r, plan)
    assert first.pending == 1  # queued already: not enqueued a second time
    work()
    (failure,) = baseline_fleet.failed_units(r, plan)
    assert failure.startswith(victim.label) and "does not match" in failure
    with pytest.raises(baseline_fleet.FleetBuildFailed, match="rerun the command"):
        baseline_fleet.follow(r, plan, poll_s=0.01, check_failures_s=0)
    again = baseline_fleet.start(r, plan)
    assert (again.pending, again.enqueued) == (0, 1)
    work()
    assert baseline_fleet.follow(r, plan, poll_s=0.01).complete
    assert baseline_fleet.failed_units(r, plan) == []
