"""The suites' exceptions: an unknown problem, and what can go wrong with an objective process."""

from __future__ import annotations


class UnknownProblem(ValueError):
    """A problem name no suite has, with a one-line reason."""


class ObjectiveRaised(Exception):  # noqa: N818 - the objective's own raising, as bayesmark's models may
    """The objective raised on a point: bayesmark scores the evaluation inf, as for its own models."""


class ObjectiveFault(RuntimeError):
    """The objective process died, hung or broke the protocol: the platform's fault, never the team's."""
