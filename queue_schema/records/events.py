"""The event streams (keys.events, every submission's; keys.submission_events, one's): the write of an
event into both, capped, and their reading back, with an archived score version's `study` events merged
in from its archive object."""

from __future__ import annotations

from typing import Any

import redis

from queue_schema import keys
from queue_schema.payloads import Event
from queue_schema.records.archived import _stream_id, archive_marks, load_archive

EVENTS_MAXLEN = 100_000
SUBMISSION_EVENTS_MAXLEN = 2_000


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
