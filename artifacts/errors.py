"""The submission archive's one exception: whatever a team's archive bytes cause, with a message safe to
show the team."""

from __future__ import annotations


class InvalidSubmission(ValueError):
    """Rejected at intake (or at extraction); the message is safe to show the team."""
