"""The store's one owner: every read and write of submissions, transitions, study results, events, job
logs, and the indexes that spare readers a scan of every submission.

Every writer goes through these, so the invariants live in one place: a transition follows the state
machine and is atomic (WATCH/MULTI); a study result is written once and counted once (one Lua script);
streams are capped.

The indexes (keys.state_index, failure_index, scored_index, studies_done_total) are written in the same
transaction as the record they describe: every change of a submission goes through `_atomic_update` or
`save_new_submission`, which work out the record's index entries before and after the change and write the
difference. So the leaderboard, the final board, `rescore_all` and the metrics read a phase's scored
submissions or a few counts, never every submission. A store written before the indexes (or by a writer
that bypassed these functions, such as bench/seed_data.py's bulk load) has no `keys.index_built()` marker:
the first reader rebuilds them in one Lua script (`rebuild_indexes`), atomic with every writer.

The index lives here rather than in a module of its own because its writes must share the record's
transaction, which this module owns; a second module would have to reach into `_atomic_update`.
"""

from __future__ import annotations

import functools
import json
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

import redis

from queue_schema import archive_store, keys, study_codec
from queue_schema.payloads import (
    DAY_S,
    Event,
    Failure,
    Progress,
    StudyResult,
    Submission,
    leaderboard_score,
    utc_day,
)
from queue_schema.states import TERMINAL_STATES, FailureCause, RefundState, SubmissionState, can_transition

EVENTS_MAXLEN = 100_000
SUBMISSION_EVENTS_MAXLEN = 2_000
JOB_LOG_MAXLEN = 5_000

# Counter fields kept beside the record in the submission hash (HINCRBY, never rewritten wholesale).
_COUNTERS = ("studies_done", "evals_done", "norm_sum", "norm_count")

# Write the study once; count it and announce it (its `study` event) only if this call wrote it, all in one
# script: a worker killed between two separate commands would leave a stored study with no event, and the
# retried job skips stored studies, so the event would never come. The study's provenance (stored once
# per score version, under its id) and the version's problem index go with it. KEYS: results, submission,
# events, submission events, studies-done total, version provenance, version study problems. ARGV: index,
# record (study_codec), evals, normalized score (or "" when no baseline), score version, event json (or ""
# for none), events cap, submission events cap, provenance id, provenance json, problem.
_WRITE_STUDY = """
local cur = redis.call('HGET', KEYS[2], 'score_version')
if cur and cur ~= ARGV[5] then return -1 end
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('HSETNX', KEYS[6], ARGV[9], ARGV[10])
redis.call('SADD', KEYS[7], ARGV[11])
redis.call('HINCRBY', KEYS[2], 'studies_done', 1)
redis.call('INCRBY', KEYS[5], 1)
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


# -- the indexes ---------------------------------------------------------------------------------------

# Bump when the index layout changes: every reader then rebuilds once.
INDEX_LAYOUT = "1"
# What a record puts in the indexes: its state, its failure cause (failed only), and its scored index key
# with the leaderboard score of its last scored version (None when no version was ever scored).
_Entry = tuple[str, str | None, str | None, float | None]


def _index_entry(sub: Submission) -> _Entry:
    shown = sub.last_scored()
    failed = sub.state == SubmissionState.FAILED and sub.failure is not None
    return (
        sub.state.value,
        sub.failure.cause.value if failed and sub.failure is not None else None,
        keys.scored_index(sub.spec_name, sub.phase) if shown is not None else None,
        shown.score if shown is not None else None,
    )


def _index_writes(sid: str, before: _Entry | None, after: _Entry, studies_delta: int) -> _Write:
    """The index commands of one record's change from `before` (None: a new record) to `after`."""

    def write(pipe: Any) -> None:
        old_state, old_cause, old_key, _ = before if before is not None else (None, None, None, None)
        state, cause, scored_key, score = after
        if old_state is not None and old_state != state:
            pipe.srem(keys.state_index(old_state), sid)
        pipe.sadd(keys.state_index(state), sid)
        if old_cause is not None and old_cause != cause:
            pipe.srem(keys.failure_index(old_cause), sid)
        if cause is not None:
            pipe.sadd(keys.failure_index(cause), sid)
        if old_key is not None and old_key != scored_key:
            pipe.zrem(old_key, sid)
        if scored_key is not None:
            pipe.zadd(scored_key, {sid: float(score)})
            pipe.sadd(keys.scored_indexes(), scored_key)
        if studies_delta:
            pipe.incrby(keys.studies_done_total(), studies_delta)

    return write


