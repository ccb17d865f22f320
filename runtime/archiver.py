"""The mover: a complete score version's study data, job logs, job set and `study` events leave Redis for an
archive object (queue_schema/archive_store.py), written atomically and verified before the Redis copy is
dropped; its per-study normalized scores stay in Redis, compactly.

`archive_version` moves one version, in four steps:
  (a) the version is complete: the submission's state for it is scored, failed or stopped (or a rescore
      has superseded it), it ended more than `grace_s` ago (a failed version's jobs may run on for a few
      seconds), and no job of it runs: no job heartbeat, not popped, not in a started registry;
  (b) its keys are read (under WATCH) and the object is written;
  (c) the object is read back and verified: its bytes' sha256, and every study decoded from it equal to
      the same study decoded from Redis, every log line equal;
  (d) one MULTI/EXEC marks the version archived (keys.score_version's `archived`: object, sha256, store,
      how many events it holds), keeps the per-study normalized scores of a scored version
      (keys.study_scores, study_codec.encode_scores) and deletes the study keys, the archived logs, the
      job set and the version's scratch, and takes the version's `study` events out of the submission's
      event stream (the others keep their ids and order). A late write to a watched key aborts it: the
      version is tried again later.
A crash at any step loses nothing: before (d) Redis is untouched (an object may exist, unmarked: the next
run rewrites it, or reuses it when its bytes are the same); (d) is one transaction; a mark is only ever
written after its object was verified. Readers (queue_schema/records/) then read the archive:
read_studies, read_job_log_entries, version_jobs and read_events (which merges the archived events back).

`archive_due` is the periodic part, run by the reaper's tick (runtime/recovery.reap_if_due) with a small
budget and by `bbo admin archive`: versions that ended are queued from the event stream
(records.note_ended_versions), and those past their grace period are archived, oldest first.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import redis
from rq import Queue

from queue_schema import archive_store, keys, records, study_codec
from queue_schema.archive_store import ArchiveStore, crash_point
from queue_schema.connection import rq_connection
from queue_schema.payloads import Submission
from queue_schema.states import TERMINAL_STATES, SubmissionState
from runtime import rq_adapter, versions
from runtime.spec import Spec

log = logging.getLogger("bbo.archiver")

GRACE_ENV = "BBO_ARCHIVE_GRACE_S"
GRACE_S = 300.0  # after a version ends, before it is archived: its jobs notice the end within seconds
RETRY_S = 60.0  # a version that could not go yet (a job still runs, a late write) is tried again after this
TICK_BUDGET = 2  # versions archived per reaper tick (each a few hundred ms at most)


def grace_s() -> float:
    raw = os.environ.get(GRACE_ENV, "").strip()
    return float(raw) if raw else GRACE_S


@dataclass
class ArchiveReport:
    """What `archive_version` did with one version: `outcome` is archived, already (archived before),
    waiting (not complete, in its grace period, or a job of it still runs: `reason`), raced (a late
    write: tried again later) or gone (no such submission or version)."""

    submission: str
    version: int
    outcome: str
    reason: str = ""
    object: str | None = None
    sha256: str | None = None
    bytes: int = 0
    studies: int = 0
    logs: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class DueReport:
    """What one `archive_due` did."""

    archived: list[ArchiveReport] = field(default_factory=list)
    waiting: list[ArchiveReport] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    pending: int = 0  # versions still queued (not yet due, or tried again later)
    taken: int = 0  # versions looked at

    def to_dict(self) -> dict[str, Any]:
        return {
            "archived": [a.to_dict() for a in self.archived],
            "waiting": [w.to_dict() for w in self.waiting],
            "errors": self.errors,
            "pending": self.pending,
        }


class VerifyError(RuntimeError):
    """The object read back is not what was written: nothing is marked, nothing dropped."""


def archive_version(
    r: redis.Redis,
    sid: str,
    version: int,
    store: ArchiveStore | None = None,
    *,
    now: float | None = None,
    grace: float | None = None,
    rq_conn: redis.Redis | None = None,
) -> ArchiveReport:
    """Move one score version's data to the archive when it may go (see the module's docstring)."""
    started = time.monotonic()
    now = time.time() if now is None else now
    grace = grace_s() if grace is None else grace
    report = ArchiveReport(submission=sid, version=version, outcome="waiting")
    if (mark := records.archive_mark(r, sid, version)) is not None:
        return _marked(report, "already", mark)
    sub = records.load_submission(r, sid)
    if sub is None or not 1 <= version <= sub.score_version:
        report.outcome, report.reason = "gone", "no such submission or score version"
        return report
    ended = _ended_at(r, sub, version)
    if ended is None:
        report.reason = f"version {version} is {sub.state.value}"
        return report
    if now - ended < grace:
        report.reason = f"ended {now - ended:.0f} s ago, within the {grace:g} s grace period"
        return report
    jobs = sorted(r.smembers(keys.submission_jobs(sid, version)))
    busy = sorted(set(jobs) & running_jobs(r, jobs, rq_conn=rq_conn))
    if busy:
        report.reason = f"job {busy[0]} still runs"
        return report
    spec = _spec(r, sub, version)
    problems = spec.phase(sub.phase).problems if spec is not None else None
    scores = _study_scores(r, sub, version, spec)
    store = store or archive_store.open_store()
    counts: dict[str, int] = {}

    def write_and_verify(payload: dict[str, Any]) -> records.ArchiveMark:
        crash_point("snapshot")
        mark = _write(store, sid, version, payload)
        crash_point("object_written")
        counts.update(_verify(r, store, mark, payload, sid, version))
        crash_point("verified")
        return mark

    outcome, mark = records.archive_version_data(
        r, sid, version, problems, write_and_verify, study_scores=scores
    )
    crash_point("marked")
    report.seconds = time.monotonic() - started
    if mark is None:
        report.outcome, report.reason = outcome, "a key of the version changed while it was archived"
        return report
    report.studies, report.logs = counts.get("studies", 0), counts.get("logs", 0)
    _marked(report, outcome, mark)
    if outcome == "archived":
        records.add_event(r, "archived", sid, version=version, object=mark.object, bytes=mark.size)
        log.info("archived %s v%d: %s (%d bytes)", sid, version, mark.object, mark.size)
    return report


def _marked(report: ArchiveReport, outcome: str, mark: records.ArchiveMark) -> ArchiveReport:
    report.outcome, report.object, report.sha256, report.bytes = outcome, mark.object, mark.sha256, mark.size
    return report


def _ended_at(r: redis.Redis, sub: Submission, version: int) -> float | None:
    """When the version ended; None while it has not. A version a rescore superseded ended when it was
    closed (or, for records from before that was kept, long ago)."""
    if version < sub.score_version:
        closed = r.hget(keys.score_version(sub.id, version), "closed_at")
        return float(closed) if closed else 0.0
    return sub.updated_at if sub.state in TERMINAL_STATES else None


def _spec(r: redis.Redis, sub: Submission, version: int) -> Spec | None:
    try:
        return versions.spec_of_version(r, sub, version)
    except versions.ScoreError:
        return None


def _study_scores(r: redis.Redis, sub: Submission, version: int, spec: Spec | None) -> str | None:
    """A scored version's per-study normalized scores, as competition/final.study_scores keeps them (the
    final phase's bootstrap reads them), computed now if not kept yet; None for other versions or when
    the baselines are missing (a reader then computes them from the archive)."""
    scored = sub.state == SubmissionState.SCORED if version == sub.score_version else None
    if scored is None:
        scored = r.hget(keys.score_version(sub.id, version), "state") == SubmissionState.SCORED.value
    if not scored or spec is None or r.exists(keys.study_scores(sub.id, version)):
        return None
    try:
        baselines = versions.baselines_for(spec)
    except versions.BaselineError:
        return None
    out: dict[str, list[float]] = {}
    for problem in spec.phase(sub.phase).problems:
        found = records.read_studies(r, sub.id, version, problem)
        values = [
            versions.stored_or_computed(baselines, problem, found[i], spec.rounds) for i in sorted(found)
        ]
        if not values or any(v is None for v in values):
            return None
        out[problem] = values
    return study_codec.encode_scores(baselines.version, out)


def _write(store: ArchiveStore, sid: str, version: int, payload: dict[str, Any]) -> records.ArchiveMark:
    """Write the object, unless the store already holds these exact bytes (a rerun after a crash)."""
    name = archive_store.object_name(sid, version)
    data = archive_store.encode(payload)
    if store.get(name) != data:
        store.put(name, data)
    events = payload.get("events") or []
    return records.ArchiveMark(
        object=name,
        sha256=archive_store.digest(data),
        store=store.url,
        size=len(data),
        archived_at=payload["created_at"],
        events=len(events),
        last_event=events[-1][0] if events else "",
    )


def _verify(
    r: redis.Redis,
    store: ArchiveStore,
    mark: records.ArchiveMark,
    payload: dict[str, Any],
    sid: str,
    version: int,
) -> dict[str, int]:
    """Read the object back: its sha256 (store.load checks it), its keys, logs, jobs and events equal to the
    snapshot (`payload`, read under WATCH), and every study decoded from it equal to the same study read
    from Redis by `records.read_studies` (the readers' own decoding)."""
    try:
        stored = store.load(mark.object, mark.sha256)
    except archive_store.ArchiveError as exc:
        raise VerifyError(str(exc)) from None
    studies = 0
    for key, entry in payload["keys"].items():
        if stored["keys"].get(key) != entry:
            raise VerifyError(f"{mark.object}: {key} differs from Redis")
        prefix = keys.study_results(sid, version, "")
        if entry["type"] == "hash" and key.startswith(prefix):
            problem = key[len(prefix) :]
            from_archive = records.archived_studies_of(stored, sid, version, problem)
            if from_archive != records.read_studies(r, sid, version, problem):
                raise VerifyError(f"{mark.object}: the studies of {key} decode differently")
            studies += len(from_archive)
    if stored["keys"].keys() != payload["keys"].keys():
        raise VerifyError(f"{mark.object}: holds other keys than Redis")
    if stored["logs"] != payload["logs"] or stored.get("study_scores") != payload.get("study_scores"):
        raise VerifyError(f"{mark.object}: the logs or study scores differ from Redis")
    if stored.get("jobs") != payload["jobs"] or stored.get("events") != payload["events"]:
        raise VerifyError(f"{mark.object}: the job set or the events differ from Redis")
    return {"studies": studies, "logs": len(payload["logs"])}


def running_jobs(
    r: redis.Redis, jobs: list[str] | None = None, *, rq_conn: redis.Redis | None = None
) -> set[str]:
    """Job ids some process may be running: beating (keys.job_heartbeat), popped but not yet started
    (keys.dispatch_inflight), or in a queue's started registry. `jobs`: the ids asked about (the beats
    are read for those only)."""
    conn = rq_conn if rq_conn is not None else rq_connection()
    out = {
        job_id
        for queue in Queue.all(connection=conn)
        for _, job_id, _ in rq_adapter.started_entries(conn, queue.name)
    }
    out |= {m.decode() if isinstance(m, bytes) else m for m in conn.zrange(keys.dispatch_inflight(), 0, -1)}
    if jobs:
        pipe = r.pipeline(transaction=False)
        for job_id in jobs:
            pipe.exists(keys.job_heartbeat(job_id))
        out |= {job_id for job_id, beating in zip(jobs, pipe.execute(), strict=True) if beating}
    return out


def archive_due(
    r: redis.Redis,
    limit: int = TICK_BUDGET,
    *,
    store: ArchiveStore | None = None,
    now: float | None = None,
    grace: float | None = None,
    rq_conn: redis.Redis | None = None,
) -> DueReport:
    """Archive up to `limit` versions whose grace period is over, oldest end first; a version that cannot
    go yet is tried again RETRY_S later. Safe to run from several processes at once (each version's move
    is one WATCHed transaction; the loser finds it archived)."""
    now = time.time() if now is None else now
    grace = grace_s() if grace is None else grace
    report = DueReport()
    records.note_ended_versions(r)
    due = records.due_versions(r, now - grace, limit)
    report.taken = len(due)
    if due:
        store = store or archive_store.open_store()
        for sid, version in due:
            try:
                done = archive_version(r, sid, version, store, now=now, grace=grace, rq_conn=rq_conn)
            except Exception as exc:  # a store that is down, an object that does not verify: try later
                records.retry_version_at(r, sid, version, now - grace + RETRY_S)
                report.errors.append(f"{sid} v{version}: {type(exc).__name__}: {exc}")
                log.warning("archiver: %s v%d not archived: %s", sid, version, exc)
                continue
            if done.outcome in ("archived", "already", "gone"):
                records.version_archived_or_dropped(r, sid, version)
                if done.outcome == "archived":
                    report.archived.append(done)
            else:
                records.retry_version_at(r, sid, version, now - grace + RETRY_S)
                report.waiting.append(done)
    report.pending = records.pending_versions(r)
    return report


def archive_all(
    r: redis.Redis, *, store: ArchiveStore | None = None, grace: float | None = None, batch: int = 50
) -> DueReport:
    """Every version that ended and is past its grace period (`bbo admin archive --all`): the records are
    searched once for versions the queue may have missed, then the queue is worked through."""
    records.queue_ended_versions(r)
    total = DueReport()
    while True:
        # A version that cannot go yet is put RETRY_S later in the queue, so each is taken once here.
        step = archive_due(r, batch, store=store, grace=grace)
        total.archived += step.archived
        total.waiting += step.waiting
        total.errors += step.errors
        total.pending, total.taken = step.pending, total.taken + step.taken
        if not step.taken:
            return total


ARCHIVER_LOCK = "archiver"
GATEWAY_INTERVAL_S = 30.0  # how often the gateway's archiver looks for ended versions


def workers_archive() -> bool:
    """Whether the workers' reaper ticks move data into the archive: only when the archive is a store
    every machine reaches (BBO_ARCHIVE_URL: a shared folder, a bucket). The default archive is the state
    folder of the gateway's machine, and a worker on another machine writing into its own would put
    objects where no reader finds them: there the gateway archives (gateway_tick)."""
    return bool(os.environ.get(archive_store.ARCHIVE_URL_ENV, "").strip())


def gateway_tick(r: redis.Redis, holder: str) -> DueReport | None:
    """The gateway's share: `archive_tick` at most once per GATEWAY_INTERVAL_S across its processes (a
    lock left to expire); None when it was not this caller's turn."""
    if not r.set(keys.lock(ARCHIVER_LOCK), holder, nx=True, ex=max(1, int(GATEWAY_INTERVAL_S) - 1)):
        return None
    return archive_tick(r)


def archive_tick(r: redis.Redis, *, rq_conn: redis.Redis | None = None) -> DueReport | None:
    """The reaper's share (runtime/recovery.reap_if_due): `archive_due` with the tick's small budget; a
    failure is logged, never raised into the reaper."""
    try:
        return archive_due(r, TICK_BUDGET, rq_conn=rq_conn)
    except Exception:
        log.exception("archiver: tick failed")
        return None
