"""Baselines on the fleet: a spec's baseline build as one RQ job per unit (a problem's random-search study,
or its strong run) on the organizers' priority queue, which every worker empties first and the
autoscaler counts like any other (`dispatch.queue_depths`).

- A build is named by what its units depend on (`build_id`: problems, study shape, baseline settings),
  so the same command run again finds it: units already stored are not enqueued again, nor are units
  whose job is still queued or running; only units never enqueued, or whose job failed for good, are.
- A unit is stored once (records.store_unit, HSETNX), whoever runs it: a killed worker's job is requeued
  by the reaper like a scoring job (runtime/recovery.py takes back any started job nobody runs), and a
  rerun that finds its unit stored stores nothing.
- When every unit is stored, the command that follows the build aggregates them (`aggregate`) into the
  same baseline file the local build writes: same losses, same bayesmark computation, same version.
  The command rather than the worker storing the last unit, because the file belongs where the
  organizer's commands look (beside the spec file or in that machine's state folder), which a worker on
  another machine cannot reach; and because aggregating is deterministic and cheap, a command stopped
  meanwhile loses nothing: its rerun finds every unit stored and writes the file at once.

The job function is named, not imported (the workers sit above this layer), as runtime/enqueue.py does.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import redis
from rq import Queue, Retry
from rq.job import Job, JobStatus

from baselines.build import Unit, baseline_file, plan_units, seed_salt, strong_rounds
from baselines.store import BaselinePlan
from queue_schema import keys, records
from queue_schema.connection import rq_connection
from queue_schema.ids import baseline_unit_job_id
from queue_schema.payloads import BaselineUnitJob
from runtime import dispatch

UNIT_FUNCTION = "workers.baseline_unit.run_baseline_unit"
BUILD_FORMAT = 1  # part of the build id: a change in what a unit stores starts a new build
RESULT_TTL_S = 7 * 24 * 3600
FAILURE_TTL_S = 30 * 24 * 3600
# A unit's time limit: its evaluations at TIMEOUT_EVAL_MARGIN x the cost table's figure, plus the
# optimizer's own work per round (the strong optimizer fits a model every round), plus slack to start.
TIMEOUT_EVAL_MARGIN = 3.0
ROUND_SLACK_S = 30.0
UNIT_SLACK_S = 300.0
# Job states in which a unit is someone's to run: not to be enqueued again.
PENDING = frozenset({JobStatus.QUEUED, JobStatus.STARTED, JobStatus.DEFERRED, JobStatus.SCHEDULED})
ENQUEUE_LOCK_S = 60

# progress(units done, units total, what is going on)
Progress = Callable[[int, int, str], None]


class FleetBuildFailed(Exception):
    """A unit's job failed for good (its retries spent, or reaped too often): the build cannot finish
    until it is enqueued again (rerunning the command does that)."""


@dataclass(frozen=True)
class Started:
    """What `start` found and did."""

    build_id: str
    total: int
    stored: int  # units stored before this call
    pending: int  # units whose job was queued or running already
    enqueued: int  # units this call enqueued


def build_id(plan: BaselinePlan) -> str:
    """The build's name in the store: a digest of everything its units' losses depend on."""
    what = {
        "format": BUILD_FORMAT,
        "spec": plan.name,
        "rounds": plan.rounds,
        "batch": plan.batch,
        "problems": list(plan.problems),
        "random_studies": plan.random_studies,
        "strong_rounds": strong_rounds(plan),
        "salt": seed_salt(plan),
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def unit_timeout(unit: Unit, seconds_per_eval: float) -> int:
    evals = unit.rounds * unit.batch
    return math.ceil(
        evals * seconds_per_eval * TIMEOUT_EVAL_MARGIN + unit.rounds * ROUND_SLACK_S + UNIT_SLACK_S
    )


def _ordered(plan: BaselinePlan) -> tuple[list[Unit], dict[str, float]]:
    """The build's units, longest first by the cost table, so that the last ones to run are short."""
    seconds = dispatch.costs_for(plan.name, plan.problems).seconds_per_eval
    units = plan_units(plan)
    return sorted(units, key=lambda u: -u.rounds * u.batch * seconds[u.problem]), seconds


def _statuses(conn: redis.Redis, job_ids: list[str]) -> list[JobStatus | None]:
    """Each job's status, None for a job RQ does not have (never enqueued, or expired)."""
    jobs = Job.fetch_many(job_ids, connection=conn) if job_ids else []
    return [None if job is None else job.get_status(refresh=False) for job in jobs]


