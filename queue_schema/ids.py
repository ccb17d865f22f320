"""Identifier rules: submission ids, deterministic job ids, artifact digests."""

from __future__ import annotations

import hashlib
import re
import secrets
import time

_JOB_ID_SAFE = re.compile(r"[^A-Za-z0-9_-]")
_SUBMISSION_ID = re.compile(r"^s[0-9a-z]{8}[0-9a-f]{10}$")


def new_submission_id(now: float | None = None) -> str:
    """Sortable by creation time (base-36 seconds) with a random tail against collisions."""
    seconds = int(now if now is not None else time.time())
    return f"s{_base36(seconds):0>8}{secrets.token_hex(5)}"


def is_submission_id(value: str) -> bool:
    return bool(_SUBMISSION_ID.match(value))


def job_id(submission_id: str, version: int, problem: str, chunk: int = 0) -> str:
    """One job per (submission, score version, problem[, chunk of studies]).

    Deterministic, so enqueueing twice is a no-op and a retried job finds its own results.
    """
    safe_problem = _JOB_ID_SAFE.sub("_", problem)
    return f"{submission_id}-v{version}-{safe_problem}-c{chunk}"


def baseline_unit_job_id(build_id: str, kind: str, problem: str, study: int) -> str:
    """One job per unit of a fleet baseline build (a random-search study, or the strong run of a problem).

    Deterministic, so a resumed build finds the jobs it enqueued before (queued, running or failed)."""
    safe_problem = _JOB_ID_SAFE.sub("_", problem)
    which = "strong" if kind == "strong" else f"r{study}"
    return f"bl-{build_id}-{safe_problem}-{which}"


def artifact_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _base36(value: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        value, rem = divmod(value, 36)
        out = digits[rem] + out
        if value == 0:
            return out
