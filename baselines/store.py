"""Baseline files: reading them back, and turning them into the Dataset bayesmark's analysis expects.

A baseline file holds, per problem, bayesmark's baseline quantities for the visible loss (and the
generalization loss, for exports): clip (PERF_CLIP), opt (PERF_BEST, padded), median and mean
random-search curves (PERF_MED, PERF_MEAN).

Where they live: the shipped specs' files are package data (`baselines/data/<spec>.json`), read only. A
build (`bbo admin baselines build --spec SPEC`) writes outside the package, where a reinstall cannot
remove it: beside a spec given by path (`myspec.toml` -> `myspec.baselines.json`), else in the state
folder (`<state>/baselines/<spec>.json`). The runtime says where those are (`BaselinePlan.built_paths`);
`lookup_paths` is the one order every reader follows: the built files first, then the package's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from bayesmark.constants import ITER, PERF_BEST, PERF_CLIP, PERF_MEAN, PERF_MED, TEST_CASE, VISIBLE_TO_OPT

from baselines.errors import BaselineError, MissingBaseline  # noqa: F401 - re-exported for callers
from suites.base import SuiteDef
from suites.registry import builtin_test_case

# The shipped baseline files: package data, read only (a build never writes here: see the module's doc).
PACKAGE_DIR = Path(__file__).parent / "data"
FORMAT = 1
GENERALIZATION = "generalization"  # bayesmark's second objective (SklearnModel.objective_names[1])


@dataclass(frozen=True)
class BaselinePlan:
    """What a baseline file is built for, as plain values: a spec's study shape and baseline settings
    (runtime.spec.Spec.baseline_plan makes one). Scoring knows no spec object."""

    name: str  # the spec's name: a shipped file is baselines/data/<name>.json
    hash: str
    rounds: int
    batch: int
    problems: tuple[str, ...]  # every problem of every phase
    random_studies: int
    strong_rounds: int  # as the spec sets it: 0 means 4 x rounds
    seed: int
    # The suites the spec defines itself (an organizer's objectives); the built-in ones need none.
    suites: tuple[SuiteDef, ...] = ()
    # Where an organizer's build of this spec is looked for, in lookup order; a build writes to the first.
    # Not part of what the file is built for (equality, `check_compatible`): the same build may be found
    # in either place.
    built_paths: tuple[Path, ...] = field(default=(), compare=False)


def build_command(spec_name: str) -> str:
    return f"bbo admin baselines build --spec {spec_name}"


def shipped_path(spec_name: str) -> Path:
    """The package's file for a shipped spec (present or not)."""
    return PACKAGE_DIR / f"{spec_name}.json"


def lookup_paths(plan: BaselinePlan) -> tuple[Path, ...]:
    """Where a spec's baselines are looked for, first found wins: the organizer's builds (beside the spec
    file, then the state folder), then the package's shipped file. A build is newer than what shipped."""
    return (*plan.built_paths, shipped_path(plan.name))


def find_baseline_file(plan: BaselinePlan) -> Path | None:
    """The baseline file the spec's scores use: the first of `lookup_paths` that exists, or None."""
    return next((path for path in lookup_paths(plan) if path.is_file()), None)


def build_path(plan: BaselinePlan) -> Path:
    """Where a build of the spec writes its file: the first built place (never the package)."""
    if not plan.built_paths:
        raise BaselineError(f"no place to write the baselines of spec {plan.name!r} (no state folder given)")
    return plan.built_paths[0]


@dataclass(frozen=True)
class ProblemBaseline:
    name: str
    test_case: str
    clip: float
    opt: float
    median: tuple[float, ...]
    mean: tuple[float, ...]
    mean_normed: tuple[float, ...]
    strong_best: float
    random_best: float

    @classmethod
    def from_dict(cls, name: str, raw: dict[str, Any]) -> ProblemBaseline:
        return cls(
            name=name,
            test_case=raw.get("test_case") or builtin_test_case(name),
            clip=float(raw["clip"]),
            opt=float(raw["opt"]),
            median=tuple(float(v) for v in raw["median"]),
            mean=tuple(float(v) for v in raw["mean"]),
            mean_normed=tuple(float(v) for v in raw["mean_normed"]),
            strong_best=float(raw["strong_best"]),
            random_best=float(raw["random_best"]),
        )


