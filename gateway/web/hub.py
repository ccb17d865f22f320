"""The follower of the store's event stream that keeps the web pages live (gateway/web/live.py streams).

One thread per gateway process (`LiveHub`) follows `keys.events()` with a blocking XREAD on a connection of
its own and wakes the open streams that care, by topic: `sub:<id>` (any event of a submission),
`study:<id>` (a study of it stored), `team:<name>` (an event naming the team: an upload, a token rotated
or revoked, the team disabled) and `board` (competition.live_events.moves_board). A stream waits on one
`Subscription`: a burst of events costs it one wake-up, and what it remembers between wake-ups is bounded
by what it follows, never by how many events went by. Streams read submissions through the hub's short
per-submission cache, so 200 pages on one submission cost one read per change.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import redis

from competition.live_events import moves_board
from queue_schema import keys
from queue_schema.connection import connect
from queue_schema.payloads import Event, Submission
from queue_schema.records import load_submission

log = logging.getLogger("bbo.gateway.live")

# The hub's XREAD blocks this long: stop() returns within it, and an idle gateway reads twice a second.
BLOCK_MS = 500
READ_COUNT = 1000
# Above the block time, so that a blocked read is never mistaken for a dead connection.
READ_SOCKET_TIMEOUT_S = 10.0
BACKOFF_S = (0.1, 5.0)
# How often an idle hub makes sure the stream was not emptied under it (a flushed or restarted store).
RECHECK_S = 10.0
CACHE_S = 0.2
CACHE_PRUNE_AT = 512


# -- the hub ----------------------------------------------------------------------------------------


def topics_of(event: Event) -> list[str]:
    """The topics an event wakes."""
    topics = []
    if event.submission_id:
        topics.append(f"sub:{event.submission_id}")
        if event.kind == "study":
            topics.append(f"study:{event.submission_id}")
    team = event.data.get("team")
    if isinstance(team, str) and team:
        topics.append(f"team:{team}")
    if moves_board(event):
        topics.append("board")
    return topics


class Subscription:
    """One stream's wake-up: the topics it follows, and which of them fired since it last looked."""

    def __init__(self, hub: LiveHub, loop: asyncio.AbstractEventLoop) -> None:
        self._hub = hub
        self._loop = loop
        self._wake = asyncio.Event()
        self.topics: frozenset[str] = frozenset()
        self._fired: set[str] = set()  # a subset of the topics: bounded by what the stream follows
        self._scheduled = False  # a wake-up is on its way to the loop: later events add to it only
        self.closed = False

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *_: object) -> None:
        self._hub._unsubscribe(self)

    def update(self, topics: Iterable[str]) -> None:
        """Follow `topics` from now on instead."""
        self._hub._resubscribe(self, frozenset(topics))

    def close(self) -> None:
        """End the stream (from the event loop): its wait returns at once, `closed` set."""
        self.closed = True
        self._wake.set()

    async def wait(self, timeout: float) -> set[str]:
        """The topics that fired, once one did or after `timeout` seconds (then maybe none)."""
        if not self._wake.is_set():
            timer = self._loop.call_later(max(0.0, timeout), self._wake.set)
            try:
                await self._wake.wait()
            finally:
                timer.cancel()
        self._wake.clear()
        with self._hub._lock:
            fired, self._fired = self._fired, set()
            self._scheduled = False
        return fired

    def _fire(self, topics: Iterable[str], *, close: bool = False) -> None:
        # The hub's lock is held: called from its thread.
        self._fired.update(topics)
        if close:
            self.closed = True
        if self._scheduled:
            return
        self._scheduled = True
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            self._loop.call_soon_threadsafe(self._wake.set)


@dataclass(frozen=True)
class _Cached:
    seq: int  # the hub's event count when the load began
    at: float
    value: Submission | None


