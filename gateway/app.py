"""The teams' HTTP API (FastAPI): upload, my submissions, status, stop, leaderboard, info, health, metrics;
and the web pages over the same rules (gateway/web/).

Every rule lives in `competition.service`; this module only speaks HTTP: bearer tokens, a streamed upload
that stops reading past the spec's size limit, and one JSON error shape. It never imports `workers`.

Run it with `bbo admin serve`, or any ASGI server: `uvicorn --factory gateway.app:app_from_env
--http gateway.http_limits:GuardedHttpToolsProtocol` (the limits on request heads `serve` uses).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.concurrency import run_in_threadpool

from competition import service
from competition.quotas import QuotaExceeded
from gateway import errors, metrics, uploads
from gateway.auth import require_team, team_of
from gateway.cache import SharedCache
from gateway.errors import ApiError
from gateway.web.hub import LiveHub
from gateway.web.live import install_live
from gateway.web.pages import install_pages
from queue_schema.connection import connect
from queue_schema.settings import unsafe_sandbox_allowed
from runtime import archiver, warm_hint
from runtime.spec import Spec, SpecError, load

log = logging.getLogger("bbo.gateway")

BACKENDS = ("auto", "docker", "bwrap", "process")
LEADERBOARD_CACHE_S = 2.0
# /metrics reads every submission's hash: computed at most once per this many seconds and shared by every
# scraper (a Prometheus scrape interval is 15 s or more), so a flood of requests costs one scan.
METRICS_CACHE_S = 5.0


UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {"type": "string", "format": "binary", "description": "The submission zip"},
                        "phase": {"type": "string", "description": "feedback (default) or final"},
                    },
                    "required": ["file"],
                }
            }
        },
    }
}


def _archiving(r: Any, stop: threading.Event) -> None:
    """The archive is this machine's state folder unless BBO_ARCHIVE_URL names a shared one, so the gateway
    moves ended score versions there (runtime/archiver.py); one process of the gateway's at a time."""
    holder = f"gateway:{socket.gethostname()}:{os.getpid()}"
    while not stop.wait(5.0):
        try:
            archiver.gateway_tick(r, holder)
        except Exception:  # the store down or refusing: the next turn tries again
            log.exception("gateway: archiving failed; trying again")


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    # Idle workers start a sandbox for this competition's first jobs before any comes (runtime/warm_hint.py).
    try:
        warm_hint.record(app.state.redis, app.state.backend, app.state.spec.limits)
    except Exception:  # the store down: the first submission records it instead
        log.exception("gateway: could not record the competition's sandbox for idle workers")
    stop = threading.Event()
    thread = threading.Thread(target=_archiving, args=(app.state.redis, stop), name="archiver", daemon=True)
    thread.start()
    app.state.live_hub.start()
    try:
        yield
    finally:
        app.state.live_hub.stop()
        stop.set()
        thread.join(timeout=10)


