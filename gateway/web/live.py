"""Live web pages without a polling storm: server-sent events fed by the store's event stream.

One thread per gateway process (`LiveHub`) follows `keys.events()` with a blocking XREAD on a connection of
its own and wakes the open streams that care, by topic: `sub:<id>` (any event of a submission),
`study:<id>` (a study of it stored), `team:<name>` (an event naming the team: an upload, a token rotated
or revoked, the team disabled) and `board` (competition.live_events.moves_board). A stream is one
coroutine waiting on one asyncio.Event: a burst of events costs it one wake-up, and what it remembers
between wake-ups is bounded by what it follows, never by how many events went by. It reads the store
only when woken (through a per-submission cache, so 200 pages on one submission cost one read per
change), checks its session every few seconds, and holds no thread and no Redis connection of its own.

`install_live(app, hub)` adds the routes; the app's lifespan starts and stops the hub. When uvicorn begins
a graceful shutdown the hub ends every open stream, which would otherwise keep the process up for as long
as a page stays open.

    GET /live/leaderboard?phase=feedback   public: `refresh` {"region": "board"}, at most once a second
    GET /live/team                         signed in: `submission` (the public view of a changed one),
                                           `refresh` {"region": "submissions"} when a new one appears
    GET /live/submissions/{id}             signed in, the team's own: `submission` on every change,
                                           `refresh` {"region": "detail"} on studies (at most once a second)
                                           and once at a terminal state, where the stream ends
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import redis
from fastapi import FastAPI, Query, Request
from fastapi.responses import PlainTextResponse
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from competition import service
from competition.live_events import moves_board
from gateway.web.cookies import SESSION_COOKIE, current_session
from queue_schema import keys
from queue_schema.connection import connect
from queue_schema.payloads import Event, Submission
from queue_schema.records import load_submission, load_submissions
from queue_schema.states import TERMINAL_STATES
from runtime.spec import SpecError

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

RETRY_MS = 3000
KEEPALIVE_S = 15.0
SESSION_CHECK_S = 5.0
REFRESH_EVERY_S = 1.0
# A stream ends by itself after about this long (EventSource reconnects at once): reconnections spread
# pages over a gateway's processes, and where a server's shutdown is not seen (`_server_leaving`) no
# stream holds it up for longer than this.
STREAM_MAX_S = 600.0
MAX_STREAMS = 1000
MAX_STREAMS_PER_SESSION = 8
BUSY_RETRY_AFTER_S = 30
TEAM_SUBMISSIONS = 100
# On connecting, /live/team sends the submissions that may have changed since its page was rendered.
RECENT_S = 60.0

STREAM_HEADERS = {
    "Cache-Control": "no-store",
    "X-Accel-Buffering": "no",  # nginx: pass each event on as it comes
}


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


# -- one stream -------------------------------------------------------------------------------------


def _message(kind: str, data: dict[str, Any]) -> bytes:
    # json.dumps escapes newlines: the data is always one line, as the format needs.
    return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


class _Feed:
    """What one kind of stream sends: its first messages, and its messages after a wake-up."""

    topics: frozenset[str] = frozenset()
    due: float | None = None  # when a held-back message is next allowed out (monotonic)
    done = False

    async def start(self, subscription: Subscription) -> list[bytes]:
        """The first messages; `subscription` already follows `topics` (a feed that learns more of what
        to follow updates it before it reads what it sends)."""
        return []

    async def step(self, fired: set[str], now: float) -> list[bytes]:
        raise NotImplementedError


class _Refresh:
    """A `refresh` of one region, at most once per REFRESH_EVERY_S: a burst asks, one goes out."""

    def __init__(self, region: str) -> None:
        self.message = _message("refresh", {"region": region})
        self.pending = False
        self.sent_at = float("-inf")

    def due(self) -> float | None:
        return self.sent_at + REFRESH_EVERY_S if self.pending else None

    def take(self, now: float) -> list[bytes]:
        if not self.pending or now < self.sent_at + REFRESH_EVERY_S:
            return []
        self.pending, self.sent_at = False, now
        return [self.message]


class _BoardFeed(_Feed):
    def __init__(self) -> None:
        self.topics = frozenset({"board"})
        self.refresh = _Refresh("board")

    async def step(self, fired: set[str], now: float) -> list[bytes]:
        self.refresh.pending |= "board" in fired
        out = self.refresh.take(now)
        self.due = self.refresh.due()
        return out


def _view(sub: Submission) -> tuple[int, bytes]:
    message = _message("submission", service.public_view(sub))
    return hash(message), message


class _TeamFeed(_Feed):
    def __init__(self, hub: LiveHub, team: str) -> None:
        self.hub, self.team = hub, team
        self.sent: dict[str, int] = {}  # sid -> hash of the view last sent (or seen at the start)
        self.ids: list[str] = []
        self.topics = frozenset({f"team:{team}"})
        self.refresh = _Refresh("submissions")

    def _follow(self, ids: list[str]) -> None:
        self.ids = ids
        self.topics = frozenset({f"team:{self.team}", *(f"sub:{sid}" for sid in ids)})
        self.sent = {sid: self.sent.get(sid, 0) for sid in ids}

    async def start(self, subscription: Subscription) -> list[bytes]:
        # service.list_submissions in two steps: the ids are followed before their records are read.
        ids = await run_in_threadpool(self._latest)
        self._follow(ids)
        subscription.update(self.topics)
        subs = await run_in_threadpool(load_submissions, self.hub.redis, ids)
        out, now = [], time.time()
        for sub in subs:
            digest, message = _view(sub)
            self.sent[sub.id] = digest
            if sub.state not in TERMINAL_STATES or now - sub.updated_at < RECENT_S:
                out.append(message)
        return out

    async def step(self, fired: set[str], now: float) -> list[bytes]:
        out = []
        if f"team:{self.team}" in fired:
            ids = await run_in_threadpool(self._latest)
            if set(ids) - set(self.ids):
                self.refresh.pending = True
            self._follow(ids)
        for topic in sorted(fired):
            sid = topic.removeprefix("sub:")
            if topic.startswith("sub:") and sid in self.sent:
                sub = await run_in_threadpool(self.hub.submission, sid)
                if sub is not None and sub.team == self.team:
                    digest, message = _view(sub)
                    if digest != self.sent[sid]:
                        self.sent[sid] = digest
                        out.append(message)
        out += self.refresh.take(now)
        self.due = self.refresh.due()
        return out

    def _latest(self) -> list[str]:
        return list(self.hub.redis.zrevrange(keys.team_submissions(self.team), 0, TEAM_SUBMISSIONS - 1))


class _DetailFeed(_Feed):
    def __init__(self, hub: LiveHub, sid: str, team: str) -> None:
        self.hub, self.sid, self.team = hub, sid, team
        self.sent = 0
        self.topics = frozenset({f"sub:{sid}", f"study:{sid}", f"team:{team}"})
        self.refresh = _Refresh("detail")
        self.ending = False

    async def start(self, subscription: Subscription) -> list[bytes]:
        # Read again now that it is followed: a change since the route's read is not missed.
        return await self.step({f"sub:{self.sid}"}, time.monotonic())

    async def step(self, fired: set[str], now: float) -> list[bytes]:
        out = []
        if fired & {f"sub:{self.sid}", f"study:{self.sid}"}:
            sub = await run_in_threadpool(self.hub.submission, self.sid)
            if sub is None or sub.team != self.team:  # gone (never in practice): nothing more to follow
                self.done = True
                return out
            digest, message = _view(sub)
            if digest != self.sent:
                self.sent = digest
                out.append(message)
            if sub.state in TERMINAL_STATES and not self.ending:
                self.ending = self.refresh.pending = True
        self.refresh.pending |= f"study:{self.sid}" in fired
        sent = self.refresh.take(now)
        out += sent
        if sent and self.ending:
            self.done = True
        self.due = self.refresh.due()
        return out


# -- the limits and the response ----------------------------------------------------------------------


class _Slots:
    """Open streams of this process, in all and per session (one event loop: no lock needed)."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.open = 0
        self.by_session: Counter[str] = Counter()

    def take(self, session_key: str | None) -> bool:
        if self.open >= int(self.app.state.web_max_streams):
            return False
        if session_key is not None and self.by_session[session_key] >= MAX_STREAMS_PER_SESSION:
            return False
        self.open += 1
        if session_key is not None:
            self.by_session[session_key] += 1
        return True

    def give(self, session_key: str | None) -> None:
        self.open -= 1
        if session_key is not None:
            self.by_session[session_key] -= 1
            if self.by_session[session_key] <= 0:
                del self.by_session[session_key]