class LiveHub:
    """The process's one follower of the event stream (see the module's docstring). `source` is the
    store: a client (its connection settings are copied for a connection of the hub's own) or a URL."""

    def __init__(
        self, source: redis.Redis | str, *, block_ms: int = BLOCK_MS, cache_s: float = CACHE_S
    ) -> None:
        self.redis = connect(source) if isinstance(source, str) else source
        self._source = source
        self._block_ms = block_ms
        self._cache_s = cache_s
        self._lock = threading.Lock()
        self._topics: dict[str, set[Subscription]] = {}
        self._subscriptions: set[Subscription] = set()
        self._stop = threading.Event()
        self._leaving = False  # the server began its graceful shutdown: streams end, none open
        self._thread: threading.Thread | None = None
        # Set once the hub knows where the stream ends: events written after that reach its subscribers.
        self.ready = threading.Event()
        self.events_read = 0
        self.reconnects = 0
        self._seq = 0
        self._changed: dict[str, tuple[int, float]] = {}  # sid -> (seq, monotonic) of its last event
        self._pruned_at = 0.0
        self._cache: dict[str, _Cached] = {}
        self._loading: dict[str, threading.Lock] = {}

    # -- life --

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stop.is_set()

    def start(self) -> None:
        if self.running:
            return
        self._stop.clear()
        self.ready.clear()
        self._thread = threading.Thread(target=self._run, name="live-hub", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop following the stream and end every open stream (their pages reconnect elsewhere)."""
        self._stop.set()
        self._close_all()
        if self._thread is not None:
            self._thread.join(timeout=self._block_ms / 1000 + 5)
        self._thread = None

    # -- subscriptions (from the event loop) --

    def _close_all(self) -> None:
        with self._lock:
            for subscription in self._subscriptions:
                subscription._fire((), close=True)

    def subscribe(self, topics: Iterable[str]) -> Subscription:
        subscription = Subscription(self, asyncio.get_running_loop())
        subscription.closed = self._leaving
        with self._lock:
            self._subscriptions.add(subscription)
        self._resubscribe(subscription, frozenset(topics))
        return subscription

    def _resubscribe(self, subscription: Subscription, topics: frozenset[str]) -> None:
        with self._lock:
            for topic in subscription.topics - topics:
                self._forget(topic, subscription)
            for topic in topics - subscription.topics:
                self._topics.setdefault(topic, set()).add(subscription)
            subscription.topics = topics

    def _unsubscribe(self, subscription: Subscription) -> None:
        with self._lock:
            for topic in subscription.topics:
                self._forget(topic, subscription)
            subscription.topics = frozenset()
            self._subscriptions.discard(subscription)

    def _forget(self, topic: str, subscription: Subscription) -> None:
        followers = self._topics.get(topic)
        if followers is not None:
            followers.discard(subscription)
            if not followers:
                del self._topics[topic]

    @property
    def subscribers(self) -> int:
        return len(self._subscriptions)

    # -- the submission cache (from worker threads) --

    def submission(self, sid: str) -> Submission | None:
        """The submission's record, read at most once per change by every stream that asks at once: a
        cached read is served while younger than the cache time and no event of it came since it began.
        Blocking: call it from a worker thread."""
        with self._lock:
            cached = self._fresh(sid)
            if cached is not None:
                return cached.value
            gate = self._loading.setdefault(sid, threading.Lock())
        with gate:  # the others asking meanwhile wait for this read, then take it
            with self._lock:
                cached = self._fresh(sid)
                if cached is not None:
                    return cached.value
                seq = self._seq
            started = time.monotonic()
            value = load_submission(self.redis, sid)
            with self._lock:
                self._cache[sid] = _Cached(seq, started, value)
                if len(self._cache) > CACHE_PRUNE_AT:
                    self._prune_cache(started)
            return value

    def _fresh(self, sid: str) -> _Cached | None:
        cached = self._cache.get(sid)
        if cached is None or time.monotonic() - cached.at >= self._cache_s:
            return None
        changed = self._changed.get(sid)
        return cached if changed is None or changed[0] <= cached.seq else None

    def _prune_cache(self, now: float) -> None:
        for sid in [sid for sid, cached in self._cache.items() if now - cached.at >= self._cache_s]:
            del self._cache[sid]
            self._loading.pop(sid, None)

    # -- the reader thread --

    def _reader(self) -> redis.Redis:
        if isinstance(self._source, str):
            return redis.Redis.from_url(
                self._source,
                decode_responses=True,
                socket_connect_timeout=5,
                socket_timeout=READ_SOCKET_TIMEOUT_S,
            )
        pool = self._source.connection_pool
        settings = {
            **pool.connection_kwargs,
            "decode_responses": True,
            "socket_connect_timeout": 5,
            "socket_timeout": READ_SOCKET_TIMEOUT_S,
        }
        # A pool of its own: a blocked read never holds a connection the requests' threads need.
        return redis.Redis(
            connection_pool=redis.ConnectionPool(connection_class=pool.connection_class, **settings)
        )

    def _run(self) -> None:
        reader: redis.Redis | None = None
        position: str | None = None
        pause = BACKOFF_S[0]
        failing = False
        checked = time.monotonic()
        while not self._stop.is_set():
            if not self._leaving and _server_leaving():
                # uvicorn waits for every open response before it shuts down, and an event stream
                # never ends by itself: end them now (EventSource reconnects to the next process).
                log.info("live: the server is shutting down; ending the open event streams")
                self._leaving = True
                self._close_all()
            try:
                if reader is None:
                    reader = self._reader()
                    position = self._position(reader, position)
                    checked = time.monotonic()
                    self.ready.set()
                    if failing:
                        log.info("live: the event stream is back; following it again")
                        failing = False
                assert position is not None
                entries = _entries(
                    reader.xread({keys.events(): position}, count=READ_COUNT, block=self._block_ms)
                )
                if entries:
                    position = entries[-1][0]
                    self._dispatch(entries)
                elif time.monotonic() - checked >= RECHECK_S:
                    # Quiet for a while: make sure the stream was not emptied under our position.
                    checked = time.monotonic()
                    position = self._position(reader, position)
                pause = BACKOFF_S[0]
            except Exception as exc:  # the store away, restarting, refusing: wait, reconnect, go on
                if not isinstance(exc, (redis.RedisError, OSError)):
                    log.exception("live: reading the event stream failed; starting again")
                elif not failing:
                    log.warning(
                        "live: the event stream is unreachable (%s); reconnecting", type(exc).__name__
                    )
                failing = True
                self.reconnects += 1
                if reader is not None:
                    with contextlib.suppress(Exception):
                        reader.close()
                reader = None
                self._stop.wait(pause)
                pause = min(pause * 2, BACKOFF_S[1])
        if reader is not None:
            with contextlib.suppress(Exception):
                reader.close()

    def _position(self, reader: redis.Redis, position: str | None) -> str:
        """Where to read on from: `position` while the stream still reaches it (a reconnect misses
        nothing), else the stream's end, waking every stream since what it missed is unknown."""
        newest = reader.xrevrange(keys.events(), count=1)
        end = newest[0][0] if newest else "0-0"
        if position is None:
            return end
        if _stream_id(end) < _stream_id(position):
            log.info("live: the event stream restarted below our position; following it from its end")
            with self._lock:
                for subscription in self._subscriptions:
                    subscription._fire(subscription.topics)
            return end
        return position

    def _dispatch(self, entries: list[tuple[str, dict[str, Any]]]) -> None:
        now = time.monotonic()
        parsed = []
        for _, fields in entries:
            try:
                parsed.append(Event.from_json(fields["json"]))
            except (KeyError, ValueError, TypeError):
                continue  # not an event of ours: nothing to wake
        with self._lock:
            self.events_read += len(entries)
            for event in parsed:
                self._seq += 1
                if event.submission_id:
                    self._changed[event.submission_id] = (self._seq, now)
                for topic in topics_of(event):
                    for subscription in self._topics.get(topic, ()):
                        subscription._fire((topic,))
            if now - self._pruned_at >= 1.0:
                # A change mark older than the cache time can no longer invalidate anything cached.
                self._pruned_at = now
                for sid in [sid for sid, (_, at) in self._changed.items() if now - at >= self._cache_s]:
                    del self._changed[sid]


def _server_leaving() -> bool:
    """Whether the uvicorn server of this process began its graceful shutdown: its signal handler (in the
    main thread; a server run in another thread has none) is its Server's method, whose `should_exit` is
    set by SIGTERM or Ctrl-C. Any other server: False, and open streams end after STREAM_MAX_S at the
    latest (or at uvicorn's --timeout-graceful-shutdown, cancelled)."""
    server = getattr(signal.getsignal(signal.SIGTERM), "__self__", None)
    return getattr(server, "should_exit", False) is True


def _entries(found: Any) -> list[tuple[str, dict[str, Any]]]:
    """XREAD's answer (RESP2 list or RESP3 dict) as the one stream's entries."""
    if not found:
        return []
    streams = found.items() if isinstance(found, dict) else found
    out: list[tuple[str, dict[str, Any]]] = []
    for _, entries in streams:
        if entries and isinstance(entries[0], list):  # RESP3 wraps the entries once more
            entries = entries[0]
        out.extend((str(entry_id), fields) for entry_id, fields in entries)
    return out


def _stream_id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = str(entry_id).partition("-")
    return int(ms), int(seq or 0)