# Every index from the records, in one script so that no writer interleaves: the old index keys are
# cleared, then each submission's entries are added as `_index_entry` computes them (the record's state,
# its failure's cause when failed, its last scored version's score). KEYS: submissions index, scored
# index registry, studies-done total, built marker, then every state and failure set. ARGV: layout,
# submission key prefix, state set prefix, failure set prefix, scored index prefix.
_REBUILD_INDEXES = """
local function value(x) if x == cjson.null then return nil end return x end
for i = 5, #KEYS do redis.call('DEL', KEYS[i]) end
for _, key in ipairs(redis.call('SMEMBERS', KEYS[2])) do redis.call('DEL', key) end
redis.call('DEL', KEYS[2])
local total, count = 0, 0
for _, sid in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local f = redis.call('HMGET', ARGV[2] .. sid, 'record', 'studies_done')
  local ok, rec = false, nil
  if f[1] then ok, rec = pcall(cjson.decode, f[1]) end
  if ok and type(rec) == 'table' then
    count = count + 1
    local state = value(rec.state) or 'queued'
    total = total + (tonumber(f[2] or '0') or 0)
    redis.call('SADD', ARGV[3] .. state, sid)
    local failure = value(rec.failure)
    if state == 'failed' and type(failure) == 'table' then
      redis.call('SADD', ARGV[4] .. failure.cause, sid)
    end
    local score = nil
    if state == 'scored' and value(rec.score) then
      score = rec.score
    elseif type(value(rec.previous)) == 'table' then
      score = rec.previous.score
    end
    if score then
      local key = ARGV[5] .. rec.spec_name .. ':' .. rec.phase
      redis.call('ZADD', key, string.format('%.17g', score), sid)
      redis.call('SADD', KEYS[2], key)
    end
  end
end
redis.call('SET', KEYS[3], total)
redis.call('SET', KEYS[4], ARGV[1])
return count
"""


def rebuild_indexes(r: redis.Redis) -> int:
    """Build every index from the submission records (a store from before them, or bulk-loaded past the
    writers), atomically; returns how many records it indexed. Readers call `ensure_indexes`."""
    sets = [keys.state_index(s.value) for s in SubmissionState]
    sets += [keys.failure_index(c.value) for c in FailureCause]
    return int(
        r.eval(
            _REBUILD_INDEXES,
            4 + len(sets),
            keys.submissions_index(),
            keys.scored_indexes(),
            keys.studies_done_total(),
            keys.index_built(),
            *sets,
            INDEX_LAYOUT,
            keys.submission(""),
            keys.state_index(""),
            keys.failure_index(""),
            keys.scored_index("", "")[:-1],
        )
    )


def ensure_indexes(r: redis.Redis) -> None:
    """Rebuild the indexes if this store has none yet (or of an older layout): one GET otherwise."""
    if r.get(keys.index_built()) != INDEX_LAYOUT:
        rebuild_indexes(r)


def scored_ids(r: redis.Redis, spec_name: str, phase: str) -> list[str]:
    """Ids of the competition phase's submissions that have a scored version (disqualified included)."""
    ensure_indexes(r)
    return r.zrange(keys.scored_index(spec_name, phase), 0, -1)


def scored_submissions(r: redis.Redis, spec_name: str, phase: str) -> list[Submission]:
    """The phase's submissions with a scored version, each as last scored (`Submission.last_scored`):
    the leaderboards' candidates, read from the scored index, never from a scan of every submission.
    Disqualified ones are included; the caller decides (the boards skip them)."""
    subs = load_submissions(r, scored_ids(r, spec_name, phase))
    return [shown for sub in subs if (shown := sub.last_scored()) is not None]


def state_counts(r: redis.Redis) -> dict[str, int]:
    """Submissions by state (every state, zero included), from the state index."""
    ensure_indexes(r)
    pipe = r.pipeline(transaction=False)
    for state in SubmissionState:
        pipe.scard(keys.state_index(state.value))
    return {s.value: int(n) for s, n in zip(SubmissionState, pipe.execute(), strict=True)}


