"""Recovery: notice jobs that nobody runs any more and give them back to the queue.

One function owns this, `reap`. Every worker calls it through a fleet-wide lock every few seconds
(workers/heartbeat.py, `reap_if_due`); the autoscaler and the console may call it too. It is a function
of Redis state and `now` only, idempotent, and safe when two reapers race: each job is claimed in one
WATCH/MULTI transaction that succeeds only while the job's execution is still in its started registry.

Liveness comes from two heartbeats, keys with a TTL that a dead process stops refreshing:
- the worker's (keys.heartbeat, from a thread of the worker's main process, naming the job it runs);
- the job's own (keys.job_heartbeat, from the work horse running it, naming its current study).
A started job is *dead* when neither speaks for it and it started more than START_GRACE_S ago (a horse
needs a moment before its first beat). It is requeued at the front of its own queue and resumes at its
next unfinished study: study results are write-once and counted by the same script that writes them,
so nothing is counted twice. A job running past its RQ timeout plus STUCK_SLACK_S (by then RQ's own
monitor should have killed it) is *stuck*: it is requeued the same way and its worker is told to stop
that execution. A job reaped MAX_REAPS times fails its score version as `infrastructure`, which is not
charged to the team.

RQ notices a dead worker's job by itself only when the started-registry entry expires (job monitoring
interval + 60 s = 90 s), and then through the failure callback, spending one of the job's retries. The
reaper acts well before that and removes the entry, so RQ's cleanup never sees the job.

Clocks: START_GRACE_S and the stuck test compare `now` with the start time the job's worker recorded,
so machines are assumed to agree within a few seconds (NTP); liveness itself is a key's TTL, kept by the
Redis server alone.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import redis
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus

from queue_schema import keys
from queue_schema.connection import rq_connection
from queue_schema.payloads import Heartbeat, ScoreJob
from queue_schema.records import add_event, load_submission
from queue_schema.states import ACTIVE_STATES, FailureCause
from runtime import archiver, lifecycle, rq_adapter
from runtime.enqueue import enqueue_jobs, expected_jobs
from runtime.spec import stored_spec

log = logging.getLogger("bbo.recovery")

ACTIVE_VALUES = frozenset(state.value for state in ACTIVE_STATES)

# A worker beats every WORKER_BEAT_S into a key that lives WORKER_HEARTBEAT_TTL_S (three missed beats);
# a job every JOB_BEAT_S into one that lives JOB_HEARTBEAT_TTL_S. START_GRACE_S covers the moment between
# RQ registering an execution and the first beat naming it (the worker's next beat, or the horse's first),
# a few seconds at most. With a reap every REAP_INTERVAL_S, a worker killed mid-job has its job requeued
# within about WORKER_HEARTBEAT_TTL_S + REAP_INTERVAL_S = 30 s, well inside the promised minute.
WORKER_BEAT_S = 5.0
WORKER_HEARTBEAT_TTL_S = 20
JOB_BEAT_S = 3.0
JOB_HEARTBEAT_TTL_S = 15
REAP_INTERVAL_S = 10
START_GRACE_S = 15.0
# RQ's monitor kills a horse at timeout + 60 s and looks every 30 s: past this, RQ is not going to.
STUCK_SLACK_S = 120.0
MAX_REAPS = 3
# Submissions younger than ENQUEUE_GRACE_S may still be enqueueing; older than ORPHAN_WINDOW_S are not
# looked at (a week: no submission waits that long, and the scan stays bounded).
ENQUEUE_GRACE_S = 60.0
ORPHAN_WINDOW_S = 7 * 24 * 3600.0
REAPS_META = "bbo_reaps"  # job.meta counter: how many times the reaper took this job back
REAPER_LOCK = "reaper"
_CLAIM_ATTEMPTS = 5

# Drop index entries whose heartbeat key is gone, and say which. KEYS: index, then each name's heartbeat
# key; ARGV: the names. Atomic, so a worker beating again right now is not dropped.
_DROP_DEAD_WORKERS = """
local dead = {}
for i, name in ipairs(ARGV) do
  if redis.call('EXISTS', KEYS[i + 1]) == 0 then
    redis.call('ZREM', KEYS[1], name)
    table.insert(dead, name)
  end
