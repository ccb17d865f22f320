"""A real uvicorn server for the gateway: in a thread of the test process, or as `bbo admin serve` serves it,
in its own process; on a free port."""

from __future__ import annotations

import contextlib
import os
import select
import socket
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import uvicorn
from fastapi import FastAPI

from runtime.spec import SPECS_DIR
from runtime.supervisor import Child, free_port, stop_children
from tests.waiting import wait_for


@contextlib.contextmanager
def serving(app: FastAPI) -> Iterator[str]:
    """Serve `app` until the block ends; yields its base URL."""
    config = uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{config.port}"
    finally:
        server.should_exit = True
        thread.join(10)


DEMO_SPEC = SPECS_DIR / "demo.toml"
ROOT = DEMO_SPEC.parent.parent.parent


@dataclass
class ServedGateway:
    url: str
    pid: int
    log: Path


@contextlib.contextmanager
def served_gateway(redis_url: str, folder: Path, max_zip_mb: int) -> Iterator[ServedGateway]:
    """`bbo admin serve` in its own process (uvicorn, httptools, uvloop, as deployed), on `redis_url`,
    with the demo rules and a `max_zip_mb` upload cap; its log in `folder`. It must still be alive at
    the end, and must not have logged a traceback."""
    text = DEMO_SPEC.read_text()
    assert "max_zip_mb = 20\n" in text, "demo.toml changed: update served_gateway's spec edit"
    spec_path = folder / "demo.toml"
    spec_path.write_text(text.replace("max_zip_mb = 20\n", f"max_zip_mb = {max_zip_mb}\n"))
    port = free_port()
    log = folder / "serve.log"
    env = {**os.environ, "BBO_REDIS_URL": redis_url}
    command = [sys.executable, "-m", "cli", "admin", "serve", "--port", str(port), "--spec", str(spec_path)]
    log.touch()
    gateway = Child("gateway", [*command, "--log-level", "warning"], env, log=log, cwd=ROOT, restart=False)
    gateway.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: answers(url), 30, "the gateway to answer /health", log, alive=gateway.proc)
        yield ServedGateway(url, gateway.pid, log)
        assert gateway.alive, f"the gateway died:\n{log.read_text()[-2000:]}"
        assert b"Traceback" not in log.read_bytes(), log.read_text()[-3000:]
    finally:
        stop_children([gateway], timeout=10)


def answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def push_until_answered(
    url: str, head: bytes, body: Iterable[bytes], timeout: float = 30
) -> tuple[int, bytes]:
    """Send `head`, then `body` as long as the server reads it; returns (body bytes sent, the answer).
    The answer is read as soon as one arrives, so the count shows when the server gave up reading."""
    port = int(url.rsplit(":", 1)[1])
    deadline = time.monotonic() + timeout
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head)
        sock.setblocking(False)
        sent = 0
        for chunk in body:
            view = memoryview(chunk)
            while view:
                assert time.monotonic() < deadline, f"no answer after {sent} body bytes"
                readable, writable, _ = select.select([sock], [sock], [], 1)
                if readable:
                    sock.settimeout(10)
                    return sent, read_all(sock)
                if writable:
                    try:
                        written = sock.send(view)
                    except (BrokenPipeError, ConnectionResetError):
                        sock.settimeout(10)
                        return sent, read_all(sock)
                    sent += written
                    view = view[written:]
        sock.settimeout(timeout)
        return sent, read_all(sock)


def read_all(sock: socket.socket) -> bytes:
    received = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            received += chunk
    return received
