"""Which suite a problem belongs to: the built-in ones by name, a spec's own from its definitions."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping

from suites.base import BAYESMARK, SuiteDef, split_name
from suites.base import Suite as Suite
from suites.errors import UnknownProblem

BUILTIN = (BAYESMARK, "bbob")
_lock = threading.Lock()
_instances: dict[str, Suite] = {}
_defined_instances: dict[SuiteDef, Suite] = {}


def _builtin(name: str) -> Suite:
    with _lock:
        suite = _instances.get(name)
        if suite is None:
            if name == BAYESMARK:
                from suites.bayesmark_suite import BayesmarkSuite

                suite = BayesmarkSuite()
            else:
                from suites.bbob import BbobSuite

                suite = BbobSuite()
            _instances[name] = suite
        return suite


def _defined(defn: SuiteDef) -> Suite:
    # Keyed by the definition, which is its content: a spec changed under the same suite name is another
    # suite.
    with _lock:
        suite = _defined_instances.get(defn)
        if suite is None:
            from suites.python_objective import PythonSuite

            suite = _defined_instances[defn] = PythonSuite(defn)
        return suite


class Suites:
    """The suites one spec uses: the built-in ones, and those the spec defines (`[suites.NAME]`)."""

    def __init__(self, defs: Mapping[str, SuiteDef] | Iterable[SuiteDef] = ()) -> None:
        values = defs.values() if isinstance(defs, Mapping) else defs
        self.defs: dict[str, SuiteDef] = {d.name: d for d in values}

    def named(self, name: str) -> Suite:
        if name in self.defs:
            return _defined(self.defs[name])
        if name in BUILTIN:
            return _builtin(name)
        known = ", ".join([*BUILTIN, *self.defs])
        raise UnknownProblem(f"unknown suite {name!r} (suites here: {known})")

    def of(self, problem: str) -> Suite:
        """The suite of a problem; the name is not checked (`check` does that)."""
        return self.named(split_name(problem)[0])

    def def_of(self, problem: str) -> SuiteDef | None:
        """The spec's own definition of the problem's suite (None for a built-in suite)."""
        return self.defs.get(split_name(problem)[0])

    def check(self, problem: str) -> None:
        self.of(problem).check(problem)

    def uses_only_bayesmark(self, problems: Iterable[str]) -> bool:
        return all(split_name(p)[0] == BAYESMARK for p in problems)


BAYESMARK_ONLY = Suites()


def suite_of(problem: str, defs: Mapping[str, SuiteDef] | None = None) -> Suite:
    return Suites(defs or {}).of(problem)


def builtin_test_case(problem: str) -> str:
    """A problem's name in bayesmark's data, without a spec's definitions: any suite but bayesmark's keeps
    its full name there."""
    suite = split_name(problem)[0]
    return _builtin(BAYESMARK).test_case(problem) if suite == BAYESMARK else problem


# An objective of a spec's own suite, unmeasured: a guess (costs only order jobs and size timeouts).
_UNMEASURED_SECONDS = 0.05


def coarse_seconds(problem: str) -> float:
    """A guess at a problem's seconds per evaluation, for problems no measured cost table covers."""
    suite = split_name(problem)[0]
    return _builtin(suite).coarse_seconds(problem) if suite in BUILTIN else _UNMEASURED_SECONDS
