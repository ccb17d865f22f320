"""Build a spec's baselines with bayesmark's own machinery.

Per problem of the spec (both phases):
- `random_studies` random-search studies of rounds x batch, on the same seeded objective teams face
  (common random numbers), each optimizer seeded from (problem, study, baseline seed);
- one long run of the trust-region optimizer for the best-known loss, unless the problem's suite knows its
  optimum (`BaselineRule.KNOWN_OPTIMUM`: COCO's functions, an organizer's analytic objective), which then
  stands in for the long run as one evaluation that found it.
bayesmark's `compute_baseline` then turns them into clip (median single random loss), opt (best loss any
run saw, padded) and the random-search curves. The long run enters as `strong_rounds / rounds` extra
studies of a second method, so that bayesmark's "best of any method" covers it.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import math
import os
import platform
import random
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from bayesmark.constants import (
    ITER,
    METHOD,
    PERF_BEST,
    PERF_CLIP,
    PERF_MEAN,
    PERF_MED,
    SUGGEST,
    TEST_CASE,
    TRIAL,
)
from bayesmark.experiment import run_study
from bayesmark.experiment_baseline import compute_baseline
from bayesmark.np_util import linear_rescale
from threadpoolctl import threadpool_limits

from baselines.store import (  # noqa: F401  (re-exported: callers load what they build from here)
    FORMAT,
    GENERALIZATION,
    BaselineError,
    BaselinePlan,
    Baselines,
    MissingBaseline,
    ProblemBaseline,
    build_path,
    load_baselines,
)
from queue_schema.seeds import optimizer_seed
from queue_schema.settings import pin_threads
from suites.base import BaselineRule, SuiteDef, split_name
from suites.registry import Suites

OPTIMIZERS_DIR = Path(__file__).parent / "optimizers"
RANDOM_SEARCH_FILE = OPTIMIZERS_DIR / "random_search" / "optimizer.py"
STRONG_FILE = OPTIMIZERS_DIR / "trust_region" / "optimizer.py"
STRONG_NAME = "TrustRegion (TuRBO-1 style: GP Thompson sampling in an adaptive trust region)"
# bayesmark's compute_baseline finds random search by this method-name prefix ("RandomSearch" + ARG_DELIM).
RANDOM_METHOD = "RandomSearch_baseline"
STRONG_METHOD = "TrustRegion_baseline"
# The long run's evaluation seeds: a study index no submission uses.
STRONG_STUDY = -1

# progress(done, total, what just finished)
Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class Unit:
    """One study run by the build: `kind` is "random" or "strong"."""

    kind: str
    problem: str
    study: int
    rounds: int
    batch: int
    salt: str
    # The definition of the problem's suite when a spec defines it (an organizer's objective): a unit run
    # on any machine needs it. Not part of the unit's identity (its key says the problem).
    suite: SuiteDef | None = field(default=None, compare=False)

    @property
    def key(self) -> str:
        """The unit's name in a fleet build's store: "KIND:PROBLEM:STUDY"."""
        return f"{self.kind}:{self.problem}:{self.study}"

    @property
    def label(self) -> str:
        return (
            f"{self.problem} {self.kind} #{self.study}" if self.kind == "random" else f"{self.problem} strong"
        )


def strong_rounds(plan: BaselinePlan) -> int:
    """Rounds of the strong run: the spec's setting (0 means 4 x rounds), rounded up to whole studies."""
    wanted = plan.strong_rounds or 4 * plan.rounds
    return int(math.ceil(wanted / plan.rounds) * plan.rounds)


def seed_salt(plan: BaselinePlan) -> str:
    return f"baseline-{plan.seed}"


