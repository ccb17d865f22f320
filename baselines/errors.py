"""The scoring layer's exceptions: an unknown problem, a baseline file that is missing or does not fit."""

from __future__ import annotations


class BaselineError(RuntimeError):
    """A baseline file that cannot be used for what was asked, with a one-line reason."""


class MissingBaseline(BaselineError, LookupError):
    """No baseline for a spec or one of its problems; the message says how to build it."""


from suites.errors import UnknownProblem as UnknownProblem  # noqa: E402 - re-exported for callers
