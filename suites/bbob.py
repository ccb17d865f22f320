"""COCO's noiseless bbob functions as a suite: `bbob/f{F}-i{I}-d{D}`, evaluated by cocoex in an objective
process of the bbob environment (suites/envs/bbob.txt: coco-experiment needs numpy 2, the worker's stack
is pinned to numpy 1.23.5).

Each problem's space is its box (x0..x{D-1}, reals in [-5, 5]). Its loss is COCO's precision on COCO's
log scale, log10(f(x) - f_opt + 1e-8): from about 2 to 5 for random points down to -8 at the optimum
(COCO's final target, 1e-8), which is the known optimum the baselines take as opt, while the random-search
median stays the clip. On f itself the normalization would saturate: f's values span orders of magnitude
(f10's median random value is 8.7e6 over an optimum of 59), so the median random point sits so far above
the optimum that any search scores within a hair of 100 (random search's 128 points of f20 scored 99.97
in bbob-demo's first build).
"""

from __future__ import annotations

import math
from functools import cache

from suites import bbob_names
from suites.base import BaselineRule, split_name
from suites.environment import shipped
from suites.errors import ObjectiveFault, UnknownProblem
from suites.process_suite import ProcessSuite

NAME = "bbob"
# COCO's final target precision: the loss at the optimum is log10 of it.
FINAL_PRECISION = 1e-8


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

    def f_opt(self, problem: str) -> float:
        """The function's optimal value f(x_opt), as cocoex evaluates it."""
        f_opt = super().known_optimum(problem)
        if f_opt is None:
            raise ObjectiveFault(f"{problem}: the bbob objective process gave no optimum")
        return f_opt

    def known_optimum(self, problem: str) -> float | None:
        return math.log10(FINAL_PRECISION)

    def loss(self, problem: str, value: float) -> float:
        if math.isnan(value):
            return math.inf
        f_opt = self.f_opt(problem)
        # max(): f a rounding error below its own optimum is the optimum.
        return math.log10(max(value - f_opt, 0.0) + FINAL_PRECISION)

    def coarse_seconds(self, problem: str) -> float:
        # A request's round trip to the process dominates: about 0.1 ms even in 40 dimensions.
        return 0.0002


@cache
def _requirements() -> str:
    return shipped(NAME)
