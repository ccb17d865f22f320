"""Organizer-only log of one job: buffered lines flushed to a capped Redis stream."""

from __future__ import annotations

import contextlib
import threading
import time

import redis

from queue_schema.records import append_job_log


class JobLog:
    def __init__(self, r: redis.Redis, job_id: str) -> None:
        self._r = r
        self.job_id = job_id
        self._lines: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, line: str) -> None:
        stamp = time.strftime("%H:%M:%S", time.gmtime())
        with self._lock:
            self._lines.append(f"{stamp} {line}")
            full = len(self._lines) >= 200
        if full:
            self.flush()

    def flush(self) -> None:
        with self._lock:
            lines, self._lines = self._lines, []
        # Logs are best effort: losing a few lines must never fail a scoring job.
        with contextlib.suppress(redis.RedisError):
            append_job_log(self._r, self.job_id, lines)