class Baselines:
    """One baseline file, loaded."""

    def __init__(self, data: dict[str, Any], path: Path | None = None) -> None:
        if data.get("format") != FORMAT:
            raise BaselineError(f"{path or 'baseline data'}: unsupported format {data.get('format')!r}")
        self.data = data
        self.path = path
        self.version: str = data["version"]
        self.spec_name: str = data["spec"]
        self.spec_hash: str = data["spec_hash"]
        self.rounds: int = int(data["rounds"])
        self.batch: int = int(data["batch"])
        self._problems: dict[str, dict[str, Any]] = data["problems"]

    @property
    def problems(self) -> tuple[str, ...]:
        return tuple(self._problems)

    def __contains__(self, name: object) -> bool:
        return name in self._problems

    def problem(self, name: str) -> ProblemBaseline:
        raw = self._problems.get(name)
        if raw is None:
            where = self.path or f"the baselines of spec {self.spec_name!r}"
            raise MissingBaseline(
                f"no baseline for problem {name!r} in {where}; build it with: {build_command(self.spec_name)}"
            )
        return ProblemBaseline.from_dict(name, raw)

    def dataset(self, problems: list[str] | tuple[str, ...] | None = None, objective: str = VISIBLE_TO_OPT):
        """bayesmark's baseline Dataset (what `compute_baseline` returned) for these problems.

        Variables PERF_MED and PERF_MEAN over (ITER, TEST_CASE), PERF_CLIP and PERF_BEST over TEST_CASE,
        with bayesmark's test-case names; JSON keeps floats exact, so this is the built Dataset itself.
        """
        names = list(problems) if problems is not None else list(self._problems)
        entries = [self._objective_entry(name, objective) for name in names]
        test_cases = [self.problem(name).test_case for name in names]
        coords = {ITER: np.arange(self.rounds), TEST_CASE: test_cases}
        return xr.Dataset(
            {
                PERF_MED: ((ITER, TEST_CASE), np.array([e["median"] for e in entries], dtype=float).T),
                PERF_MEAN: ((ITER, TEST_CASE), np.array([e["mean"] for e in entries], dtype=float).T),
                PERF_CLIP: ((TEST_CASE,), np.array([e["clip"] for e in entries], dtype=float)),
                PERF_BEST: ((TEST_CASE,), np.array([e["opt"] for e in entries], dtype=float)),
            },
            coords=coords,
        )

    def _objective_entry(self, name: str, objective: str) -> dict[str, Any]:
        self.problem(name)  # raises MissingBaseline
        raw = self._problems[name]
        if objective == VISIBLE_TO_OPT:
            return raw
        if objective == GENERALIZATION and GENERALIZATION in raw:
            return raw[GENERALIZATION]
        raise BaselineError(f"baseline of {name!r} has no data for objective {objective!r}")

    def check_compatible(self, plan: BaselinePlan) -> None:
        """Raise BaselineError unless this file was built for the spec's study shape and baseline settings.

        The spec hash may differ (quotas, windows and limits do not change a baseline); what the
        baseline depends on must not.
        """
        fix = f"rebuild with: {build_command(plan.name)}"
        if (self.rounds, self.batch) != (plan.rounds, plan.batch):
            raise BaselineError(
                f"baselines {self.version} are for {self.rounds} rounds x {self.batch}, "
                f"spec {plan.name!r} has {plan.rounds} x {plan.batch}; {fix}"
            )
        built = self.data.get("provenance", {}).get("baseline_settings")
        wanted = {
            "random_studies": plan.random_studies,
            "strong_rounds": plan.strong_rounds,
            "seed": plan.seed,
        }
        if built is not None and built != wanted:
            raise BaselineError(
                f"baselines {self.version} were built with settings {built}, "
                f"spec {plan.name!r} asks for {wanted}; {fix}"
            )


def load_baselines(plan: BaselinePlan, path: str | Path | None = None, *, check: bool = True) -> Baselines:
    """The baselines of a spec: from `path`, else the first file of `lookup_paths`.

    Raises MissingBaseline when there is no file, BaselineError when it does not fit the spec (unless
    `check` is off: `bbo admin baselines show` reports a misfit instead of refusing to show it).
    """
    if path is not None:
        file = Path(path)
        if not file.is_file():
            raise MissingBaseline(
                f"no baseline file for spec {plan.name!r} at {file}; "
                f"build it with: {build_command(plan.name)}"
            )
    else:
        found = find_baseline_file(plan)
        if found is None:
            looked = ", ".join(str(p) for p in lookup_paths(plan))
            raise MissingBaseline(
                f"no baseline file for spec {plan.name!r} (looked in {looked}); "
                f"build it with: {build_command(plan.name)}"
            )
        file = found
    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise BaselineError(f"{file}: not a readable baseline file: {exc}") from None
    baselines = Baselines(data, path=file)
    if check:
        baselines.check_compatible(plan)
    return baselines