def failure_counts(r: redis.Redis) -> dict[str, int]:
    """Failed submissions by failure cause (every cause, zero included), from the failure index."""
    ensure_indexes(r)
    pipe = r.pipeline(transaction=False)
    for cause in FailureCause:
        pipe.scard(keys.failure_index(cause.value))
    return {c.value: int(n) for c, n in zip(FailureCause, pipe.execute(), strict=True)}


def studies_done_total(r: redis.Redis) -> int:
    """The studies of every submission's current score version finished so far."""
    ensure_indexes(r)
    return int(r.get(keys.studies_done_total()) or 0)


def scored_time(sub: Submission) -> float:
    """When the submission's (last scored) version was scored; records from before `scored_at` existed
    were last updated by their scoring. The leaderboard freeze compares against this."""
    return sub.scored_at if sub.scored_at is not None else sub.updated_at


def ranking_key(sub: Submission) -> tuple[float, float]:
    """The boards' order: the higher score first; a tie goes to the earlier upload."""
    assert sub.score is not None
    return (-sub.score, sub.created_at)


def best_of_team(subs: Iterable[Submission]) -> Submission | None:
    """The best of one team's scored submissions (pass them as last scored) by `ranking_key`."""
    return min((s for s in subs if s.score is not None), key=ranking_key, default=None)


def best_by_team(subs: Iterable[Submission]) -> dict[str, Submission]:
    """Each team's `best_of_team` among scored submissions of several teams."""
    by_team: dict[str, list[Submission]] = {}
    for sub in subs:
        by_team.setdefault(sub.team, []).append(sub)
    return {team: best for team, found in by_team.items() if (best := best_of_team(found)) is not None}


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
    score version moved on. `normalized` (the study's normalized score, None without baselines) is counted
    into the running score and stored in the result, so readers need not recompute it. `announce=False`
    leaves the event out, for a writer that lays down its own timeline of events (bench/seed_data.py).

    Stored compactly (queue_schema/study_codec.py), its provenance once per score version under its id."""
    if normalized is not None and result.normalized is None:
        result = result.model_copy(update={"normalized": float(normalized)})
    evals = sum(len(round_) for round_ in result.losses)
    provenance = study_codec.provenance_json(result)
    provenance_id = study_codec.provenance_id(provenance)
    event = Event(
        kind="study",
        submission_id=sid,
        data={"problem": problem, "study": result.study, "state": result.state.value, "version": version},
    )
    return int(
        r.eval(
            _WRITE_STUDY,
            7,
            keys.study_results(sid, version, problem),
            keys.submission(sid),
            keys.events(),
            keys.submission_events(sid),
            keys.studies_done_total(),
            keys.version_provenance(sid, version),
            keys.version_study_problems(sid, version),
            str(result.study),
            study_codec.encode(result, provenance_ref=provenance_id),
            str(evals),
            "" if normalized is None else repr(float(normalized)),
            str(version),
            event.to_json() if announce else "",
            str(EVENTS_MAXLEN),
            str(SUBMISSION_EVENTS_MAXLEN),
            provenance_id,
            provenance,
            problem,
        )
    )


def read_studies(r: redis.Redis, sid: str, version: int, problem: str) -> dict[int, StudyResult]:
    if (archived := _archived_studies(r, sid, version, problem)) is not None:
        return archived
    raw = r.hgetall(keys.study_results(sid, version, problem))
    if not raw and (archived := _archived_studies(r, sid, version, problem)) is not None:
        return archived  # archived between the two reads
    # The provenance the studies name (records of the older form name none), read once.
    named = sorted({ref for value in raw.values() if (ref := study_codec.provenance_ref(value))})
    found = r.hmget(keys.version_provenance(sid, version), named) if named else []
    provenance = {ref: text for ref, text in zip(named, found, strict=True) if text}
    if len(provenance) < len(named) and (archived := _archived_studies(r, sid, version, problem)) is not None:
        return archived  # archived between the two reads
    return decode_study_hash(raw, provenance)


def finished_study_indices(r: redis.Redis, sid: str, version: int, problem: str) -> set[int]:
    if (archived := _archived_studies(r, sid, version, problem)) is not None:
        return set(archived)
    return {int(k) for k in r.hkeys(keys.study_results(sid, version, problem))}


def decode_study_hash(raw_fields: dict[str, str], provenance: dict[str, str]) -> dict[int, StudyResult]:
    """A study hash's fields (study index -> stored record, either form, as HGETALL gives them) as results
    by index, with the score version's provenance hash (id -> JSON; all of it, or the ids the records
    name): `read_studies`'s decoding, for a reader that fetched the values its own way (an archive)."""
    return study_codec.decode_many(raw_fields, provenance)


