"""An organizer's own objective files as a suite (a spec's `[suites.NAME]` of kind "python").

Problems are `NAME/KEY` for each key of the definition's objectives. Each file defines `api_config`
(bayesmark's format), `evaluate(params) -> float` and, if known, `optimum`; they are all loaded into one
objective process, in the environment of the definition's locked requirements ("" for the worker's own
interpreter). A problem whose file declares its optimum has its baselines made with it (KNOWN_OPTIMUM);
the others as bayesmark's are (STRONG_RUN).
"""

from __future__ import annotations

import ast
from collections.abc import Hashable
from typing import Any

from suites import wire
from suites.base import BaselineRule, SuiteDef, qualified, split_name
from suites.errors import ObjectiveFault, UnknownProblem
from suites.process_suite import DEFAULT_CALL_TIMEOUT_S, ProcessSuite

KIND = "python"


def declares_optimum(source: str) -> bool:
    """Whether the file assigns `optimum` at its top level (to anything but None), read without running
    it: the baseline rule is known before any process starts. The value itself comes from the process."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return False  # its load will say what is wrong
    for node in tree.body:
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        else:
            continue
        if any(isinstance(t, ast.Name) and t.id == "optimum" for t in targets):
            return not (isinstance(value, ast.Constant) and value.value is None)
    return False


class PythonSuite(ProcessSuite):
    backend = "python"

    def __init__(self, defn: SuiteDef, call_timeout_s: float = DEFAULT_CALL_TIMEOUT_S) -> None:
        if defn.kind != KIND:
            raise ValueError(f"suite {defn.name}: kind {defn.kind!r} is not {KIND!r}")
        super().__init__(call_timeout_s)
        self.name = defn.name
        self.defn = defn
        known = bool(defn.objectives) and all(declares_optimum(s) for s in defn.objectives.values())
        self.baseline_rule = BaselineRule.KNOWN_OPTIMUM if known else BaselineRule.STRONG_RUN

    def check(self, problem: str) -> None:
        suite, local = split_name(problem)
        if suite != self.name or local not in self.defn.objectives:
            known = ", ".join(sorted(self.defn.objectives)) or "none"
            raise UnknownProblem(f"suite {self.name} has no problem {problem!r} (its problems: {known})")

    def catalogue(self) -> tuple[str, ...]:
        return tuple(qualified(self.name, local) for local in sorted(self.defn.objectives))

    def requirements(self) -> str:
        return self.defn.requirements

    def startup(self) -> list[tuple[str, dict[str, Any]]]:
        return [
            (wire.LOAD, {"problem": local, "source": source})
            for local, source in sorted(self.defn.objectives.items())
        ]

    def process_key(self) -> Hashable:
        # By content (a definition hashes by it): a spec that changes a file under the same suite name
        # gets a process of its own.
        return (self.name, self.backend, self.defn)

    def rule_for(self, problem: str) -> BaselineRule:
        self.check(problem)
        known = declares_optimum(self.defn.objectives[split_name(problem)[1]])
        return BaselineRule.KNOWN_OPTIMUM if known else BaselineRule.STRONG_RUN

    def known_optimum(self, problem: str) -> float | None:
        optimum = super().known_optimum(problem)
        if optimum is None and self.rule_for(problem) is BaselineRule.KNOWN_OPTIMUM:
            raise ObjectiveFault(f"{problem} declares an optimum, but its value is None")
        return optimum
