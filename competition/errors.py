"""Every refusal the competition's rules raise to the faces (gateway, CLI, console), in one module.

The rule modules import their errors from here, never from each other, so none of them needs another rule
module for its exceptions. A message is safe to show the team (or organizer) it concerns; `code` is a
stable machine-readable word where the gateway maps the error to a status (gateway/errors.py).
"""

from __future__ import annotations


class ServiceError(Exception):
    """A refused request; `code` is a stable machine-readable word, the message is for people."""

    code = "error"


class NotFound(ServiceError):
    code = "not_found"


class Forbidden(ServiceError):
    code = "forbidden"


class WindowClosed(Forbidden):
    code = "window_closed"


class Conflict(ServiceError):
    code = "conflict"


class ServiceUnavailable(ServiceError):
    """Our side is not ready (missing baselines, Redis down): not the team's fault, try later."""

    code = "unavailable"


class QuotaExceeded(Exception):
    """The team used its submissions for today; the message says when the quota resets."""

    code = "quota_exceeded"

    def __init__(self, message: str, resets_at: float, retry_after: int) -> None:
        super().__init__(message)
        self.resets_at = resets_at
        self.retry_after = retry_after


class TeamError(ValueError):
    """A team command that cannot be done, with a message for the organizer."""


class TeamExists(TeamError):
    pass


class UnknownTeam(TeamError):
    pass


class ModerationError(ValueError):
    """A moderation command that cannot be done, with a message for the organizer."""


class UnknownSubmission(ModerationError):
    pass


class ReproduceError(ValueError):
    """The study cannot be rerun as asked (unknown submission, problem, study, version), one line."""
