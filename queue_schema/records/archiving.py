"""A complete score version's data moved out of Redis (`archive_version_data`: the snapshot, then one
transaction that marks the version archived and drops its keys, its `study` events taken out of the
submission's stream by `_DROP_EVENTS`), and the archiver's queue of versions that ended
(`note_ended_versions`, `queue_ended_versions`, `due_versions`, ...). runtime/archiver.py decides when a
version may go and writes and verifies its object (queue_schema/archive_store.py)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from typing import Any

import redis

from queue_schema import keys, study_codec
from queue_schema.payloads import Event
from queue_schema.records.archived import ARCHIVED_FIELD, ArchiveMark, _stream_id
from queue_schema.records.studies import version_data_keys
from queue_schema.records.submissions import load_submissions
from queue_schema.states import TERMINAL_STATES

_ENDED_BATCH = 5_000


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
