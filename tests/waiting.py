"""Waiting for something real to happen (a worker to join, a score to arrive), with a useful failure."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def wait_for(
    predicate: Callable[[], Any],
    timeout: float,
    what: str,
    logs: Path | None = None,
    *,
    alive: subprocess.Popen | None = None,
    interval: float = 0.25,
) -> Any:
    """Poll `predicate` until it returns something truthy, and return that. On timeout (or when the
    `alive` process exits first) fail with `what`, plus the tail of `logs`: a log file, or a folder of
    `*.log` files."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if alive is not None and alive.poll() is not None:
            raise AssertionError(f"exited with {alive.returncode} while waiting for {what}{_tail(logs)}")
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}{_tail(logs)}")


def _tail(logs: Path | None) -> str:
    if logs is None or not logs.exists():
        return ""
    files = sorted(logs.glob("*.log")) if logs.is_dir() else [logs]
    return "\n" + "\n".join(f.read_text(errors="replace")[-1500:] for f in files)