end
return dead
"""


@dataclass
class ReapReport:
    """What one `reap` did: job ids requeued and failed (stuck ones are in one of those too), and the
    workers found dead."""

    requeued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    stuck: list[str] = field(default_factory=list)
    dead_workers: list[str] = field(default_factory=list)
    restored: list[str] = field(default_factory=list)  # submissions whose missing jobs were enqueued

    def to_dict(self) -> dict[str, list[str]]:
        return asdict(self)

    def __bool__(self) -> bool:
        return any((self.requeued, self.failed, self.stuck, self.dead_workers, self.restored))


@dataclass
class _Started:
    """One execution in a started registry, as the reaper sees it."""

    queue: str
    composite: str  # the registry entry: "job_id:execution_id"
    job_id: str
    execution_id: str
    worker: str
    started_at: float | None
    timeout: int | None


# -- the fleet --------------------------------------------------------------------------------------


def workers(r: redis.Redis) -> list[Heartbeat]:
    """The live workers' last heartbeats (for the fleet view and the autoscaler), by name."""
    names = r.zrange(keys.heartbeats_index(), 0, -1)
    pipe = r.pipeline(transaction=False)
    for name in names:
        pipe.hget(keys.heartbeat(name), "json")
    out = []
    for raw in pipe.execute():
        if raw:
            try:
                out.append(Heartbeat.from_json(raw))
            except ValueError:
                continue  # a newer worker's payload: alive, but not for this reader to show
    return sorted(out, key=lambda hb: hb.worker)


def _running_jobs(r: redis.Redis) -> dict[str, str]:
    """Live worker name -> the job id it says it runs ("" when idle)."""
    names = r.zrange(keys.heartbeats_index(), 0, -1)
    pipe = r.pipeline(transaction=False)
    for name in names:
        pipe.hmget(keys.heartbeat(name), "json", "job")
    return {name: job or "" for name, (raw, job) in zip(names, pipe.execute(), strict=True) if raw}


def _drop_dead_workers(r: redis.Redis, conn: redis.Redis, queues: list[Queue]) -> list[str]:
    names = r.zrange(keys.heartbeats_index(), 0, -1)
    if not names:
        return []
    dead = r.eval(
        _DROP_DEAD_WORKERS,
        1 + len(names),
        keys.heartbeats_index(),
        *(keys.heartbeat(n) for n in names),
        *names,
    )
    if dead:
        # Our heartbeat comes from a thread of the worker's own process, so its silence means the process
        # is gone (or frozen; one that wakes up keeps working, and reappears in our index at its next beat).
        # RQ would list it for up to 90 s busy or 8 min idle, until its own key expires: forget it now.
        pipe = conn.pipeline(transaction=False)
        rq_adapter.forget_workers(pipe, dead, [queue.name for queue in queues])
        pipe.execute()
    return sorted(dead)


# -- started jobs -----------------------------------------------------------------------------------


def _started(conn: redis.Redis, queues: list[Queue]) -> list[_Started]:
    """Every execution in every queue's started registry (read as is: RQ's own cleanup must not run here,
    it would fail expired jobs through the failure callback instead of requeueing them)."""
    entries = [
        (queue.name, *entry) for queue in queues for entry in rq_adapter.started_entries(conn, queue.name)
    ]
    details = rq_adapter.run_details(conn, [(composite, job_id) for _, composite, job_id, _ in entries])
    return [
        _Started(
            queue=queue,
            composite=composite,
            job_id=job_id,
            execution_id=execution_id,
            worker=worker,
            started_at=started_at,
            timeout=timeout,
        )
        for (queue, composite, job_id, execution_id), (worker, started_at, timeout) in zip(
            entries, details, strict=True
        )
    ]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _verdict(job: _Started, beating: bool, running: dict[str, str], now: float) -> str | None:
    """What to do with a started job: "dead", "stuck", or None to leave it alone."""
    age = math.inf if job.started_at is None else now - job.started_at
    limited = job.started_at is not None and job.timeout is not None and job.timeout >= 0
    if limited and age > job.timeout + STUCK_SLACK_S:
        return "stuck"
    if beating or (job.worker and running.get(job.worker) == job.job_id):
        return None
    return "dead" if age > START_GRACE_S else None


