"""The limits uvicorn's httptools protocol lacks: a size cap and a deadline for a request's head.

uvicorn bounds neither with httptools, the parser `bbo admin serve` uses (h11 only caps the size): a
client could stream megabytes of request line and headers, all buffered in memory, or hold a
connection for ever by sending its head one byte at a time, or nothing at all (slow loris). This
protocol answers a head over `MAX_HEAD_BYTES` with 431 and one that is not complete `HEAD_TIMEOUT_S`
after the connection opened (or after the request's first byte, on a kept-alive connection) with 408,
in the API's JSON error shape, and closes the connection. Bodies are the application's business (the
upload is streamed and capped there); idle kept-alive connections are uvicorn's (`timeout_keep_alive`).

Use it as uvicorn's `http` protocol: `uvicorn --http gateway.http_limits:GuardedHttpToolsProtocol`.
"""

from __future__ import annotations

import asyncio
import json

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MAX_HEAD_BYTES = 64 * 1024
HEAD_TIMEOUT_S = 20.0

_REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    max_head_bytes = MAX_HEAD_BYTES
    head_timeout_s = HEAD_TIMEOUT_S

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._unparsed_head = 0  # bytes received since the head began, while it is incomplete
        self._in_body = False
        self._refused = False
        self._head_timer: asyncio.TimerHandle | None = None
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if not self._in_body:
            self._unparsed_head += len(data)
        super().data_received(data)
        # A head still incomplete after this chunk: everything counted is head (llhttp buffers it).
        if not self._in_body and self._unparsed_head > self.max_head_bytes:
            self._refuse_too_large()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm_head_timer()  # a later request on a kept-alive connection gets its own deadline

    def on_headers_complete(self) -> None:
        self._cancel_head_timer()
        self._in_body = True
        self._unparsed_head = 0
        # A head that arrived in one chunk: measure what the parser gave (the line and the fields).
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if size > self.max_head_bytes:
            self._refuse_too_large()
        if not self._refused:
            super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        self._in_body = False
        if not self._refused:
            super().on_message_complete()

    def _arm_head_timer(self) -> None:
        if self._head_timer is None and not self._refused:
            self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_too_slow)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if not self._in_body:
            message = f"request headers not received within {self.head_timeout_s:g} s"
            self._refuse(408, "request_timeout", message)

    def _refuse_too_large(self) -> None:
        self._refuse(431, "request_too_large", f"request line and headers over {self.max_head_bytes} bytes")

    def _refuse(self, status: int, code: str, message: str) -> None:
        """Answer in the API's error shape and close; nothing more of this connection is parsed."""
        self._cancel_head_timer()
        if self._refused or self.transport.is_closing():
            return
        self._refused = True
        # Info, not warning: a flood of these is an attack, and should not also flood the log.
        self.logger.info("%s:%s - refused with %d: %s", *(self.client or ("?", "?")), status, message)
        body = json.dumps({"error": {"code": code, "message": message}}).encode()
        head = [b"HTTP/1.1 %d %s\r\n" % (status, _REASONS[status])]
        head += [name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers]
        head += [
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n\r\n",
        ]
        self.transport.write(b"".join(head) + body)
        self.transport.close()
