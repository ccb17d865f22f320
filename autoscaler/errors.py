"""The autoscaler's exceptions: a provider's refusals and a second daemon for the same fleet."""

from __future__ import annotations


class AnotherDaemonRuns(RuntimeError):
    pass


class ProviderError(Exception):
    """The provider could not do what was asked (API down, process failed to start); one line for people."""


class CapacityExceeded(ProviderError):
    """The provider refused more machines: its cap, or a cloud project's quota (not a team's daily quota,
    competition.quotas.QuotaExceeded). `created` lists the ones it did make before refusing, so a partial
    success is not lost."""

    def __init__(self, message: str, created: list[str] | None = None) -> None:
        super().__init__(message)
        self.created = list(created or [])


class ApiError(ProviderError):
    """An error answer of the API: its HTTP status, error code and message."""

    def __init__(self, message: str, *, status: int, code: str, api_message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.api_message = api_message
