"""What a problem suite is: the one face of problems that the worker, the baselines and the tools see.

A suite names its problems, gives each one's search space (bayesmark's `api_config`), opens a study's
objective (seeded from (problem, study, round, suggestion), so evaluations repeat and every team meets the
same noise), and says how its baselines are made:
- `BaselineRule.STRONG_RUN` (bayesmark's way): opt is the best loss any baseline run saw, the trust-region
  optimizer's long run included;
- `BaselineRule.KNOWN_OPTIMUM`: the suite knows each problem's optimum (COCO's functions, an organizer's
  analytic objective), which is opt; clip stays the random-search median, so scores read like bayesmark's.

Problem names: a bayesmark problem is `MODEL-DATASET-METRIC` as ever; any other suite's problem is
`SUITE/NAME` (`bbob/f1-i1-d2`, `lab/branin`), so a name alone says its suite.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from queue_schema.seeds import eval_seed

SEPARATOR = "/"
BAYESMARK = "bayesmark"


class BaselineRule(enum.StrEnum):
    STRONG_RUN = "strong_run"
    KNOWN_OPTIMUM = "known_optimum"


def split_name(problem: str) -> tuple[str, str]:
    """`SUITE/NAME` -> (suite, name); a name without a suite is bayesmark's."""
    suite, sep, local = problem.partition(SEPARATOR)
    return (suite, local) if sep else (BAYESMARK, problem)


def qualified(suite: str, local: str) -> str:
    return local if suite == BAYESMARK else f"{suite}{SEPARATOR}{local}"


@dataclass(frozen=True)
class SuiteDef:
    """A suite a spec declares (plain values, stored with the spec so that any worker can run it).

    `kind` is "python" (an organizer's objective files) for now; the built-in suites (bayesmark, bbob)
    need no definition. `objectives` maps each problem's name to its file's source text; `requirements`
    is the locked requirements text of the suite's own environment ("" for the worker's interpreter).
    """

    name: str
    kind: str
    objectives: Mapping[str, str] = field(default_factory=dict)
    requirements: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "objectives": dict(sorted(self.objectives.items())),
            "requirements": self.requirements,
        }

    @classmethod
    def from_dict(cls, name: str, raw: Mapping[str, Any]) -> SuiteDef:
        return cls(
            name=name,
            kind=str(raw["kind"]),
            objectives={str(k): str(v) for k, v in dict(raw.get("objectives") or {}).items()},
            requirements=str(raw.get("requirements") or ""),
        )

    def __hash__(self) -> int:  # the mapping is not hashable; a definition is its content
        return hash((self.name, self.kind, tuple(sorted(self.objectives.items())), self.requirements))


class Objective(abc.ABC):
    """One study's objective, as bayesmark's `run_study` calls it (its TestFunction interface).

    Evaluations run in round order, so a counter gives each one's (round, index) and its seed. Every
    evaluation is recorded, so a study cut off mid-way keeps the rounds it completed.
    """

    def __init__(self, problem: str, study: int, batch: int) -> None:
        self.problem = problem
        self.study = study
        self.batch = batch
        self._count = 0
        # (visible loss, generalization loss) per evaluation, in call order.
        self.evaluations: list[tuple[float, float]] = []
        self.suggestions: list[dict] = []

    @abc.abstractmethod
    def get_api_config(self) -> dict: ...

    @property
    def objective_names(self) -> tuple[str, ...]:
        return ("loss", "generalization")

    @abc.abstractmethod
    def _evaluate(self, params: dict, seed: int) -> tuple[float, float]:
        """(visible loss, generalization loss) of one point, every random stream seeded from `seed`."""

    def evaluate(self, params: dict) -> tuple[float, float]:
        round_, index = divmod(self._count, self.batch)
        self._count += 1
        self.suggestions.append(dict(params))
        try:
            result = self._evaluate(params, eval_seed(self.problem, self.study, round_, index))
        except Exception:
            # run_study turns a raising objective into inf; record it the same way.
            self.evaluations.append((float("inf"), float("inf")))
            raise
        self.evaluations.append((float(result[0]), float(result[1])))
        return result

    def rounds(self) -> list[list[tuple[float, float]]]:
        """Completed rounds only: a partial round at a cut-off is not part of the study."""
        full = len(self.evaluations) // self.batch * self.batch
        return [self.evaluations[i : i + self.batch] for i in range(0, full, self.batch)]

    def close(self) -> None:  # noqa: B027 - most objectives hold nothing to release
        """Release what the objective holds (an objective process is kept for the next study)."""


class Suite(abc.ABC):
    """A family of problems. Problem names given to its methods are the full names (`SUITE/NAME`)."""

    name: str
    baseline_rule: BaselineRule = BaselineRule.STRONG_RUN
    # bayesmark's on-disk database for `bbo admin export`; other suites export the documented JSON.
    bayesmark_export: bool = False

    @abc.abstractmethod
    def check(self, problem: str) -> None:
        """Raise UnknownProblem with a one-line reason if the suite has no such problem."""

    def catalogue(self) -> tuple[str, ...]:
        """Every problem the suite offers, if it is a finite list (specs may draw from it)."""
        return ()

    def test_case(self, problem: str) -> str:
        """The problem's name in bayesmark's data (its `function` coordinate)."""
        return problem

    @abc.abstractmethod
    def api_config(self, problem: str) -> dict: ...

    @abc.abstractmethod
    def objective(self, problem: str, study: int, batch: int) -> Objective: ...

    def rule_for(self, problem: str) -> BaselineRule:
        """How this problem's baselines are made (the suite's rule, unless its problems differ)."""
        return self.baseline_rule

    def known_optimum(self, problem: str) -> float | None:
        """The problem's optimal loss, for problems of `BaselineRule.KNOWN_OPTIMUM`."""
        return None

    def prepare(self, problem: str) -> None:  # noqa: B027 - most suites have nothing to start
        """Start what the problem's studies will need (an objective process), so that it is ready when
        the first study asks. Called off the study's path; what fails here fails again, where it counts."""

    def coarse_seconds(self, problem: str) -> float:
        """A guess at the seconds per evaluation, for problems no measured cost table covers."""
        return 0.001

    def describe(self) -> dict[str, Any]:
        """What the suite is, for provenance (versions of what evaluates)."""
        return {"suite": self.name}