def start(r: redis.Redis, plan: BaselinePlan, *, now: float | None = None) -> Started:
    """Register the build and enqueue every unit that is neither stored nor someone's to run already.

    Idempotent: a second call (the command rerun after Ctrl-C, or a second organizer) enqueues nothing
    new unless a unit's job failed for good or vanished. Two calls at once: one enqueues, the other
    only follows (a lock), so no unit is put on the queue twice."""
    now = time.time() if now is None else now
    bid = build_id(plan)
    units, seconds = _ordered(plan)
    stored = records.stored_units(r, bid)
    records.register_build(r, bid, plan.name, len(units), now)
    todo = [u for u in units if u.key not in stored]
    if not r.set(keys.lock(f"baselines:{bid}"), "1", nx=True, ex=ENQUEUE_LOCK_S):
        return Started(bid, len(units), len(stored), len(todo), 0)
    try:
        conn = rq_connection()
        queue = Queue(keys.PRIORITY_QUEUE, connection=conn)
        job_ids = [unit_job_id(bid, u) for u in todo]
        pending = enqueued = 0
        for unit, jid, status in zip(todo, job_ids, _statuses(conn, job_ids), strict=True):
            if status in PENDING:
                pending += 1
                continue
            if status is not None:  # failed for good (or stopped): its record goes, a fresh job comes
                Job.fetch(jid, connection=conn).delete()
            queue.enqueue_call(**_job_options(bid, unit, seconds[unit.problem]))
            enqueued += 1
    finally:
        r.delete(keys.lock(f"baselines:{bid}"))
    return Started(bid, len(units), len(stored), pending, enqueued)


def unit_job_id(bid: str, unit: Unit) -> str:
    return baseline_unit_job_id(bid, unit.kind, unit.problem, unit.study)


def _job_options(bid: str, unit: Unit, seconds_per_eval: float) -> dict:
    payload = BaselineUnitJob(
        build_id=bid,
        unit=unit.key,
        kind=unit.kind,
        problem=unit.problem,
        study=unit.study,
        rounds=unit.rounds,
        batch=unit.batch,
        salt=unit.salt,
        suite=None if unit.suite is None else {"name": unit.suite.name, **unit.suite.to_dict()},
    )
    return {
        "func": UNIT_FUNCTION,
        "args": (payload.model_dump(mode="json"),),
        "job_id": unit_job_id(bid, unit),
        "timeout": unit_timeout(unit, seconds_per_eval),
        "result_ttl": RESULT_TTL_S,
        "failure_ttl": FAILURE_TTL_S,
        # Trusted reference code: a failure is ours (a lost store connection, a timeout on a slow
        # machine); one more try, then the command reports it.
        "retry": Retry(max=1),
        "description": f"baselines {bid} {unit.label}",
    }


def failed_units(r: redis.Redis, plan: BaselinePlan) -> list[str]:
    """The units not stored whose job failed for good: "label: reason" each."""
    bid = build_id(plan)
    stored = records.stored_units(r, bid)
    todo = [u for u in plan_units(plan) if u.key not in stored]
    conn = rq_connection()
    job_ids = [unit_job_id(bid, u) for u in todo]
    out = []
    for unit, jid, status in zip(todo, job_ids, _statuses(conn, job_ids), strict=True):
        if status == JobStatus.FAILED:
            out.append(f"{unit.label}: {_reason(conn, jid)}")
    return out


def _reason(conn: redis.Redis, job_id: str) -> str:
    try:
        result = Job.fetch(job_id, connection=conn).latest_result()
    except Exception:  # the record went meanwhile: the status said enough
        return "failed"
    text = (getattr(result, "exc_string", None) or "failed").strip().splitlines()
    return text[-1] if text else "failed"


def follow(
    r: redis.Redis,
    plan: BaselinePlan,
    progress: Progress | None = None,
    *,
    poll_s: float = 1.0,
    check_failures_s: float = 10.0,
) -> records.BuildProgress:
    """Wait until every unit of the build is stored, reporting units done / total; raise
    FleetBuildFailed when a unit's job failed for good (nothing would ever store it)."""
    bid = build_id(plan)
    next_check = time.monotonic() + check_failures_s
    while True:
        state = records.build_progress(r, bid)
        if state is None:
            raise FleetBuildFailed(f"build {bid} of spec {plan.name!r} is not in the store")
        if progress:
            progress(state.done, state.total, _eta_text(state))
        if state.complete:
            return state
        if time.monotonic() >= next_check:
            failed = failed_units(r, plan)
            if failed:
                raise FleetBuildFailed(
                    f"{len(failed)} unit(s) failed on the fleet (first: {failed[0]}); "
                    "rerun the command to enqueue them again"
                )
            next_check = time.monotonic() + check_failures_s
        time.sleep(poll_s)


def _eta_text(state: records.BuildProgress) -> str:
    eta = state.eta_s(time.time())
    return "ETA -" if eta is None else f"ETA {eta / 60:.1f} min"


def collect(r: redis.Redis, plan: BaselinePlan) -> dict[Unit, np.ndarray]:
    """Every unit's losses as the local build holds them: arrays of (rounds, batch, 2)."""
    stored = records.read_units(r, build_id(plan))
    units = plan_units(plan)
    missing = [u.label for u in units if u.key not in stored]
    if missing:
        raise FleetBuildFailed(f"{len(missing)} unit(s) not stored yet (first: {missing[0]})")
    return {u: np.asarray(stored[u.key], dtype=float) for u in units}


def aggregate(r: redis.Redis, plan: BaselinePlan) -> dict:
    """The baseline file's content from the stored units (all of them: `follow` first)."""
    state = records.build_progress(r, build_id(plan))
    seconds = time.time() - state.started_at if state else 0.0
    return baseline_file(plan, collect(r, plan), "fleet", seconds)


def written(r: redis.Redis, plan: BaselinePlan, path: str, version: str) -> None:
    """Note in the store that the build's file is written (the console's row says so)."""
    records.mark_written(r, build_id(plan), path, version, time.time())
