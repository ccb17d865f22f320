"""Organizer-only log of one job: buffered lines flushed to a capped Redis stream, within the score
version's log budget and retention (the spec's `[logs]`)."""

from __future__ import annotations

import contextlib
import threading
import time

import redis

from queue_schema.records import append_job_log

FLUSH_LINES = 200


class JobLog:
    def __init__(self, r: redis.Redis, job_id: str) -> None:
        self._r = r
        self.job_id = job_id
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self._budget_key: str | None = None
        self._budget_bytes = 0
        self._retention_s = 0
        self.dropped = 0

    def limit(self, budget_key: str, budget_bytes: int, retention_s: float) -> None:
        """Count what this job writes against `budget_key` (shared by the score version's jobs) and let
        the log expire `retention_s` after its last line."""
        self._budget_key, self._budget_bytes, self._retention_s = budget_key, budget_bytes, int(retention_s)

    def __call__(self, line: str) -> None:
        stamp = time.strftime("%H:%M:%S", time.gmtime())
        with self._lock:
            self._lines.append(f"{stamp} {line}")
            full = len(self._lines) >= FLUSH_LINES
        if full:
            self.flush()

    def flush(self) -> None:
        with self._lock:
            lines, self._lines = self._lines, []
        # Logs are best effort: losing a few lines must never fail a scoring job.
        with contextlib.suppress(redis.RedisError):
            dropped = append_job_log(
                self._r,
                self.job_id,
                lines,
                budget_key=self._budget_key,
                budget_bytes=self._budget_bytes,
                retention_s=self._retention_s,
            )
            if dropped and not self.dropped:
                # Said once, outside the budget, so a reader knows why the log stops.
                append_job_log(
                    self._r,
                    self.job_id,
                    [
                        f"{time.strftime('%H:%M:%S', time.gmtime())} [harness] this submission's log budget "
                        f"({self._budget_bytes // 1024} KiB) is used up: later lines are not kept"
                    ],
                    retention_s=self._retention_s,
                )
            self.dropped += dropped