def reap(r: redis.Redis, now: float | None = None, *, rq_conn: redis.Redis | None = None) -> ReapReport:
    """Requeue (or, after MAX_REAPS, fail) every started job that no live process runs, and every stuck
    job; forget dead workers. `r` is a str client; `rq_conn` the bytes client RQ needs (default: the
    configured one)."""
    now = time.time() if now is None else now
    conn = rq_conn if rq_conn is not None else rq_connection()
    report = ReapReport()
    queues = Queue.all(connection=conn)
    report.dead_workers = _drop_dead_workers(r, conn, queues)
    report.requeued.extend(_requeue_lost_in_flight(r, conn, now))
    report.restored = _enqueue_missing_jobs(r, now)
    started = _started(conn, queues)
    if not started:
        return report
    running = _running_jobs(r)
    pipe = r.pipeline(transaction=False)
    for job in started:
        pipe.exists(keys.job_heartbeat(job.job_id))
    beating = [bool(n) for n in pipe.execute()]
    for job, beats in zip(started, beating, strict=True):
        verdict = _verdict(job, beats, running, now)
        if verdict is None:
            continue
        outcome = _claim(r, conn, job, verdict)
        if outcome is None:
            continue  # another reaper got there first, or the job ended meanwhile
        if verdict == "stuck":
            report.stuck.append(job.job_id)
            if job.worker:
                # Best effort: a worker that still listens kills the horse; the job is requeued either way.
                rq_adapter.stop_execution(conn, job.worker, job.job_id, job.execution_id)
        (report.failed if outcome == "failed" else report.requeued).append(job.job_id)
        log.warning("reaper: %s job %s (%s, worker %s)", outcome, job.job_id, verdict, job.worker or "?")
    return report


def _requeue_lost_in_flight(r: redis.Redis, conn: redis.Redis, now: float) -> list[str]:
    """Jobs a worker popped but never started (it died in between): back to the front of their queue.

    A job leaves the in-flight set when its run is registered as started, so an entry older than
    START_GRACE_S whose job is still `queued` was taken by a process that is gone."""
    requeued = []
    for raw in conn.zrangebyscore(keys.dispatch_inflight(), 0, now - START_GRACE_S):
        job_id = _text(raw)
        # Only the caller that removes the entry acts on it, so racing reapers requeue once.
        if not conn.zrem(keys.dispatch_inflight(), job_id):
            continue
        try:
            job = Job.fetch(job_id, connection=conn)
        except NoSuchJobError:
            continue
        if job.get_status(refresh=False) != JobStatus.QUEUED:
            continue
        rq_adapter.push_front(conn, job.origin, job_id)
        payload = _payload(job)
        add_event(
            r,
            "job_requeued",
            payload.submission_id if payload else None,
            job=job_id,
            reason="taken from its queue by a worker that never started it",
        )
        log.warning("reaper: requeued job %s lost between dequeue and start", job_id)
        requeued.append(job_id)
    return requeued


def _enqueue_missing_jobs(r: redis.Redis, now: float) -> list[str]:
    """Active submissions (of the last week) with fewer enqueued jobs than their score version has: the
    process that accepted or rescored them died before enqueueing them all. Enqueue the missing ones.

    ENQUEUE_GRACE_S leaves a live process time to finish enqueueing (milliseconds in practice)."""
    ids = r.zrangebyscore(keys.submissions_index(), now - ORPHAN_WINDOW_S, now - ENQUEUE_GRACE_S)
    pipe = r.pipeline(transaction=False)
    for sid in ids:
        pipe.hmget(keys.submission(sid), "state", "score_version")
    active = [
        (sid, int(version))
        for sid, (state, version) in zip(ids, pipe.execute(), strict=True)
        if state in ACTIVE_VALUES and version
    ]
    restored = []
    for sid, version in active:
        enqueued = r.smembers(keys.submission_jobs(sid, version))
        sub = load_submission(r, sid)
        spec = stored_spec(r, sub.spec_hash) if sub else None
        if sub is None or spec is None or sub.score_version != version:
            continue
        missing = set(expected_jobs(sub, spec)) - enqueued
        if not missing:
            continue
        if not r.set(keys.lock(f"enqueue:{sid}:v{version}"), "1", nx=True, ex=60):
            continue  # another reaper is on it
        organizers = sub.source is not None or sub.score_version > 1
        added = enqueue_jobs(r, sub, spec, backend=sub.backend, priority=organizers, skip=frozenset(enqueued))
        add_event(r, "jobs_restored", sid, jobs=len(added), version=version)
        log.warning("reaper: enqueued %d missing jobs of %s v%d", len(added), sid, version)
        restored.append(sid)
    return restored