def _busy() -> Response:
    return PlainTextResponse(
        "too many live pages open; try again later\n",
        status_code=503,
        headers={"Retry-After": str(BUSY_RETRY_AFTER_S), "Cache-Control": "no-store"},
    )


class _EventStream(Response):
    """A text/event-stream answer driven by a feed: a slot taken for its life, a listener for the client
    going away, keepalives, and (signed in) the session checked every SESSION_CHECK_S and at once when
    its team's topic fires (a token revoked or rotated, the team disabled)."""

    media_type = "text/event-stream"

    def __init__(
        self, hub: LiveHub, slots: _Slots, feed: _Feed, request: Request, session_key: str | None
    ) -> None:
        # Not Response.__init__: it would declare an empty body's length, ending the stream at once.
        self.status_code = 200
        self.background = None
        self.raw_headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            *((name.lower().encode(), value.encode()) for name, value in STREAM_HEADERS.items()),
        ]
        self.hub, self.slots, self.feed, self.request, self.session_key = (
            hub,
            slots,
            feed,
            request,
            session_key,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.hub.running or not self.slots.take(self.session_key):
            await _busy()(scope, receive, send)
            return
        try:
            with self.hub.subscribe(self.feed.topics) as subscription:
                listener = asyncio.ensure_future(_until_gone(receive, subscription))
                try:
                    await self._answer(scope, receive, send, subscription)
                finally:
                    listener.cancel()
        finally:
            self.slots.give(self.session_key)

    async def _answer(self, scope: Scope, receive: Receive, send: Send, subscription: Subscription) -> None:
        # The subscription exists before the first read: nothing written after that read is missed.
        try:
            first = await self.feed.start(subscription)
        except (redis.RedisError, OSError):
            await _busy()(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        try:
            await _send(send, [f"retry: {RETRY_MS}\n\n".encode(), *first])
            await self._follow(send, subscription)
        except (redis.RedisError, OSError) as exc:
            # The store away mid-stream: the page reconnects after RETRY_MS (the hub reports the outage).
            log.warning("live: a stream ended early, the store failed (%s)", type(exc).__name__)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _follow(self, send: Send, subscription: Subscription) -> None:
        now = time.monotonic()
        ends_at = now + STREAM_MAX_S * random.uniform(0.9, 1.0)
        keepalive_at = now + KEEPALIVE_S
        check_at = now + SESSION_CHECK_S if self.session_key is not None else float("inf")
        team_topic = next((t for t in self.feed.topics if t.startswith("team:")), None)
        while not subscription.closed and not self.feed.done:
            deadline = min(keepalive_at, ends_at, check_at, self.feed.due or ends_at)
            fired = await subscription.wait(deadline - time.monotonic())
            now = time.monotonic()
            if subscription.closed or now >= ends_at:
                return
            if now >= check_at or team_topic in fired:
                if await run_in_threadpool(current_session, self.request) is None:
                    return  # signed out, token rotated or revoked, team disabled
                check_at = now + SESSION_CHECK_S
            out = await self.feed.step(fired, now)
            if self.feed.topics != subscription.topics:
                subscription.update(self.feed.topics)
            if not out and now >= keepalive_at:
                out = [b": keepalive\n\n"]
            if out:
                await _send(send, out)
                keepalive_at = now + KEEPALIVE_S


async def _send(send: Send, chunks: list[bytes]) -> None:
    await send({"type": "http.response.body", "body": b"".join(chunks), "more_body": True})


async def _until_gone(receive: Receive, subscription: Subscription) -> None:
    """The ASGI server says so when the client disconnects; the stream ends then, not at its next write."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            subscription.close()
            return


# -- the routes ---------------------------------------------------------------------------------------


def _max_streams() -> int:
    try:
        return max(1, int(os.environ.get("BBO_WEB_MAX_STREAMS", MAX_STREAMS)))
    except ValueError:
        return MAX_STREAMS


def install_live(app: FastAPI, hub: LiveHub) -> LiveHub:
    """Add the /live/ routes to `app`, fed by `hub`; returns the hub in charge, which is the first one
    installed when called twice (the second call adds nothing). The app's lifespan starts and stops it.
    `app.state.web_max_streams` caps this process's open streams (default: BBO_WEB_MAX_STREAMS, or 1000)."""
    installed = getattr(app.state, "live_hub", None)
    if installed is not None:
        return installed
    app.state.live_hub = hub
    if getattr(app.state, "web_max_streams", None) is None:
        app.state.web_max_streams = _max_streams()
    slots = _Slots(app)

    def unsigned() -> Response:
        return PlainTextResponse("sign in to follow your submissions live\n", status_code=401)

    @app.get("/live/leaderboard", include_in_schema=False)
    async def live_leaderboard(request: Request, phase: str = Query("feedback", max_length=40)) -> Response:
        try:
            app.state.spec.phase(phase)
        except SpecError:
            return PlainTextResponse("no such phase\n", status_code=404)
        return _EventStream(hub, slots, _BoardFeed(), request, None)

    @app.get("/live/team", include_in_schema=False)
    async def live_team(request: Request) -> Response:
        session = await run_in_threadpool(current_session, request)
        if session is None:
            return unsigned()
        key = request.cookies.get(SESSION_COOKIE, "")
        return _EventStream(hub, slots, _TeamFeed(hub, session.team), request, key)

    @app.get("/live/submissions/{sid}", include_in_schema=False)
    async def live_submission(request: Request, sid: str) -> Response:
        session = await run_in_threadpool(current_session, request)
        if session is None:
            return unsigned()
        try:
            sub = await run_in_threadpool(service.status, hub.redis, session.team, sid)
        except service.NotFound:
            # One answer for a foreign id and an unknown one: nothing tells them apart.
            return PlainTextResponse("no such submission\n", status_code=404)
        if sub.state in TERMINAL_STATES:
            # Nothing more will happen (short of a rescore, which the page shows on its next load):
            # 204 tells EventSource to stop reconnecting.
            return Response(status_code=204, headers={"Cache-Control": "no-store"})
        key = request.cookies.get(SESSION_COOKIE, "")
        return _EventStream(hub, slots, _DetailFeed(hub, sub.id, sub.team), request, key)

    return hub
