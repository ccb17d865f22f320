"""Redis helpers for the shared records: submissions, transitions, study results, events, job logs.

Every writer goes through these, so the invariants live in one place: a transition follows the state
machine and is atomic (WATCH/MULTI); a study result is written once and counted once (one Lua script);
streams are capped.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import redis

from queue_schema import keys
from queue_schema.payloads import DAY_S, Event, Failure, Progress, StudyResult, Submission, utc_day
from queue_schema.states import TERMINAL_STATES, FailureCause, RefundState, SubmissionState, can_transition

EVENTS_MAXLEN = 100_000
SUBMISSION_EVENTS_MAXLEN = 2_000
JOB_LOG_MAXLEN = 5_000

# Counter fields kept beside the record in the submission hash (HINCRBY, never rewritten wholesale).
_COUNTERS = ("studies_done", "evals_done", "norm_sum", "norm_count")

# Write the study once; count it and announce it (its `study` event) only if this call wrote it, all in one
# script: a worker killed between two separate commands would leave a stored study with no event, and the
# retried job skips stored studies, so the event would never come. KEYS: results, submission, events,
# submission events. ARGV: index, json, evals, normalized score (or "" when no baseline), score version,
# event json (or "" for none), events cap, submission events cap.
_WRITE_STUDY = """
local cur = redis.call('HGET', KEYS[2], 'score_version')
if cur and cur ~= ARGV[5] then return -1 end
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('HINCRBY', KEYS[2], 'studies_done', 1)
redis.call('HINCRBY', KEYS[2], 'evals_done', tonumber(ARGV[3]))
if ARGV[4] ~= '' then
  redis.call('HINCRBYFLOAT', KEYS[2], 'norm_sum', ARGV[4])
  redis.call('HINCRBY', KEYS[2], 'norm_count', 1)