def _glob_escaped(text: str) -> str:
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in text)


def version_data_keys(r: redis.Redis, sid: str, version: int) -> list[str]:
    """Every key holding the score version's study data, as it is now: its study hashes (by problem), its
    provenance hash and its problem index. The problems come from that index (the study writer keeps it)
    and from the version's finished problems (which writers of the older form marked too); a version with
    neither (written before the index, or nothing written yet) is found by a SCAN of the keyspace."""
    problems = r.smembers(keys.version_study_problems(sid, version))
    problems |= r.smembers(keys.problems_done(sid, version))
    if problems:
        studies = [keys.study_results(sid, version, problem) for problem in sorted(problems)]
    else:
        pattern = _glob_escaped(keys.study_results(sid, version, "")) + "*"
        studies = sorted(set(r.scan_iter(match=pattern, count=1000)))
    candidates = [*studies, keys.version_provenance(sid, version), keys.version_study_problems(sid, version)]
    pipe = r.pipeline(transaction=False)
    for key in candidates:
        pipe.exists(key)
    return [key for key, exists in zip(candidates, pipe.execute(), strict=True) if exists]


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
    """The last `count` events, oldest first: of every submission (the global stream), or of one. An
    archived score version's `study` events are in its archive object (`archive_version_data` moves
    them): a submission's events are its stream's and those, merged back in stream id (time) order, so the
    history reads as it did before the version was archived."""
    if not sid:
        return [Event.from_json(fields["json"]) for _, fields in r.xrevrange(keys.events(), count=count)][
            ::-1
        ]
    newest = [
        (entry_id, fields["json"])
        for entry_id, fields in r.xrevrange(keys.submission_events(sid), count=count)
    ]
    return [Event.from_json(raw) for _, raw in reversed(_with_archived_events(r, sid, newest, count))]


def _with_archived_events(
    r: redis.Redis, sid: str, newest: list[tuple[str, str]], count: int
) -> list[tuple[str, str]]:
    """`newest` ((stream id, event JSON), newest first, from the submission's stream) with its archived
    versions' events, newest first, `count` at most. An archive is opened only when some of its events
    fall in the window (its mark says how many it holds and the id of the newest)."""
    floor = _stream_id(newest[-1][0]) if newest and len(newest) >= count else None
    archived: list[tuple[str, str]] = []
    for _, mark in archive_marks(r, sid):
        if not mark.events or (floor is not None and _stream_id(mark.last_event) < floor):
            continue
        archived += [(str(entry_id), str(raw)) for entry_id, raw in load_archive(mark).get("events", ())]
    if not archived:
        return newest
    merged = dict(newest)
    merged.update(archived)
    return sorted(merged.items(), key=lambda entry: _stream_id(entry[0]), reverse=True)[: max(0, count)]


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
    return [line for _, line in read_job_log_entries(r, job_id, count=count)]


def read_job_log_entries(
    r: redis.Redis, job_id: str, after: str = "-", count: int = 1000, *, now: float | None = None
) -> list[tuple[str, str]]:
    """(stream id, line) of a job's log after stream id `after` ("-": from the start): from Redis while
    the log is there, else from its score version's archive until the log's retention is over."""
    start = after if after == "-" else f"({after}"
    entries = r.xrange(keys.job_log(job_id), min=start, count=count)
    if entries:
        return [(entry_id, fields.get("line", "")) for entry_id, fields in entries]
    archived = archived_job_log(r, job_id)
    if archived is None or archived.expired(now):
        return []
    floor = _stream_id(after) if after != "-" else None
    return [(i, line) for i, line in archived.entries if floor is None or _stream_id(i) > floor][:count]


