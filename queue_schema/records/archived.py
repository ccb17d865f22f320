"""A score version's data as archived, read back: its mark (`ArchiveMark`, in the version's record), the
archive object (`load_archive`, checked and cached), a job's archived log and a version's archived job
ids. runtime/archiver.py decides when a version may go and writes and verifies its object
(queue_schema/archive_store.py); archiving.py moves it out of Redis; the readers of studies, events and
job logs (studies.py, events.py, job_logs.py) fall back to what is here."""

from __future__ import annotations

import functools
import json
import re
import time
from dataclasses import asdict, dataclass
from typing import Any

import redis

from queue_schema import archive_store, keys

ARCHIVED_FIELD = "archived"  # in keys.score_version: the ArchiveMark's JSON, once archived
ARCHIVES_CACHED = 16  # decoded archive objects kept per process (each a score version's data)


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
