"""The teams' HTTP API (FastAPI): upload, my submissions, status, stop, leaderboard, info, health, metrics.

Every rule lives in `competition.service`; this module only speaks HTTP: bearer tokens, a streamed upload
that stops reading past the spec's size limit, and one JSON error shape. It never imports `workers`.

Run it with `bbo admin serve`, or any ASGI server: `uvicorn --factory gateway.app:app_from_env
--http gateway.http_limits:GuardedHttpToolsProtocol` (the limits on request heads `serve` uses).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect

from competition import service
from competition.quotas import QuotaExceeded
from gateway import errors, metrics
from gateway.auth import require_team, team_of
from gateway.errors import ApiError
from queue_schema.connection import connect
from queue_schema.settings import unsafe_sandbox_allowed
from runtime import archiver
from runtime.spec import Spec, SpecError, load

log = logging.getLogger("bbo.gateway")

BACKENDS = ("auto", "docker", "bwrap", "process")
MIB = 1024 * 1024
# Room for the multipart framing and the small form fields around the file part.
MULTIPART_SLACK = 64 * 1024
LEADERBOARD_CACHE_S = 2.0
# /metrics reads every submission's hash: computed at most once per this many seconds and shared by every
# scraper (a Prometheus scrape interval is 15 s or more), so a flood of requests costs one scan.
METRICS_CACHE_S = 5.0
# An upload body may pause this long between chunks, and take this long in all (50 MiB in 5 minutes is
# 170 KiB/s, slower than any team's uplink); the reverse proxy's own body timeout may be shorter.
BODY_IDLE_S = 30.0
BODY_TOTAL_S = 300.0


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


class _TooSlow(Exception):
    pass


class _TooLarge(Exception):
    pass


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
    stop = threading.Event()
    thread = threading.Thread(target=_archiving, args=(app.state.redis, stop), name="archiver", daemon=True)
    thread.start()
    try:
        yield
    finally:
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
    errors.install(app)
    limit = spec.submission.max_zip_mb * MIB

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
        content_type = request.headers.get("content-type", "")
        if not content_type.lower().startswith("multipart/form-data"):
            raise ApiError(
                415,
                "unsupported_media_type",
                "upload the zip as multipart/form-data with the archive in a field named 'file'",
                {"Connection": "close"},
            )
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit + MULTIPART_SLACK:
            raise _too_large(spec.submission.max_zip_mb)
        # Before a byte of the body: the phase (when the query names it) and its window, a disabled team,
        # the day's quota. Refused here, the connection is closed instead of the body being read.
        try:
            await run_in_threadpool(service.admit_upload, app.state.redis, team, spec, phase)
        except (QuotaExceeded, service.ServiceError, SpecError) as exc:
            raise _refused_before_body(exc) from None
        try:
            form = await MultiPartParser(
                request.headers, _limited(request, limit + MULTIPART_SLACK), max_files=1, max_fields=8
            ).parse()
        except _TooLarge:
            raise _too_large(spec.submission.max_zip_mb) from None
        except _TooSlow as exc:
            raise ApiError(
                408, "request_timeout", f"the upload arrived too slowly: {exc}", {"Connection": "close"}
            ) from None
        except MultiPartException as exc:
            raise ApiError(400, "bad_request", f"malformed multipart body: {exc.message}") from None
        except ClientDisconnect:
            raise ApiError(400, "bad_request", "the upload was interrupted") from None
        try:
            part = form.get("file")
            if not isinstance(part, UploadFile):
                raise ApiError(422, "missing_file", "no file: send the zip in a multipart field named 'file'")
            data = await part.read(limit + 1)
            if len(data) > limit:
                raise _too_large(spec.submission.max_zip_mb)
            field = form.get("phase")
            chosen = phase or (field if isinstance(field, str) and field else None) or "feedback"
            filename = _safe_filename(part.filename)
        finally:
            await form.close()
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

    # The public board reads every scored record: a short cache keeps a crowd of readers cheap.
    boards: dict[str, tuple[float, dict]] = {}

    @app.get("/v1/leaderboard", summary="Each team's best scored submission of a phase (public)")
    def leaderboard(
        phase: str = Query("feedback", max_length=40, description="feedback or final"),
    ) -> JSONResponse:
        spec.phase(phase)
        cached = boards.get(phase)
        if cached is None or time.monotonic() - cached[0] >= app.state.leaderboard_cache_s:
            cached = (time.monotonic(), service.leaderboard_view(app.state.redis, spec, phase))
            boards[phase] = cached
        return JSONResponse(cached[1])

    @app.get("/v1/info", summary="Rules, phase windows and (with a token) my remaining quota")
    def info(request: Request) -> JSONResponse:
        team = team_of(request)
        return JSONResponse(service.info(app.state.redis, spec, team))

    metrics_lock = threading.Lock()
    metrics_cache: list = [float("-inf"), ""]  # [computed at (monotonic), text]

    @app.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
    def prometheus() -> PlainTextResponse:
        # One computation at a time; requests arriving meanwhile wait for it and share its text.
        with metrics_lock:
            if time.monotonic() - metrics_cache[0] >= app.state.metrics_cache_s:
                text = metrics.render(service.metrics_snapshot(app.state.redis))
                metrics_cache[:] = [time.monotonic(), text]
            text = metrics_cache[1]
        return PlainTextResponse(text, media_type=metrics.CONTENT_TYPE)

    return app


async def _limited(request: Request, limit: int) -> AsyncIterator[bytes]:
    """The request body, refused as soon as more than `limit` bytes arrived (never buffered whole), or
    when it stalls for BODY_IDLE_S or takes longer than BODY_TOTAL_S in all: a client trickling its
    body would otherwise hold a connection (and a parser's buffers) for as long as it likes."""
    received = 0
    started = time.monotonic()
    chunks = request.stream().__aiter__()
    while True:
        try:
            chunk = await asyncio.wait_for(chunks.__anext__(), BODY_IDLE_S)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise _TooSlow(f"nothing arrived for {BODY_IDLE_S:g} s") from None
        received += len(chunk)
        if received > limit:
            raise _TooLarge
        if time.monotonic() - started > BODY_TOTAL_S:
            raise _TooSlow(f"the upload took more than {BODY_TOTAL_S:g} s")
        yield chunk


def _too_large(max_mb: int) -> ApiError:
    # Close the connection: kept alive, the server would go on reading (and discarding) the rest of
    # the oversize body, up to its declared length or for ever when it is chunked.
    return ApiError(
        413,
        "too_large",
        f"the upload is larger than this competition's limit of {max_mb} MiB",
        {"Connection": "close"},
    )


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


def _safe_filename(name: str | None) -> str:
    base = os.path.basename((name or "").replace("\\", "/")).strip()
    cleaned = "".join(c for c in base if c.isprintable())[:120]
    return cleaned or "submission.zip"


def app_from_env() -> FastAPI:
    """For `uvicorn --factory gateway.app:app_from_env`: BBO_SPEC (default demo), BBO_BACKEND (auto)."""
    return create_app(os.environ.get("BBO_SPEC", "demo"), os.environ.get("BBO_BACKEND", "auto"))