# -- the archive: a complete score version's data, moved out of Redis ----------------------------------
#
# runtime/archiver.py decides when a version may go (complete, no job of it running, past a grace period)
# and writes and verifies its object (queue_schema/archive_store.py); the reads and writes of Redis are
# here: the snapshot and the one transaction that marks the version archived and drops its keys
# (`archive_version_data`), the readers' archive branch (`read_studies`, `finished_study_indices`,
# `read_job_log_entries`), and the queue of versions that ended (`note_ended_versions`).

ARCHIVED_FIELD = "archived"  # in keys.score_version: the ArchiveMark's JSON, once archived
ARCHIVES_CACHED = 16  # decoded archive objects kept per process (each a score version's data)
_ENDED_BATCH = 5_000


@dataclass(frozen=True)
class ArchiveMark:
    """Where a score version's data went: the object, its bytes' sha256, the store it was written to."""

    object: str
    sha256: str
    store: str
    size: int
    archived_at: float
    # The submission events the object holds (the version's `study` events) and the stream id of the
    # newest, so that `read_events` opens the object only when they fall in what it reads. 0 and "" in
    # marks written before events were archived (their events stayed in Redis).
    events: int = 0
    last_event: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, raw: str) -> ArchiveMark:
        known = cls.__dataclass_fields__
        return cls(**{name: value for name, value in json.loads(raw).items() if name in known})


@dataclass(frozen=True)
class ArchivedLog:
    """A job's log as archived: its entries, and when it would have expired in Redis (None: never)."""

    entries: list[tuple[str, str]]
    archived_at: float
    expires_at: float | None

    def expired(self, now: float | None = None) -> bool:
        return self.expires_at is not None and (time.time() if now is None else now) >= self.expires_at


def archive_mark(r: redis.Redis, sid: str, version: int) -> ArchiveMark | None:
    raw = r.hget(keys.score_version(sid, version), ARCHIVED_FIELD)
    return ArchiveMark.from_json(raw) if raw else None


def archive_marks(r: redis.Redis, sid: str) -> list[tuple[int, ArchiveMark]]:
    """(version, mark) of each archived score version of a submission, oldest first."""
    current = r.hget(keys.submission(sid), "score_version")
    if not current or int(current) < 1:
        return []
    versions = range(1, int(current) + 1)
    pipe = r.pipeline(transaction=False)
    for version in versions:
        pipe.hget(keys.score_version(sid, version), ARCHIVED_FIELD)
    return [(v, ArchiveMark.from_json(raw)) for v, raw in zip(versions, pipe.execute(), strict=True) if raw]


def version_jobs(r: redis.Redis, sid: str, version: int) -> list[str]:
    """The RQ job ids of a score version, sorted: keys.submission_jobs while the version is in Redis, its
    archive object's once archived (the set moves there; an object written before it moved has none, and
    the set then stayed in Redis)."""
    found = r.smembers(keys.submission_jobs(sid, version))
    if found:
        return sorted(found)
    mark = archive_mark(r, sid, version)
    if mark is None:
        return []
    return sorted(str(job) for job in load_archive(mark).get("jobs") or ())


def read_study_scores(r: redis.Redis, sid: str, version: int) -> dict[str, list[float]] | None:
    """{problem: [normalized score of each study, by study index]} of a scored version as kept
    (keys.study_scores: the compact form, or the JSON written before it), None when none is kept."""
    raw = r.get(keys.study_scores(sid, version))
    return None if raw is None else study_codec.decode_scores(raw)[1]


def write_study_scores(
    r: redis.Redis, sid: str, version: int, baseline_version: str | None, problems: dict[str, list[float]]
) -> None:
    """Keep a scored version's per-study normalized scores (they never change: its studies are final)."""
    r.set(keys.study_scores(sid, version), study_codec.encode_scores(baseline_version, problems))


def load_archive(mark: ArchiveMark) -> dict[str, Any]:
    """The decoded object a mark names, checked against its sha256; cached (bounded LRU) per process."""
    return _load_archive(mark.store, mark.object, mark.sha256)


@functools.lru_cache(maxsize=ARCHIVES_CACHED)
def _load_archive(store_url: str, name: str, sha256: str) -> dict[str, Any]:
    try:
        return archive_store.open_store(store_url).load(name, sha256)
    except archive_store.ArchiveError:
        configured = archive_store.configured_url()
        if configured == store_url:
            raise
        # The archive was moved (a new BBO_ARCHIVE_URL): the same object, found by its name.
        return archive_store.open_store(configured).load(name, sha256)