def reap_if_due(
    r: redis.Redis, holder: str, *, rq_conn: redis.Redis | None = None, interval: float = REAP_INTERVAL_S
) -> ReapReport | None:
    """Run `reap` unless some process did in the last `interval` seconds (a fleet-wide lock that is left
    to expire, so it also paces the fleet); None when it was not this caller's turn."""
    if not r.set(keys.lock(REAPER_LOCK), holder, nx=True, ex=max(1, int(interval) - 1)):
        return None
    report = reap(r, rq_conn=rq_conn)
    if archiver.workers_archive():  # else the gateway's machine archives (its state folder is the archive)
        archiver.archive_tick(r, rq_conn=rq_conn)  # scored data leaves Redis, a few versions per tick
    return report


def _payload(job: Job) -> ScoreJob | None:
    try:
        return ScoreJob.model_validate(job.args[0])
    except Exception:  # not one of ours, or an unreadable payload: still requeued, just not attributed
        return None


def _claim(r: redis.Redis, conn: redis.Redis, started: _Started, reason: str) -> str | None:
    """Take the execution away from its (dead or stuck) run and requeue the job, or fail it after
    MAX_REAPS: "requeued", "failed", or None if the entry is gone (another reaper, or the run ended)."""
    registry_key = rq_adapter.started_registry_key(started.queue)
    with conn.pipeline() as pipe:
        for _ in range(_CLAIM_ATTEMPTS):
            try:
                # Every end of a run (success, failure, retry, RQ's own cleanup, another reaper's claim)
                # writes the job hash, so watching it makes "the entry is still there" hold until EXEC.
                rq_adapter.watch_run(pipe, started.job_id)
                if pipe.zscore(registry_key, started.composite) is None:
                    pipe.unwatch()
                    return None
                try:
                    job = Job.fetch(started.job_id, connection=conn)
                except NoSuchJobError:
                    pipe.multi()
                    pipe.zrem(registry_key, started.composite)
                    pipe.execute()
                    return None
                payload = _payload(job)
                reaps = int(job.meta.get(REAPS_META, 0)) + 1
                give_up = reaps >= MAX_REAPS
                if give_up and payload is not None:
                    # Before the claim, so that a reaper dying in between cannot leave the version running
                    # with no job left to finish it; failing twice is a no-op.
                    lifecycle.fail(
                        r,
                        payload.submission_id,
                        payload.score_version,
                        FailureCause.INFRASTRUCTURE,
                        f"scoring infrastructure error (a job's worker was lost {reaps} times)",
                    )
                job.meta[REAPS_META] = reaps
                pipe.multi()
                rq_adapter.delete_execution(conn, pipe, job, started.execution_id, started.worker)
                if give_up:
                    rq_adapter.fail_job(conn, pipe, job, f"reaped {reaps} times")
                else:
                    rq_adapter.requeue_at_front(conn, pipe, job)
                _event(pipe, payload, started, reason, reaps, give_up)
                pipe.execute()
                return "failed" if give_up else "requeued"
            except redis.WatchError:
                continue
    return None


def _event(
    pipe: Any, payload: ScoreJob | None, started: _Started, reason: str, reaps: int, give_up: bool
) -> None:
    details: dict[str, Any] = {
        "job": started.job_id,
        "reason": "no heartbeat" if reason == "dead" else "stuck past its time limit",
        "worker": started.worker,
        "reaps": reaps,
    }
    if payload is not None:
        details |= {"problem": payload.problem, "chunk": payload.chunk, "version": payload.score_version}
    sid = payload.submission_id if payload is not None else None
    add_event(pipe, "job_abandoned" if give_up else "job_requeued", sid, **details)