@cache
def load_optimizer_class(path: str | Path) -> type:
    """The optimizer class of a starter-kit `optimizer.py` (the AbstractOptimizer subclass it defines)."""
    from bayesmark.abstract_optimizer import AbstractOptimizer

    path = Path(path)
    module_name = "bbo_baseline_" + hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load an optimizer from {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    found = [
        obj
        for obj in vars(module).values()
        if isinstance(obj, type)
        and issubclass(obj, AbstractOptimizer)
        and obj is not AbstractOptimizer
        and obj.__module__ == module_name
    ]
    if len(found) != 1:
        raise ImportError(f"{path} must define exactly one AbstractOptimizer subclass, found {len(found)}")
    return found[0]


class OwnRandomStreams:
    """Runs an optimizer on its own global random streams, as if it were alone in its process.

    In the harness the optimizer lives in a sandbox, so the objective's per-evaluation reseeding of numpy
    never reaches it; in-process it would, and every round of a random search would be a function of the
    previous round's evaluation seeds instead of its own study seed. Swapping the global states around each
    call restores the sandbox's semantics.
    """

    def __init__(self, make: Callable[[], Any], seed: int) -> None:
        outside = _get_states()
        np.random.seed(seed)
        random.seed(seed)
        try:
            self.optimizer = make()
        finally:
            self._inside = _get_states()
            _set_states(outside)

    def _call(self, method: Callable, *args: Any) -> Any:
        outside = _get_states()
        _set_states(self._inside)
        try:
            return method(*args)
        finally:
            self._inside = _get_states()
            _set_states(outside)

    def suggest(self, n_suggestions: int = 1) -> list[dict]:
        return self._call(self.optimizer.suggest, n_suggestions)

    def observe(self, X: list[dict], y: list[float]) -> None:
        return self._call(self.optimizer.observe, X, y)


def _get_states() -> tuple:
    return np.random.get_state(), random.getstate()


def _set_states(states: tuple) -> None:
    np.random.set_state(states[0])
    random.setstate(states[1])


def run_unit(unit: Unit) -> np.ndarray:
    """Run one study in this process: losses of shape (rounds, batch, 2) (visible, generalization)."""
    path = RANDOM_SEARCH_FILE if unit.kind == "random" else STRONG_FILE
    opt_class = load_optimizer_class(path)
    problem = (
        Suites([unit.suite] if unit.suite else [])
        .of(unit.problem)
        .objective(unit.problem, unit.study, unit.batch)
    )
    try:
        api_config = problem.get_api_config()
        optimizer = OwnRandomStreams(
            lambda: opt_class(api_config), optimizer_seed(unit.problem, unit.study, unit.salt)
        )
        evals, _timing, _log = run_study(
            optimizer, problem, unit.rounds, unit.batch, n_obj=len(problem.objective_names)
        )
    finally:
        problem.close()
    return np.where(np.isnan(evals), np.inf, np.asarray(evals, dtype=float))


def _pin_threads() -> None:
    """Worker initializer: one thread per numerical library, quiet models."""
    pin_threads()
    global _limits
    _limits = threadpool_limits(1)  # keep a reference: the limit lasts as long as the process
    warnings.simplefilter("ignore")  # sklearn convergence chatter, once per evaluation otherwise
    logging.getLogger("bayesmark").setLevel(logging.ERROR)


_limits = None


def plan_suites(plan: BaselinePlan) -> Suites:
    return Suites(plan.suites)


def known_optimum(plan: BaselinePlan, problem: str) -> float | None:
    """The problem's optimum if its suite knows it (then no strong run is needed), else None."""
    suite = plan_suites(plan).of(problem)
    return suite.known_optimum(problem) if suite.rule_for(problem) == BaselineRule.KNOWN_OPTIMUM else None


def plan_units(plan: BaselinePlan) -> list[Unit]:
    """Every study the build runs: each problem's strong run (unless its suite knows the optimum), then
    its random-search studies."""
    salt = seed_salt(plan)
    suites = plan_suites(plan)
    strong = [
        Unit("strong", p, STRONG_STUDY, strong_rounds(plan), plan.batch, salt, suites.def_of(p))
        for p in plan.problems
        if suites.of(p).rule_for(p) == BaselineRule.STRONG_RUN
    ]
    rand = [
        Unit("random", p, s, plan.rounds, plan.batch, salt, suites.def_of(p))
        for p in plan.problems
        for s in range(plan.random_studies)
    ]
    return strong + rand  # the long runs first, so that they do not finish last


def _with_known_optima(plan: BaselinePlan, results: dict[Unit, np.ndarray]) -> dict[Unit, np.ndarray]:
    """A problem whose suite knows its optimum gets, in place of a long run, one that found it at once."""
    salt = seed_salt(plan)
    extra: dict[Unit, np.ndarray] = {}
    for p in plan.problems:
        best = known_optimum(plan, p)
        if best is None:
            continue
        found = np.full((strong_rounds(plan), plan.batch, 2), np.inf)
        found[0, 0, :] = best
        extra[Unit("strong", p, STRONG_STUDY, strong_rounds(plan), plan.batch, salt)] = found
    return results | extra


def run_units(units: list[Unit], workers: int, progress: Progress | None = None) -> dict[Unit, np.ndarray]:
    results: dict[Unit, np.ndarray] = {}
    total = len(units)
    if workers <= 1:
        with threadpool_limits(1), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for unit in units:
                results[unit] = run_unit(unit)
                if progress:
                    progress(len(results), total, unit.label)
        return results
    with ProcessPoolExecutor(max_workers=workers, initializer=_pin_threads) as pool:
        pending: dict[Future, Unit] = {pool.submit(run_unit, unit): unit for unit in units}
        try:
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    unit = pending.pop(future)
                    results[unit] = future.result()
                    if progress:
                        progress(len(results), total, unit.label)
        except BaseException:
            for future in pending:
                future.cancel()
            raise
    return results


def _perf_array(plan: BaselinePlan, results: dict[Unit, np.ndarray], objective: int) -> xr.DataArray:
    """bayesmark's (ITER, SUGGEST, TEST_CASE, METHOD, TRIAL) array of one objective's losses.

    The strong run is cut into studies of `rounds` rounds; as the array is dense, these fill as many
    strong methods as needed, and slots beyond the run hold +inf, which no minimum ever picks.
    """
    problems = list(plan.problems)
    n_trials = plan.random_studies
    chunks = strong_rounds(plan) // plan.rounds
    n_strong = math.ceil(chunks / n_trials)
    methods = [RANDOM_METHOD] + [
        f"{STRONG_METHOD}{i}" if n_strong > 1 else STRONG_METHOD for i in range(n_strong)
    ]
    data = np.full((plan.rounds, plan.batch, len(problems), len(methods), n_trials), np.inf)
    for unit, evals in results.items():
        p = problems.index(unit.problem)
        if unit.kind == "random":
            data[:, :, p, 0, unit.study] = evals[:, :, objective]
            continue
        for chunk in range(chunks):
            method, trial = divmod(chunk, n_trials)
            data[:, :, p, 1 + method, trial] = evals[
                chunk * plan.rounds : (chunk + 1) * plan.rounds, :, objective
            ]
    suites = plan_suites(plan)
    coords = {
        ITER: np.arange(plan.rounds),
        SUGGEST: np.arange(plan.batch),
        TEST_CASE: [suites.of(p).test_case(p) for p in problems],
        METHOD: methods,
        TRIAL: np.arange(n_trials),
    }
    return xr.DataArray(data, coords=coords, dims=(ITER, SUGGEST, TEST_CASE, METHOD, TRIAL))


def _compute(perf: xr.DataArray, notes: list[str]) -> xr.Dataset:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        baseline = compute_baseline(perf)
    notes.extend(str(w.message) for w in caught if issubclass(w.category, RuntimeWarning))
    return baseline


def _floats(values: Any) -> list[float]:
    return [float(v) for v in np.asarray(values, dtype=float).ravel()]


def summarize(plan: BaselinePlan, results: dict[Unit, np.ndarray]) -> tuple[dict[str, Any], list[str]]:
    """The per-problem entries of the baseline file, computed by bayesmark's compute_baseline."""
    notes: list[str] = []
    visible = _compute(_perf_array(plan, results, 0), notes)
    general = _compute(_perf_array(plan, results, 1), notes)
    problems: dict[str, Any] = {}
    suites = plan_suites(plan)
    for name in plan.problems:
        test_case = suites.of(name).test_case(name)
        sel = {TEST_CASE: test_case}
        clip = float(visible[PERF_CLIP].sel(sel))
        opt = float(visible[PERF_BEST].sel(sel))
        mean = visible[PERF_MEAN].sel(sel).values
        strong = np.concatenate(
            [r[:, :, 0].ravel() for u, r in results.items() if u.problem == name and u.kind == "strong"]
        )
        rand = np.concatenate(
            [r[:, :, 0].ravel() for u, r in results.items() if u.problem == name and u.kind == "random"]
        )
        problems[name] = {
            "test_case": test_case,
            "clip": clip,
            "opt": opt,
            "median": _floats(visible[PERF_MED].sel(sel).values),
            "mean": _floats(mean),
            # The same rescaling bayesmark's compute_aggregates applies to its reference curve.
            "mean_normed": _floats(linear_rescale(mean, opt, clip, 0.0, 1.0, enforce_bounds=False)),
            "strong_best": float(np.min(strong)),
            "random_best": float(np.min(rand)),
            GENERALIZATION: {
                "clip": float(general[PERF_CLIP].sel(sel)),
                "opt": float(general[PERF_BEST].sel(sel)),
                "median": _floats(general[PERF_MED].sel(sel).values),
                "mean": _floats(general[PERF_MEAN].sel(sel).values),
            },
        }
    return problems, notes


def _provenance(plan: BaselinePlan, workers: int | str, seconds: float, notes: list[str]) -> dict[str, Any]:
    packages = {
        name: package_version(name) for name in ("bayesmark", "numpy", "scikit-learn", "scipy", "xarray")
    }
    suites = plan_suites(plan)
    others = sorted({split_name(p)[0] for p in plan.problems} - {"bayesmark"})
    # Only when a suite other than bayesmark's is used: bayesmark-only files stay as they always were.
    evaluated_by = {"suites": {n: suites.named(n).describe() for n in others}} if others else {}
    return evaluated_by | {
        "packages": packages | {"python": platform.python_version()},
        "baseline_settings": {
            "random_studies": plan.random_studies,
            "strong_rounds": plan.strong_rounds,
            "seed": plan.seed,
        },
        "random_studies": plan.random_studies,
        "strong_rounds": strong_rounds(plan),
        "strong_optimizer": STRONG_NAME,
        "seeds": {
            "optimizer": f"queue_schema.seeds.optimizer_seed(problem, study, salt={seed_salt(plan)!r})",
            "evaluation": "queue_schema.seeds.eval_seed(problem, study, round, index)",
            "random_studies": f"0..{plan.random_studies - 1}",
            "strong_study": STRONG_STUDY,
        },
        "machine": {
            "platform": platform.platform(),
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "workers": workers,
        },
        "build_seconds": round(seconds, 1),
        "bayesmark_warnings": notes,
    }


def build_baselines(plan: BaselinePlan, workers: int, progress: Progress | None = None) -> dict[str, Any]:
    """Run the baseline studies of every problem of the spec and return the baseline file's content."""
    started = time.monotonic()
    results = run_units(plan_units(plan), workers, progress)
    return baseline_file(plan, results, workers, time.monotonic() - started)


def baseline_file(
    plan: BaselinePlan, results: dict[Unit, np.ndarray], workers: int | str, seconds: float
) -> dict[str, Any]:
    """The baseline file's content from every unit's losses, however they were run (in this process's
    pool, or on the fleet): the same results give the same problems and version."""
    problems, notes = summarize(plan, _with_known_optima(plan, results))
    content = hashlib.sha256(json.dumps(problems, sort_keys=True).encode()).hexdigest()[:8]
    return {
        "format": FORMAT,
        "version": f"{plan.hash}-{content}",
        "spec": plan.name,
        "spec_hash": plan.hash,
        "rounds": plan.rounds,
        "batch": plan.batch,
        "created_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "provenance": _provenance(plan, workers, seconds, notes),
        "problems": problems,
    }


def write_baseline_file(data: dict[str, Any], path: str | Path) -> Path:
    """Write a built baseline (atomically) to `path` (`build_path(plan)` for the spec's own place)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(target.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(target)
    return target


@contextlib.contextmanager
def rich_progress(description: str = "baseline studies") -> Iterator[Progress]:
    """A rich progress bar on stderr, as a `progress` callback."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[last]}"),
        console=Console(file=sys.stderr),
        transient=False,
    )
    task = bar.add_task(description, total=None, last="")

    def update(done: int, total: int, what: str) -> None:
        bar.update(task, completed=done, total=total, last=what)

    with bar:
        yield update
