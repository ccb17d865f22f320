"""A job's organizer log (keys.job_log): appended within its score version's byte budget (one Lua
script), read back from Redis, or from the version's archive once archived."""

from __future__ import annotations

import redis

from queue_schema import keys
from queue_schema.records.archived import _stream_id, archived_job_log

JOB_LOG_MAXLEN = 5_000


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
