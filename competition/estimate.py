"""The workload estimate: what one evaluation of each problem costs on this machine, and what that makes
a submission cost, phase by phase (as the 2020 organizers worked out before launch).

For each problem of a spec (every phase), a short grid of random points is evaluated with the objective
the workers use (the problem's suite's: for bayesmark, its SklearnModel with seeded evaluations), one
problem per process, one thread per process, as workers run jobs. The figure kept is the mean CPU time
per evaluation (process time, so that other load on the machine does not inflate it); wall time is
recorded beside it. The table orders jobs (runtime/dispatch.py) and sizes the fleet.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import time
import warnings
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from datetime import UTC, datetime
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

from baselines.build import plan_units
from queue_schema.seeds import optimizer_seed
from queue_schema.settings import pin_threads
from runtime import chunking, dispatch
from runtime.spec import Spec
from suites.base import SuiteDef
from suites.registry import Suites

# progress(done, total, what just finished)
Progress = Callable[[int, int, str], None]

MEASURE = "mean CPU seconds (process time, one thread) per evaluation of random points"
OPTIMIZER_BASIS = (
    "the spec's optimizer budget per study (limits.suggest_budget_s): a ceiling; a team's optimizer "
    "may use any part of it"
)


def _one_thread() -> None:
    """Process-pool initializer: one thread per numerical library, quiet models, as in a worker."""
    pin_threads()
    from threadpoolctl import threadpool_limits

    global _limits
    _limits = threadpool_limits(1)  # the limit lasts as long as this reference
    warnings.simplefilter("ignore")
    logging.getLogger("bayesmark").setLevel(logging.ERROR)


_limits = None


def measure_problem(problem: str, evals: int, batch: int, suite: SuiteDef | None = None) -> dict[str, Any]:
    """Time `evals` random evaluations of one problem in this process."""
    import numpy as np
    from bayesmark.random_search import suggest_dict

    cpu0, wall0 = time.process_time(), time.perf_counter()
    # Loads and splits a data set, or starts an objective process: set-up, not per evaluation.
    objective = Suites([suite] if suite else []).of(problem).objective(problem, 0, batch)
    setup = time.process_time() - cpu0
    random = np.random.RandomState(optimizer_seed(problem, 0, "estimate"))
    points = suggest_dict([], [], objective.get_api_config(), n_suggestions=evals, random=random)
    cpu: list[float] = []
    wall: list[float] = []
    errors = 0
    for point in points:
        c, w = time.process_time(), time.perf_counter()
        try:
            objective.evaluate(point)
        except Exception:
            errors += 1  # bayesmark scores it inf; its time still counts
        cpu.append(time.process_time() - c)
        wall.append(time.perf_counter() - w)
    objective.close()
    return {
        "problem": problem,
        "cpu": cpu,
        "wall": wall,
        "setup_s": setup,
        "errors": errors,
        "elapsed_s": time.perf_counter() - wall0,
    }


def _run(
    problems: list[str],
    evals: int,
    batch: int,
    workers: int,
    progress: Progress | None,
    suites: Suites,
) -> list[dict]:
    results: list[dict] = []
    with ProcessPoolExecutor(max_workers=workers, initializer=_one_thread) as pool:
        pending: dict[Future, str] = {
            pool.submit(measure_problem, p, evals, batch, suites.def_of(p)): p for p in problems
        }
        try:
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    problem = pending.pop(future)
                    results.append(future.result())
                    if progress:
                        progress(len(results), len(problems), problem)
        except BaseException:
            for future in pending:
                future.cancel()
            raise
    return results


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_info(workers: int) -> dict[str, Any]:
    return {
        "host": platform.node(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpus": os.cpu_count(),
        "workers": workers,
        "python": platform.python_version(),
        "packages": {n: package_version(n) for n in ("bayesmark", "numpy", "scikit-learn", "scipy")},
    }


def measure(spec: Spec, evals: int, workers: int, progress: Progress | None = None) -> dict[str, Any]:
    """Measure every problem of the spec and return the cost table (see dispatch.load_table)."""
    started = time.perf_counter()
    # Longest first by what is known so far, so that the slowest problem does not start last.
    problems = dispatch.order_problems(spec.name, spec.all_problems())
    results = {r["problem"]: r for r in _run(problems, evals, spec.batch, workers, progress, spec.suite_set)}
    ordered = [results[p] for p in spec.all_problems()]
    return {
        "format": dispatch.COST_FORMAT,
        "spec": spec.name,
        "spec_hash": spec.hash,
        "created_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine_info(workers),
        "grid": {"evals_per_problem": evals, "points": "random (bayesmark random_search), study 0 seeds"},
        "measure": MEASURE,
        "seconds_per_eval": {r["problem"]: sum(r["cpu"]) / len(r["cpu"]) for r in ordered},
        "spread": {
            r["problem"]: {
                "min": min(r["cpu"]),
                "max": max(r["cpu"]),
                "wall_mean": sum(r["wall"]) / len(r["wall"]),
                "setup_s": r["setup_s"],
                "errors": r["errors"],
            }
            for r in ordered
        },
        "wall_seconds": round(time.perf_counter() - started, 1),
    }


def workload(
    spec: Spec, seconds_per_eval: dict[str, float], finalists: int, max_job_minutes: float | None = None
) -> dict[str, Any]:
    """CPU-hours per submission, phase by phase: objective (measured) and optimizer budget (ceiling).
    With `max_job_minutes`, also the studies per job each problem needs for its jobs to fit even when
    the optimizer spends its whole budget (the spec's `studies_per_job_by_problem`)."""
    phases: dict[str, Any] = {}
    for name, phase in spec.phases.items():
        per_problem = {
            p: phase.studies * spec.evals_per_study * seconds_per_eval[p] / 3600 for p in phase.problems
        }
        objective = sum(per_problem.values())
        optimizer = len(phase.problems) * phase.studies * spec.limits.suggest_budget_s / 3600
        per_job = max(per_problem[p] * phase.job_size(p) / phase.studies for p in phase.problems)
        phases[name] = {
            "problems": len(phase.problems),
            "studies": phase.studies,
            "jobs": len(phase.jobs()),
            "objective_cpu_hours": objective,
            "optimizer_budget_cpu_hours": optimizer,
            "ceiling_cpu_hours": objective + optimizer,
            "longest_job_objective_hours": per_job,
            "per_problem_cpu_hours": dict(sorted(per_problem.items(), key=lambda kv: -kv[1])),
        }
        if max_job_minutes is not None:
            budget = spec.limits.suggest_budget_s
            per_study_s = {p: hours * 3600 / phase.studies + budget for p, hours in per_problem.items()}
            proposal = chunking.plan(per_study_s, phase.studies, phase.studies_per_job, max_job_minutes * 60)
            phases[name]["proposed_jobs"] = {
                "studies_per_job": proposal.studies_per_job,
                "studies_per_job_by_problem": proposal.by_problem,
            }
    result: dict[str, Any] = {
        "basis": {
            "objective": f"studies x rounds x batch x seconds per evaluation ({MEASURE})",
            "optimizer": OPTIMIZER_BASIS,
        },
        "phases": phases,
    }
    result["baselines"] = baselines_workload(spec, seconds_per_eval)
    if "final" in phases:
        final = phases["final"]
        result["final_total"] = {
            "finalists": finalists,
            "objective_cpu_hours": final["objective_cpu_hours"] * finalists,
            "ceiling_cpu_hours": final["ceiling_cpu_hours"] * finalists,
        }
    return result


def baselines_workload(spec: Spec, seconds_per_eval: dict[str, float]) -> dict[str, Any]:
    """CPU-hours of the spec's baseline build (objective only: the reference optimizers' own time is
    small beside it), its units, and its longest unit: a bound on its wall time however many workers."""
    hours = [
        u.rounds * u.batch * seconds_per_eval[u.problem] / 3600 for u in plan_units(spec.baseline_plan())
    ]
    return {"units": len(hours), "objective_cpu_hours": sum(hours), "longest_unit_hours": max(hours)}


def fleet_wall(summary: dict[str, Any], workers: int) -> dict[str, Any]:
    """Wall hours on `workers` workers, each job on one: the CPU-hours spread evenly, but never less than
    the longest job (a lower bound: perfect packing). For the baseline build and one submission a phase."""
    baselines = summary["baselines"]
    return {
        "workers": workers,
        "basis": "max(CPU-hours / workers, the longest job): perfect packing, a lower bound",
        "baselines_wall_hours": max(
            baselines["objective_cpu_hours"] / workers, baselines["longest_unit_hours"]
        ),
        "submission_wall_hours": {
            name: {
                "objective": max(
                    entry["objective_cpu_hours"] / workers, entry["longest_job_objective_hours"]
                ),
                "ceiling": max(entry["ceiling_cpu_hours"] / workers, entry["longest_job_objective_hours"]),
            }
            for name, entry in summary["phases"].items()
        },
    }