def archived_studies_of(
    payload: dict[str, Any], sid: str, version: int, problem: str
) -> dict[int, StudyResult]:
    """One problem's studies from an archive object's snapshot, decoded as `read_studies` decodes Redis
    (`decode_study_hash`, with the version's provenance hash from the same snapshot)."""
    entry = payload["keys"].get(keys.study_results(sid, version, problem))
    provenance = payload["keys"].get(keys.version_provenance(sid, version))
    return decode_study_hash(entry["value"] if entry else {}, provenance["value"] if provenance else {})


def _archived_studies(r: redis.Redis, sid: str, version: int, problem: str) -> dict[int, StudyResult] | None:
    mark = archive_mark(r, sid, version)
    if mark is None:
        return None
    return archived_studies_of(load_archive(mark), sid, version, problem)


_JOB_VERSION = re.compile(r"-v([0-9]+)-")


def archived_job_log(r: redis.Redis, job_id: str) -> ArchivedLog | None:
    """A job's log from its score version's archive; None when that version is not archived (or the
    archive has no log of the job). The version is read from the job's id (queue_schema/ids.job_id)."""
    for match in _JOB_VERSION.finditer(job_id):
        sid, version = job_id[: match.start()], int(match.group(1))
        if not sid or (mark := archive_mark(r, sid, version)) is None:
            continue
        found = load_archive(mark)["logs"].get(job_id)
        if found is not None:
            entries = [(str(entry_id), str(line)) for entry_id, line in found["entries"]]
            return ArchivedLog(entries, mark.archived_at, found.get("expires_at"))
    return None


def _stream_id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def archive_version_data(
    r: redis.Redis,
    sid: str,
    version: int,
    problems: Iterable[str] | None,
    store_object: Callable[[dict[str, Any]], ArchiveMark],
    *,
    study_scores: str | None = None,
) -> tuple[str, ArchiveMark | None]:
    """Move a score version's data out of Redis, in one WATCHed read-write:
    1. snapshot the version's study keys, its job logs, its job set, its `study` events (from the
       submission's stream) and its study scores (the archive's payload);
    2. `store_object(payload)` writes the object and verifies it (it raises if it cannot), returning
       the mark;
    3. in one MULTI/EXEC: the mark in the version's record; the study scores kept (`study_scores` unless
       there are some already; kept ones of the older JSON form rewritten compactly, the same values);
       the study keys, archived logs, job set and the version's scratch (problems done, log budget)
       deleted; the snapshot's `study` events taken out of the submission's stream (`_DROP_EVENTS`: the
       other events keep their ids and order).
    A write to any watched key meanwhile (a late study or log line, a job added) aborts step 3: ("raced",
    None), and the caller tries later. The submission's stream is not watched (the submission's other
    versions write to it): a late study of this version would write its study key, which is. ("already",
    mark) when the version was archived before; ("archived", mark).
    A crash anywhere before EXEC leaves Redis as it was (an object maybe written, never marked)."""
    # The keys that hold data now, and those a late study would create (watched, so that it aborts us).
    expected = [keys.study_results(sid, version, problem) for problem in problems or ()]
    expected += [keys.version_provenance(sid, version), keys.version_study_problems(sid, version)]
    data_keys = sorted({*version_data_keys(r, sid, version), *expected})
    jobs_key = keys.submission_jobs(sid, version)
    jobs = sorted(r.smembers(jobs_key))
    record, scores_key = keys.score_version(sid, version), keys.study_scores(sid, version)
    logs = [keys.job_log(job) for job in jobs]
    with r.pipeline() as pipe:
        try:
            pipe.watch(record, scores_key, jobs_key, *data_keys, *logs)
            if raw := pipe.hget(record, ARCHIVED_FIELD):
                pipe.unwatch()
                return "already", ArchiveMark.from_json(raw)
            if sorted(pipe.smembers(jobs_key)) != jobs:
                pipe.unwatch()
                return "raced", None
            payload = _snapshot(pipe, sid, version, data_keys, jobs)
            kept = pipe.get(scores_key)
            payload["study_scores"] = kept if kept is not None else study_scores
            mark = store_object(payload)
            pipe.multi()
            pipe.hset(record, ARCHIVED_FIELD, mark.to_json())
            if kept is None and study_scores is not None:
                pipe.set(scores_key, study_scores)
            elif kept is not None and not kept.startswith(study_codec.SCORES_PREFIX):
                pipe.set(scores_key, study_codec.encode_scores(*study_codec.decode_scores(kept)))
            pipe.delete(
                *data_keys,
                *(keys.job_log(job) for job in payload["logs"]),
                jobs_key,
                keys.problems_done(sid, version),
                keys.log_budget(sid, version),
            )
            if payload["events"]:
                pipe.eval(
                    _DROP_EVENTS,
                    1,
                    keys.submission_events(sid),
                    *(entry_id for entry_id, _ in payload["events"]),
                )
            pipe.execute()
            return "archived", mark
        except redis.WatchError:
            return "raced", None