end
if ARGV[6] ~= '' then
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[7], '*', 'json', ARGV[6])
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[8], '*', 'json', ARGV[6])
end
return 1
"""


def save_new_submission(r: redis.Redis, sub: Submission) -> None:
    pipe = r.pipeline()
    pipe.hset(
        keys.submission(sub.id),
        mapping={
            "record": sub.to_json(),
            "state": sub.state.value,
            "score_version": str(sub.score_version),
            **dict.fromkeys(_COUNTERS, "0"),
        },
    )
    pipe.zadd(keys.submissions_index(), {sub.id: sub.created_at})
    pipe.zadd(keys.team_submissions(sub.team), {sub.id: sub.created_at})
    pipe.execute()


def load_submission(r: redis.Redis, sid: str) -> Submission | None:
    raw = r.hgetall(keys.submission(sid))
    return _from_hash(raw) if raw else None


def load_submissions(r: redis.Redis, ids: Iterable[str]) -> list[Submission]:
    pipe = r.pipeline()
    ids = list(ids)
    for sid in ids:
        pipe.hgetall(keys.submission(sid))
    return [_from_hash(raw) for raw in pipe.execute() if raw]


def _from_hash(raw: dict[str, str]) -> Submission:
    sub = Submission.from_json(raw["record"])
    # The hash field is what the write-once script and the stop watcher compare against: it rules.
    sub.score_version = int(raw.get("score_version", sub.score_version))
    sub.progress = Progress(
        studies_done=int(raw.get("studies_done", 0)),
        studies_total=sub.progress.studies_total,
        evals_done=int(raw.get("evals_done", 0)),
        evals_total=sub.progress.evals_total,
    )
    count = int(raw.get("norm_count", 0) or 0)
    if count and sub.score is None:
        # The running score: mean normalized score of the studies finished so far, on the leaderboard scale.
        sub.partial_score = 100.0 * (1.0 - float(raw.get("norm_sum", 0.0)) / count)
    return sub


# What a change writes: the hash fields, the events, and other writes of the same transaction.
_Write = Callable[[Any], Any]
_Plan = tuple[dict[str, str], list[Event], list[_Write]]


def _atomic_update(
    r: redis.Redis, sid: str, change: Callable[[Submission, Any], _Plan | None]
) -> Submission | None:
    """Read-modify-write of a submission under WATCH; `change(sub, pipe)` mutates the record and returns
    what to write, or None to leave it alone. It may WATCH and read more keys through `pipe` (still in
    immediate mode). Retries when another writer got there first."""
    key = keys.submission(sid)
    with r.pipeline() as pipe:
        while True:
            try:
                pipe.watch(key)
                raw = pipe.hgetall(key)
                if not raw:
                    pipe.unwatch()
                    return None
                sub = _from_hash(raw)
                planned = change(sub, pipe)
                if planned is None:
                    pipe.unwatch()
                    return None
                fields, events, extra = planned
                pipe.multi()
                pipe.hset(key, mapping=fields)
                for event in events:
                    _event_into(pipe, event)
                for write in extra:
                    write(pipe)
                pipe.execute()
                return sub
            except redis.WatchError:
                continue


def transition(
    r: redis.Redis,
    sid: str,
    new_state: SubmissionState,
    *,
    version: int | None = None,
    only_from: Iterable[SubmissionState] | None = None,
    failure: tuple[FailureCause, str] | None = None,
    reset_counters: bool = False,
    refunds_per_day: int | None = None,
    **updates: Any,
) -> Submission | None:
    """Move a submission to `new_state` atomically; None if the move is not allowed (raced or stale).

    `version` guards against a job of an old score version touching a rescored submission.
    `refunds_per_day`: the failure is one the upload is refunded for, within the team's refunds of the
    upload's UTC day (see `_settle_refund`), decided in the same transaction.
    """
    allowed = set(only_from) if only_from is not None else None

    def change(sub: Submission, pipe: Any) -> _Plan | None:
        if version is not None and sub.score_version != version:
            return None
        if not can_transition(sub.state, new_state) or (allowed is not None and sub.state not in allowed):
            return None
        previous = sub.state
        sub.state = new_state
        sub.updated_at = time.time()
        if failure is not None:
            sub.failure = Failure(cause=failure[0], message=failure[1])  # bounded and made safe here
        for name, value in updates.items():
            setattr(sub, name, value)
        fields = {"record": sub.to_json(), "state": new_state.value, "score_version": str(sub.score_version)}
        if reset_counters:
            fields.update(dict.fromkeys(_COUNTERS, "0"))
            sub.partial_score = None
            sub.progress.studies_done = sub.progress.evals_done = 0
        events, extra = [], []
        if refunds_per_day is not None and sub.failure is not None and sub.charged:
            events, extra = _settle_refund(sub, pipe, refunds_per_day)
            fields["record"] = sub.to_json()
        data = {"from": previous.value, "to": new_state.value, "version": sub.score_version}
        if failure is not None:
            data |= {"cause": failure[0].value, "message": sub.failure.message}
        return fields, [Event(kind="state", submission_id=sid, data=data), *events], extra

    return _atomic_update(r, sid, change)


REFUNDED_NOTE = "not charged to your quota"
REFUND_HELD_NOTE = "counted against your quota until an organizer reviews it"


def _settle_refund(
    sub: Submission, pipe: Any, per_day: int
) -> tuple[list[Event], list[Callable[[Any], Any]]]:
    """Refund the failed upload if its team has refunds left on the upload's UTC day, else hold the
    refund for an organizer: a team that can make its own submissions fail as ours must not get free
    submissions out of it. Counted exactly from the team's refunded set, watched like the record."""
    refunds = keys.team_refunds(sub.team)
    pipe.watch(refunds)
    start, end = utc_day(sub.created_at)
    used = int(pipe.zcount(refunds, start, f"({end}"))
    assert sub.failure is not None
    if used < per_day:
        sub.charged = False
        sub.refund = RefundState.AUTO
        sub.failure.message = f"{sub.failure.message}; {REFUNDED_NOTE}"
        event = Event(kind="quota_refund", submission_id=sub.id, data={"team": sub.team, "auto": True})

        def remember(p: Any) -> None:
            p.zadd(refunds, {sub.id: sub.created_at})
            p.zremrangebyscore(refunds, "-inf", start - 7 * DAY_S)  # a week of history is plenty
            p.expire(refunds, 8 * DAY_S)

        return [event], [remember]
    sub.refund = RefundState.HELD
    sub.failure.message = f"{sub.failure.message}; {REFUND_HELD_NOTE}"
    event = Event(
        kind="refund_held",
        submission_id=sub.id,
        data={"team": sub.team, "refunds_today": used, "refunds_per_day": per_day},
    )
    return [event], [lambda p: p.sadd(keys.refunds_held(), sub.id)]


def start_score_version(r: redis.Redis, sid: str, version: int, **updates: Any) -> Submission | None:
    """Begin score version `version + 1` of a terminal submission (a rescore), in one atomic step: state
    queued, score, running score and failure cleared, live counters reset, `updates` applied. None when
    the submission is not terminal or its version moved on (someone else rescored first). Earlier
    versions keep their study results under their own keys."""

    def change(sub: Submission, pipe: Any) -> _Plan | None:
        if sub.score_version != version or sub.state not in TERMINAL_STATES:
            return None
        previous = sub.state
        sub.state = SubmissionState.QUEUED
        sub.score_version = version + 1
        sub.score = sub.partial_score = sub.failure = None
        sub.updated_at = time.time()
        for name, value in updates.items():
            setattr(sub, name, value)
        sub.progress.studies_done = sub.progress.evals_done = 0
        fields = {
            "record": sub.to_json(),
            "state": sub.state.value,
            "score_version": str(sub.score_version),
            **dict.fromkeys(_COUNTERS, "0"),
        }
        data = {"from": previous.value, "to": sub.state.value, "version": sub.score_version, "rescore": True}
        return fields, [Event(kind="state", submission_id=sid, data=data)], []

    return _atomic_update(r, sid, change)


