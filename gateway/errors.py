"""Every error the API returns is `{"error": {"code", "message"}}` with a fitting status.

Refusals of bad input are 4xx with a message the team can act on; Redis being away is 503; only a
genuine bug is a 500, and it is logged with its traceback.
"""

from __future__ import annotations

import html
import logging
import shutil
from pathlib import Path

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from artifacts.archive import InvalidSubmission
from competition import service
from competition.quotas import QuotaExceeded
from queue_schema.connection import RedisUnavailable, store_refusal
from runtime.spec import SpecError

log = logging.getLogger("bbo.gateway")


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    """The one error shape, as the OpenAPI document states it for every refusal."""

    error: ErrorDetail


# Documented on every operation (FastAPI's default 422 schema is not what `install` answers).
ERROR_RESPONSES: dict[int | str, dict] = {
    "4XX": {"model": ErrorBody, "description": "Refused: bad input, token, quota, state or window"},
    503: {"model": ErrorBody, "description": "The competition's store is not reachable or full; retry later"},
}


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None):
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


_SERVICE_STATUS: dict[type[service.ServiceError], int] = {
    service.NotFound: 404,
    service.WindowClosed: 403,
    service.Forbidden: 403,
    service.Conflict: 409,
    service.ServiceUnavailable: 503,
}


def api_error(exc: service.ServiceError | InvalidSubmission | SpecError | QuotaExceeded) -> ApiError:
    """The one mapping of a refusal of the competition's rules to its status, code and headers."""
    if isinstance(exc, QuotaExceeded):
        return ApiError(429, exc.code, str(exc), {"Retry-After": str(exc.retry_after)})
    if isinstance(exc, InvalidSubmission):
        return ApiError(422, "invalid_submission", str(exc))
    if isinstance(exc, SpecError):  # a phase the competition does not have; the message lists them
        return ApiError(422, "invalid_phase", str(exc))
    status = next((s for cls, s in _SERVICE_STATUS.items() if isinstance(exc, cls)), 400)
    return ApiError(status, exc.code, str(exc))


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "quota_exceeded",
}


# The store's refusals of every write (queue_schema/connection.py, `store_refusal`) are not the team's doing
# or a bug of ours: 503, with what the organizers must fix in the log.
STORE_REFUSALS = {
    "MISCONF": "the competition's store is out of disk space and takes no new data; try again later",
    "OOM": "the competition's store is out of memory and takes no new data; try again later",
    "READONLY": "the competition's store is read-only right now (a failover?); try again shortly",
}


# Below this much room, a store folder's disk counts as full (Redis needs room for its next AOF write).
DISK_FULL_BYTES = 1 << 20


def _full_store_folder(client: redis.Redis) -> Path | None:
    """The folder of a store on this machine (reached by a unix socket, as the embedded one is) if its
    disk is full, else None."""
    socket_path = client.connection_pool.connection_kwargs.get("path")
    if not socket_path:
        return None
    folder = Path(socket_path).parent
    try:
        return folder if shutil.disk_usage(folder).free < DISK_FULL_BYTES else None
    except OSError:
        return None


# The API's paths answer JSON whoever asks; elsewhere (the web pages) a browser gets a page.
_API_PREFIXES = ("/v1/", "/live/", "/metrics", "/health", "/openapi", "/docs", "/redoc")


def _answer(request: Request, status: int, code: str, message: str, headers: dict[str, str] | None = None):
    """The error as the one JSON shape, or as a short HTML page for a browser on a web page's path (the
    message autoescaped: it may quote what the team sent)."""
    wants_page = "text/html" in request.headers.get("accept", "")
    if not wants_page or request.url.path.startswith(_API_PREFIXES):
        return error_response(status, code, message, headers)
    page = _PAGE.format(status=status, message=html.escape(message))
    return HTMLResponse(page, status_code=status, headers=headers)


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Error {status} · bbo-arena</title>
<link rel="stylesheet" href="/static/style.css"></head>
<body><main id="content"><h1>Error {status}</h1><p class="error" role="alert">{message}</p>
<p><a href="/">Back to the leaderboard</a></p></main></body></html>
"""


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api(request: Request, exc: ApiError):
        return _answer(request, exc.status, exc.code, exc.message, exc.headers)

    async def _refusal(request: Request, exc: Exception):
        error = api_error(exc)  # type: ignore[arg-type]
        return _answer(request, error.status, error.code, error.message, error.headers)

    for refusal in (service.ServiceError, InvalidSubmission, SpecError, QuotaExceeded):
        app.add_exception_handler(refusal, _refusal)

    async def _unavailable(request: Request, exc: Exception):
        folder = _full_store_folder(request.app.state.redis)
        if folder is not None:
            # The embedded store exits on a failed AOF write (fsync always): say why, not just "away".
            log.error("redis unavailable and the disk of its folder %s is full: %s", folder, exc)
            return _answer(request, 503, "store_full", STORE_REFUSALS["MISCONF"], {"Retry-After": "60"})
        log.warning("redis unavailable: %s", exc)
        return _answer(
            request,
            503,
            "unavailable",
            "the competition's store is not reachable; try again shortly",
            {"Retry-After": "5"},
        )

    for cls in (RedisUnavailable, redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
        app.add_exception_handler(cls, _unavailable)

    @app.exception_handler(redis.ResponseError)
    async def _refused(request: Request, exc: redis.ResponseError):
        refusal = store_refusal(exc)
        if refusal is None:
            return await _bug(request, exc)
        log.error("redis refused a write: %s", exc)
        code = "store_read_only" if refusal == "READONLY" else "store_full"
        return _answer(request, 503, code, STORE_REFUSALS[refusal], {"Retry-After": "60"})

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        parts = []
        for error in exc.errors()[:3]:
            where = ".".join(str(x) for x in error.get("loc", ()) if x not in ("query", "path", "body"))
            parts.append(f"{where}: {error.get('msg', 'invalid')}" if where else str(error.get("msg")))
        return _answer(request, 422, "invalid_request", "; ".join(parts) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        code = _HTTP_CODES.get(exc.status_code, "error")
        message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
        return _answer(request, exc.status_code, code, message, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return _answer(request, 500, "internal", "internal error; the organizers will find it in the log")