def create_app(spec_name: str | Spec, backend: str = "auto", *, redis_url: str | None = None) -> FastAPI:
    """The gateway for one competition spec (a shipped name, a path, or a loaded Spec); `backend` is the
    sandbox the jobs ask workers for. Raises SpecError or ValueError for an unusable set-up."""
    spec = spec_name if isinstance(spec_name, Spec) else load(spec_name)
    if backend not in BACKENDS:
        raise ValueError(f"unknown sandbox backend {backend!r} (choose from {', '.join(BACKENDS)})")
    if backend == "process" and not unsafe_sandbox_allowed():
        raise ValueError(
            "the process backend runs team code without isolation; it is refused unless "
            "BBO_ALLOW_UNSAFE_SANDBOX=1 is set (development only)"
        )
    app = FastAPI(
        title=f"bbo-arena: {spec.name}",
        description="Submit black-box optimizers, follow their scores, see the leaderboard.",
        version="1",
        responses=errors.ERROR_RESPONSES,
        lifespan=_lifespan,
    )
    app.state.spec = spec
    app.state.backend = backend
    app.state.redis = connect(redis_url)
    app.state.leaderboard_cache_s = LEADERBOARD_CACHE_S
    app.state.metrics_cache_s = METRICS_CACHE_S
    # The public board reads every scored record: one computation at a time, shared by every reader
    # (the API's and the web pages'), kept leaderboard_cache_s.
    app.state.boards = SharedCache(
        lambda phase: service.leaderboard_view(app.state.redis, spec, phase),
        lambda: app.state.leaderboard_cache_s,
    )
    errors.install(app)
    install_pages(app, spec, backend)
    install_live(app, LiveHub(app.state.redis))  # the pages' live updates; the lifespan runs its thread

    @app.get("/health", summary="Liveness: the store answers")
    def health() -> JSONResponse:
        app.state.redis.ping()
        return JSONResponse({"status": "ok", "competition": spec.name})

    @app.post(
        "/v1/submissions",
        status_code=201,
        summary="Upload a submission zip (multipart field `file`)",
        openapi_extra=UPLOAD_BODY,  # the body is parsed by hand (streamed, size-capped): documented here
    )
    async def upload(
        request: Request,
        team: str = Depends(_uploading_team),
        phase: str | None = Query(None, max_length=40, description="feedback (default) or final"),
    ) -> JSONResponse:
        uploads.check_headers(request, spec.submission.max_zip_mb)
        # Before a byte of the body: the phase (when the query names it) and its window, a disabled team,
        # the day's quota. Refused here, the connection is closed instead of the body being read.
        try:
            await run_in_threadpool(service.admit_upload, app.state.redis, team, spec, phase)
        except (QuotaExceeded, service.ServiceError, SpecError) as exc:
            raise _refused_before_body(exc) from None
        form = await uploads.read_upload(request, spec.submission.max_zip_mb)
        chosen = phase or form.fields.get("phase") or "feedback"
        data, filename = form.data, form.filename
        sub = await run_in_threadpool(
            service.submit, app.state.redis, team, data, filename, spec, chosen, backend
        )
        return JSONResponse(
            service.public_view(sub), status_code=201, headers={"Location": f"/v1/submissions/{sub.id}"}
        )

    @app.get("/v1/submissions", summary="My submissions, newest first")
    def mine(
        team: str = Depends(require_team),
        limit: int = Query(100, ge=1, le=1000, description="How many, newest first."),
    ) -> JSONResponse:
        subs = service.list_submissions(app.state.redis, team, limit)
        return JSONResponse([service.public_view(s) for s in subs])

    @app.get("/v1/submissions/{sid}", summary="One of my submissions, with live progress")
    def status(sid: str, request: Request) -> JSONResponse:
        # The hot path (every `status --watch` polls it): the token is checked in this worker thread, not
        # in a dependency, which FastAPI would run in a thread hop of its own.
        team = require_team(request)
        return JSONResponse(service.public_view(service.status(app.state.redis, team, sid)))

    @app.post("/v1/submissions/{sid}/stop", summary="Stop one of my queued or running submissions")
    def stop(sid: str, team: str = Depends(require_team)) -> JSONResponse:
        return JSONResponse(service.public_view(service.stop(app.state.redis, sid, by_team=team)))

    @app.post("/v1/submissions/{sid}/select", summary="Enter the final phase with this scored submission")
    def select(sid: str, team: str = Depends(require_team)) -> JSONResponse:
        return JSONResponse(service.select(app.state.redis, team, sid, spec))

    @app.get("/v1/selection", summary="The submission I enter the final phase with (my pick, else my best)")
    def selection(team: str = Depends(require_team)) -> JSONResponse:
        return JSONResponse(service.selection(app.state.redis, team, spec))

    @app.get("/v1/leaderboard", summary="Each team's best scored submission of a phase (public)")
    def leaderboard(
        phase: str = Query("feedback", max_length=40, description="feedback or final"),
    ) -> JSONResponse:
        spec.phase(phase)
        return JSONResponse(app.state.boards.get(phase))

    @app.get("/v1/info", summary="Rules, phase windows and (with a token) my remaining quota")
    def info(request: Request) -> JSONResponse:
        team = team_of(request)
        return JSONResponse(service.info(app.state.redis, spec, team))

    # /metrics reads every submission's hash; a Prometheus scrape interval is 15 s or more.
    texts = SharedCache(
        lambda _: metrics.render(service.metrics_snapshot(app.state.redis)), lambda: app.state.metrics_cache_s
    )

    @app.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
    def prometheus() -> PlainTextResponse:
        return PlainTextResponse(texts.get(None), media_type=metrics.CONTENT_TYPE)

    return app


def _uploading_team(request: Request) -> str:
    """`require_team` for an upload: a refusal closes the connection, so its body is never read."""
    try:
        return require_team(request)
    except ApiError as exc:
        headers = {**(exc.headers or {}), "Connection": "close"}
        raise ApiError(exc.status, exc.code, exc.message, headers) from None


def _refused_before_body(exc: QuotaExceeded | service.ServiceError | SpecError) -> ApiError:
    """An upload refused before its body was read: the usual answer, closing the connection (kept alive,
    the server would go on reading the body it no longer wants)."""
    error = errors.api_error(exc)
    return ApiError(error.status, error.code, error.message, {**(error.headers or {}), "Connection": "close"})


def app_from_env() -> FastAPI:
    """For `uvicorn --factory gateway.app:app_from_env`: BBO_SPEC (default demo), BBO_BACKEND (auto)."""
    return create_app(os.environ.get("BBO_SPEC", "demo"), os.environ.get("BBO_BACKEND", "auto"))
