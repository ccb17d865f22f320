"""Reading an upload's multipart body, for the API and the web form alike: streamed, refused as soon as it
is larger than the competition's limit or arrives too slowly, never buffered whole.

A refusal is an ApiError that closes the connection: kept alive, the server would go on reading (and
discarding) the rest of a body it no longer wants, up to its declared length or for ever when chunked.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect

from gateway.errors import ApiError

MIB = 1024 * 1024
# Room for the multipart framing and the small form fields around the file part.
MULTIPART_SLACK = 64 * 1024
# An upload body may pause this long between chunks, and take this long in all (50 MiB in 5 minutes is
# 170 KiB/s, slower than any team's uplink); the reverse proxy's own body timeout may be shorter.
BODY_IDLE_S = 30.0
BODY_TOTAL_S = 300.0
# Small text fields beside the file (phase, the web form's CSRF token): longer values are not ours.
MAX_FIELD_CHARS = 200

CLOSE = {"Connection": "close"}


class _TooSlow(Exception):
    pass


class _TooLarge(Exception):
    pass


@dataclass
class UploadForm:
    data: bytes
    filename: str
    fields: dict[str, str] = field(default_factory=dict)


def check_headers(request: Request, max_mb: int) -> None:
    """Refuse, before a byte of the body, what is not a multipart upload or declares itself too large."""
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise ApiError(
            415,
            "unsupported_media_type",
            "upload the zip as multipart/form-data with the archive in a field named 'file'",
            CLOSE,
        )
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_mb * MIB + MULTIPART_SLACK:
        raise too_large(max_mb)


async def read_upload(request: Request, max_mb: int) -> UploadForm:
    """The zip of the multipart field `file` and the short text fields beside it."""
    limit = max_mb * MIB
    try:
        form = await MultiPartParser(
            request.headers, _limited(request, limit + MULTIPART_SLACK), max_files=1, max_fields=8
        ).parse()
    except _TooLarge:
        raise too_large(max_mb) from None
    except _TooSlow as exc:
        raise ApiError(408, "request_timeout", f"the upload arrived too slowly: {exc}", CLOSE) from None
    except MultiPartException as exc:
        raise ApiError(400, "bad_request", f"malformed multipart body: {exc.message}") from None
    except ClientDisconnect:
        raise ApiError(400, "bad_request", "the upload was interrupted") from None
    try:
        part = form.get("file")
        fields = {
            name: value[:MAX_FIELD_CHARS] for name, value in form.multi_items() if isinstance(value, str)
        }
        if not isinstance(part, UploadFile) or (not part.filename and part.size == 0):
            raise ApiError(422, "missing_file", "no file: send the zip in a multipart field named 'file'")
        data = await part.read(limit + 1)
        if len(data) > limit:
            raise too_large(max_mb)
        return UploadForm(data=data, filename=safe_filename(part.filename), fields=fields)
    finally:
        await form.close()


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


def too_large(max_mb: int) -> ApiError:
    return ApiError(
        413, "too_large", f"the upload is larger than this competition's limit of {max_mb} MiB", CLOSE
    )


def safe_filename(name: str | None) -> str:
    base = os.path.basename((name or "").replace("\\", "/")).strip()
    cleaned = "".join(c for c in base if c.isprintable())[:120]
    return cleaned or "submission.zip"