def update_record(r: redis.Redis, sid: str, **updates: Any) -> Submission | None:
    """Change record fields without a state change (score details, totals), atomically."""

    def change(sub: Submission, pipe: Any) -> _Plan:
        for name, value in updates.items():
            setattr(sub, name, value)
        sub.updated_at = time.time()
        return {"record": sub.to_json()}, [], []

    return _atomic_update(r, sid, change)


def write_study(
    r: redis.Redis,
    sid: str,
    version: int,
    problem: str,
    result: StudyResult,
    normalized: float | None,
    *,
    announce: bool = True,
) -> int:
    """1 if written now (with its `study` event), 0 if it was already there (a retried job), -1 if the
    score version moved on. `announce=False` leaves the event out, for a writer that lays down its own
    timeline of events (bench/seed_data.py)."""
    evals = sum(len(round_) for round_ in result.losses)
    event = Event(
        kind="study",
        submission_id=sid,
        data={"problem": problem, "study": result.study, "state": result.state.value, "version": version},
    )
    return int(
        r.eval(
            _WRITE_STUDY,
            4,
            keys.study_results(sid, version, problem),
            keys.submission(sid),
            keys.events(),
            keys.submission_events(sid),
            str(result.study),
            result.to_json(),
            str(evals),
            "" if normalized is None else repr(float(normalized)),
            str(version),
            event.to_json() if announce else "",
            str(EVENTS_MAXLEN),
            str(SUBMISSION_EVENTS_MAXLEN),
        )
    )


def read_studies(r: redis.Redis, sid: str, version: int, problem: str) -> dict[int, StudyResult]:
    raw = r.hgetall(keys.study_results(sid, version, problem))
    return {int(k): StudyResult.from_json(v) for k, v in raw.items()}


def finished_study_indices(r: redis.Redis, sid: str, version: int, problem: str) -> set[int]:
    return {int(k) for k in r.hkeys(keys.study_results(sid, version, problem))}


def add_event(r: redis.Redis | redis.client.Pipeline, kind: str, sid: str | None = None, **data: Any) -> None:
    _event_into(r, Event(kind=kind, submission_id=sid, data=data))


def _event_into(r: Any, event: Event) -> None:
    body = {"json": event.to_json()}
    r.xadd(keys.events(), body, maxlen=EVENTS_MAXLEN, approximate=True)
    if event.submission_id:
        r.xadd(
            keys.submission_events(event.submission_id),
            body,
            maxlen=SUBMISSION_EVENTS_MAXLEN,
            approximate=True,
        )


def read_events(r: redis.Redis, sid: str | None = None, count: int = 100) -> list[Event]:
    key = keys.submission_events(sid) if sid else keys.events()
    return [Event.from_json(fields["json"]) for _, fields in r.xrevrange(key, count=count)][::-1]


# Append lines to a job's log within the score version's byte budget, in one script: lines past the
# budget are dropped (counted), and the log and its budget expire after the retention. KEYS: log stream,
# budget counter. ARGV: budget bytes (0: none), retention seconds (0: none), stream cap, lines...
_APPEND_LOG = """
local budget = tonumber(ARGV[1])
local used = tonumber(redis.call('GET', KEYS[2]) or '0')
local dropped = 0
for i = 4, #ARGV do
  local size = string.len(ARGV[i])
  if budget > 0 and used + size > budget then
    dropped = dropped + 1
  else
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', 'line', ARGV[i])
    used = used + size
  end
end
local ttl = tonumber(ARGV[2])
if budget > 0 then redis.call('SET', KEYS[2], used) end
if ttl > 0 then
  redis.call('EXPIRE', KEYS[1], ttl)
  if budget > 0 then redis.call('EXPIRE', KEYS[2], ttl) end
end
return dropped
"""
JOB_LOG_LINE_CHARS = 4000


def append_job_log(
    r: redis.Redis,
    job_id: str,
    lines: list[str],
    *,
    budget_key: str | None = None,
    budget_bytes: int = 0,
    retention_s: int = 0,
) -> int:
    """Append lines (each cut at JOB_LOG_LINE_CHARS) to a job's organizer log; returns how many were
    dropped because the score version's log budget (`budget_key`, `budget_bytes`) was used up."""
    if not lines:
        return 0
    return int(
        r.eval(
            _APPEND_LOG,
            2,
            keys.job_log(job_id),
            budget_key or keys.log_budget("-", 0),
            str(budget_bytes if budget_key else 0),
            str(max(0, int(retention_s))),
            str(JOB_LOG_MAXLEN),
            *(line[:JOB_LOG_LINE_CHARS] for line in lines),
        )
    )


def read_job_log(r: redis.Redis, job_id: str, count: int = 1000) -> list[str]:
    return [fields["line"] for _, fields in r.xrange(keys.job_log(job_id), count=count)]
