"""Live web pages without a polling storm: server-sent events fed by the store's event stream.

The process's one follower of the store's event stream (gateway/web/hub.py, `LiveHub`) wakes the open
streams that care. A stream is one coroutine waiting on one asyncio.Event: it reads the store only when
woken (through the hub's per-submission cache), checks its session every few seconds, and holds no thread
and no Redis connection of its own.

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
import json
import logging
import os
import random
import time
from collections import Counter
from typing import Any

import redis
from fastapi import FastAPI, Query, Request
from fastapi.responses import PlainTextResponse
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from competition import service
from gateway.web.cookies import SESSION_COOKIE, current_session
from gateway.web.hub import LiveHub, Subscription
from queue_schema import keys
from queue_schema.payloads import Submission
from queue_schema.records import load_submissions
from queue_schema.states import TERMINAL_STATES
from runtime.spec import SpecError

log = logging.getLogger("bbo.gateway.live")

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