# Take entries out of a stream, keeping the others with their ids, fields and order, and the stream's
# last generated id (so a new entry's id still follows every id it ever gave). XDEL would only flag the
# entries inside the stream's nodes (a node's memory goes once all of its entries are gone), and a stream
# rebuilt by XADD keeps a node preallocated at stream-node-max-bytes (4 KB): so the stream is rebuilt,
# then DUMPed and RESTOREd (its TTL kept), which stores each node at its own size. Measured on a
# neurips2020-shaped stream (300 study events of 227 B and 3 others): 64,048 B; after XDEL of the study
# events 9,680 B; rebuilt 4,712 B; rebuilt and restored 840 B. KEYS: the stream. ARGV: the ids to take
# out. Returns how many were taken out.
_DROP_EVENTS = """
local drop = {}
for i = 1, #ARGV do drop[ARGV[i]] = true end
local entries = redis.call('XRANGE', KEYS[1], '-', '+')
if #entries == 0 then return 0 end
local info = redis.call('XINFO', 'STREAM', KEYS[1])
local last = nil
for i = 1, #info, 2 do
  if info[i] == 'last-generated-id' then last = info[i + 1] end
end
local kept = {}
for _, entry in ipairs(entries) do
  if not drop[entry[1]] then kept[#kept + 1] = entry end
end
if #kept == #entries then return 0 end
local ttl = redis.call('PTTL', KEYS[1])
redis.call('DEL', KEYS[1])
if #kept == 0 then return #entries end
for _, entry in ipairs(kept) do
  redis.call('XADD', KEYS[1], entry[1], unpack(entry[2]))
end
if last then redis.call('XSETID', KEYS[1], last) end
local dumped = redis.call('DUMP', KEYS[1])
redis.call('RESTORE', KEYS[1], ttl > 0 and ttl or 0, dumped, 'REPLACE')
return #entries - #kept
"""


def _version_study_events(entries: list[tuple[str, dict[str, str]]], version: int) -> list[list[str]]:
    """[stream id, event JSON] of the `study` events of score `version` among a submission's stream
    entries, in stream order."""
    out = []
    for entry_id, fields in entries:
        raw = fields.get("json", "")
        if '"study"' not in raw:
            continue  # cheap pre-check: the other events
        try:
            event = json.loads(raw)
        except ValueError:
            continue
        data = event.get("data") if isinstance(event, dict) else None
        if event.get("kind") == "study" and isinstance(data, dict) and data.get("version") == version:
            out.append([entry_id, raw])
    return out


def _snapshot(pipe: Any, sid: str, version: int, data_keys: list[str], jobs: list[str]) -> dict[str, Any]:
    """The raw contents of the version's keys and logs, its job ids and its `study` events, read through
    a WATCHing pipeline (immediate)."""
    now = time.time()
    snapshot: dict[str, Any] = {}
    for key in data_keys:
        kind = pipe.type(key)
        if kind == "none":
            continue
        if kind == "hash":
            snapshot[key] = {"type": "hash", "value": pipe.hgetall(key)}
        elif kind == "string":
            snapshot[key] = {"type": "string", "value": pipe.get(key)}
        elif kind == "set":
            snapshot[key] = {"type": "set", "value": sorted(pipe.smembers(key))}
        else:
            raise ValueError(f"{key}: a {kind} is not a kind of key the archive keeps")
    logs: dict[str, Any] = {}
    for job in jobs:
        entries = pipe.xrange(keys.job_log(job))
        if not entries:
            continue
        ttl_ms = pipe.pttl(keys.job_log(job))
        logs[job] = {
            "entries": [[entry_id, fields.get("line", "")] for entry_id, fields in entries],
            "expires_at": now + ttl_ms / 1000 if ttl_ms and ttl_ms > 0 else None,
        }
    events = _version_study_events(pipe.xrange(keys.submission_events(sid)), version)
    return {
        "submission": sid,
        "version": version,
        "created_at": now,
        "keys": snapshot,
        "logs": logs,
        "jobs": jobs,
        "events": events,
    }


