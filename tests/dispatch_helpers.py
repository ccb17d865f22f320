"""Trivial RQ jobs for the dispatch tests: each records its tag, so the order jobs ran in is visible."""

from __future__ import annotations

from rq import get_current_job

RAN = "test:dispatch:ran"


def record(tag: str) -> str:
    """Append `tag` to a Redis list through the job's own connection (works in a forked work horse)."""
    get_current_job().connection.rpush(RAN, tag)
    return tag
