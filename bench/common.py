"""What every benchmark shares: its log lines on stderr, a free port, percentiles, a scratch state folder
of its own, and its figures on stdout (one JSON object with --json, aligned lines otherwise)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import socket
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def logger(name: str) -> Callable[[str], None]:
    """A function printing `bench NAME: message` on stderr (stdout carries only the figures)."""

    def log(message: str) -> None:
        print(f"bench {name}: {message}", file=sys.stderr, flush=True)

    return log


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], q: float) -> float | None:
    """The nearest-rank q-th percentile, None for no values."""
    ordered = sorted(values)
    if not ordered:
        return None
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


@contextlib.contextmanager
def scratch_state(prefix: str, *, keep: bool = False) -> Iterator[Path]:
    """A new state folder, made this process's (and its children's) BBO_STATE_DIR with no BBO_REDIS_URL,
    so the benchmark starts an embedded Redis of its own and never touches the user's; removed at the end
    unless `keep`. The prefix stays short: the Redis socket lives in here (a unix path holds 107 bytes)."""
    state = Path(tempfile.mkdtemp(prefix=prefix))
    os.environ["BBO_STATE_DIR"] = str(state)
    os.environ.pop("BBO_REDIS_URL", None)
    try:
        yield state
    finally:
        if not keep:
            shutil.rmtree(state, ignore_errors=True)


def salted_zip(folder: Path, salt: str, pad_bytes: int = 0) -> bytes:
    """The starter-kit zip of `folder` plus a salt file, so that each upload is an artifact of its own, and
    `pad_bytes` of incompressible padding, so that it takes room on disk."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                archive.write(path, path.relative_to(folder).as_posix())
        archive.writestr("salt.txt", salt)
        if pad_bytes:
            archive.writestr("padding.bin", os.urandom(pad_bytes), compress_type=zipfile.ZIP_STORED)
    return buffer.getvalue()


def print_figures(figures: dict[str, Any], as_json: bool, width: int = 32) -> None:
    if as_json:
        print(json.dumps(figures))
        return
    for key, value in figures.items():
        print(f"{key:>{width}}: {value}")


@contextlib.contextmanager
def embedded_store() -> Iterator[Any]:
    """An embedded Redis in the current state folder, started and made BBO_REDIS_URL for this process and
    the ones it starts; stopped at the end. Yields the EmbeddedRedis."""
    from queue_schema.connection import reset_clients
    from runtime.redis_server import EmbeddedRedis

    server = EmbeddedRedis()
    server.start()
    os.environ["BBO_REDIS_URL"] = server.url
    reset_clients()
    try:
        yield server
    finally:
        server.stop()