def note_ended_versions(r: redis.Redis, *, batch: int = _ENDED_BATCH) -> int:
    """Queue for the archiver (keys.archive_pending, by when each ended) the score versions that ended
    since the last call, read from the event stream after keys.archive_cursor; returns how many events
    were read. With no cursor yet, or one the capped stream has trimmed past, every version that ended
    is found from the records instead (`queue_ended_versions`)."""
    cursor = r.get(keys.archive_cursor())
    first = r.xrange(keys.events(), count=1)
    if cursor is None or (first and _stream_id(first[0][0]) > _stream_id(cursor) and cursor != "0-0"):
        newest = r.xrevrange(keys.events(), count=1)
        queue_ended_versions(r)
        r.set(keys.archive_cursor(), newest[0][0] if newest else "0-0")
        return 0
    found = r.xread({keys.events(): cursor}, count=batch)
    entries = found[0][1] if found else []
    if not entries:
        return 0
    terminal = {state.value for state in TERMINAL_STATES}
    ended: dict[str, float] = {}
    for _, fields in entries:
        raw = fields.get("json", "")
        if '"state"' not in raw:
            continue  # cheap pre-check: most events are studies
        try:
            event = Event.from_json(raw)
        except ValueError:
            continue
        if event.kind == "state" and event.submission_id and event.data.get("to") in terminal:
            ended[f"{event.submission_id}:{int(event.data.get('version', 0))}"] = event.ts
    pipe = r.pipeline()
    if ended:
        pipe.zadd(keys.archive_pending(), ended, nx=True)
    pipe.set(keys.archive_cursor(), entries[-1][0])
    pipe.execute()
    return len(entries)


def queue_ended_versions(r: redis.Redis) -> int:
    """Queue every score version that ended and is not archived, from the records: each submission's
    versions before its current one, and its current one when terminal. One pass over every submission:
    for the first run and for `bbo admin archive --all`."""
    ids = r.zrange(keys.submissions_index(), 0, -1)
    queued = 0
    for start in range(0, len(ids), 500):
        subs = load_submissions(r, ids[start : start + 500])
        pipe = r.pipeline(transaction=False)
        wanted: list[tuple[str, float]] = []
        for sub in subs:
            last = sub.score_version if sub.state in TERMINAL_STATES else sub.score_version - 1
            for version in range(1, last + 1):
                ended = sub.updated_at if version == sub.score_version else 0.0
                wanted.append((f"{sub.id}:{version}", ended))
                pipe.hmget(keys.score_version(sub.id, version), ARCHIVED_FIELD, "closed_at")
        found = pipe.execute()
        ended_at = {
            member: float(closed or when)
            for (member, when), (archived, closed) in zip(wanted, found, strict=True)
            if not archived
        }
        if ended_at:
            queued += int(r.zadd(keys.archive_pending(), ended_at, nx=True))
    return queued


def due_versions(r: redis.Redis, before: float, limit: int) -> list[tuple[str, int]]:
    """Queued versions that ended before `before`, oldest first."""
    out = []
    for member in r.zrangebyscore(keys.archive_pending(), "-inf", before, start=0, num=max(0, limit)):
        sid, _, version = member.rpartition(":")
        out.append((sid, int(version)))
    return out


def pending_versions(r: redis.Redis) -> int:
    return int(r.zcard(keys.archive_pending()))


def version_archived_or_dropped(r: redis.Redis, sid: str, version: int) -> None:
    """Off the archiver's queue."""
    r.zrem(keys.archive_pending(), f"{sid}:{version}")


def retry_version_at(r: redis.Redis, sid: str, version: int, when: float) -> None:
    """Leave a queued version for later: due again at `when` (the queue is ordered by end time)."""
    r.zadd(keys.archive_pending(), {f"{sid}:{version}": when}, xx=True)
