"""The store's indexes (keys.state_index, failure_index, scored_index, studies_done_total): each record's
entries and the writes of a change between two of them (`_index_writes`, run by submissions.py in the
record's own transaction), the rebuild of every index from the records, the counts read from them, and
the boards' order of scored submissions (`ranking_key`, `best_of_team`, `scored_time`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import redis

from queue_schema import keys
from queue_schema.payloads import Submission
from queue_schema.states import FailureCause, SubmissionState

# Bump when the index layout changes: every reader then rebuilds once.
INDEX_LAYOUT = "1"
# What a record puts in the indexes: its state, its failure cause (failed only), and its scored index key
# with the leaderboard score of its last scored version (None when no version was ever scored).
_Entry = tuple[str, str | None, str | None, float | None]
# One write of a transaction, into its pipeline.
_Write = Callable[[Any], Any]


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
