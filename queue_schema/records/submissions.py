"""The submission records (keys.submission): a new one saved, loaded back, and every change of one in a
WATCH/MULTI transaction (`_atomic_update`) with its events and its index entries' writes (indexes.py):
`transition` (the state machine, with the refund of a failed upload settled in the same transaction),
`start_score_version` (a rescore), `update_record`; and the phase's scored submissions read through the
scored index."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import redis

from queue_schema import keys
from queue_schema.payloads import DAY_S, Event, Failure, Progress, Submission, leaderboard_score, utc_day
from queue_schema.records.events import _event_into
from queue_schema.records.indexes import _index_entry, _index_writes, _Write, scored_ids
from queue_schema.states import TERMINAL_STATES, FailureCause, RefundState, SubmissionState, can_transition

# Counter fields kept beside the record in the submission hash (HINCRBY, never rewritten wholesale).
_COUNTERS = ("studies_done", "evals_done", "norm_sum", "norm_count")


def save_new_submission(r: redis.Redis, sub: Submission) -> None:
    pipe = r.pipeline()
    _index_writes(sub.id, None, _index_entry(sub), 0)(pipe)
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
    return submission_from_hash(raw) if raw else None


def load_submissions(r: redis.Redis, ids: Iterable[str]) -> list[Submission]:
    pipe = r.pipeline()
    ids = list(ids)
    for sid in ids:
        pipe.hgetall(keys.submission(sid))
    return [submission_from_hash(raw) for raw in pipe.execute() if raw]


def submission_from_hash(raw: dict[str, str]) -> Submission:
    """A submission from its hash's fields (as HGETALL returns them): the one reader of that layout, for
    a reader that fetched the hashes its own way (the console's batched load)."""
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
        sub.partial_score = leaderboard_score(float(raw.get("norm_sum", 0.0)) / count)
    return sub


# What a change writes: the hash fields, the events, and other writes of the same transaction.
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
                sub = submission_from_hash(raw)
                before, done_before = _index_entry(sub), sub.progress.studies_done
                planned = change(sub, pipe)
                if planned is None:
                    pipe.unwatch()
                    return None
                fields, events, extra = planned
                done_after = int(fields.get("studies_done", done_before))
                index = _index_writes(sid, before, _index_entry(sub), done_after - done_before)
                pipe.multi()
                pipe.hset(key, mapping=fields)
                for event in events:
                    _event_into(pipe, event)
                for write in extra:
                    write(pipe)
                index(pipe)
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


def scored_submissions(r: redis.Redis, spec_name: str, phase: str) -> list[Submission]:
    """The phase's submissions with a scored version, each as last scored (`Submission.last_scored`):
    the leaderboards' candidates, read from the scored index, never from a scan of every submission.
    Disqualified ones are included; the caller decides (the boards skip them)."""
    subs = load_submissions(r, scored_ids(r, spec_name, phase))
    return [shown for sub in subs if (shown := sub.last_scored()) is not None]
