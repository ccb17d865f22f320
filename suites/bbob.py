"""COCO's noiseless bbob functions as a suite: `bbob/f{F}-i{I}-d{D}`, evaluated by cocoex in an objective
process of the bbob environment (suites/envs/bbob.txt: coco-experiment needs numpy 2, the worker's stack
is pinned to numpy 1.23.5).

Each problem's space is its box (x0..x{D-1}, reals in [-5, 5]); its loss f(x); its known optimum f at the
function's optimal point, so the baselines' opt is exact and the random-search median stays the clip.
"""

from __future__ import annotations

from functools import cache

from suites import bbob_names
from suites.base import BaselineRule, split_name
from suites.environment import shipped
from suites.errors import UnknownProblem
from suites.process_suite import ProcessSuite

NAME = "bbob"


class BbobSuite(ProcessSuite):
    name = NAME
    backend = "bbob"
    baseline_rule = BaselineRule.KNOWN_OPTIMUM

    def check(self, problem: str) -> None:
        suite, local = split_name(problem)
        if suite != NAME:
            raise UnknownProblem(f"{problem} is not a bbob problem (bbob/f{{F}}-i{{I}}-d{{D}})")
        try:
            bbob_names.parse(local)
        except ValueError as exc:
            raise UnknownProblem(f"{problem}: {exc}") from None

    def requirements(self) -> str:
        return _requirements()

    def coarse_seconds(self, problem: str) -> float:
        # A request's round trip to the process dominates: about 0.1 ms even in 40 dimensions.
        return 0.0002


@cache
def _requirements() -> str:
    return shipped(NAME)
