"""How a phase's studies split into jobs: small enough that no job runs far longer than the rest.

A submission is scored when its slowest job ends, so one problem whose 10 studies take hours holds the
whole score back while the fleet sits idle. A phase's `studies_per_job` is the default; heavy problems get
smaller jobs of their own (the spec's `studies_per_job_by_problem`, proposed from the cost table by
`bbo admin estimate --max-job-minutes`). The sizes live in the spec, not in the mutable cost table, so a
score version's jobs stay the same whatever is measured later (the spec hash covers them).

A study's time is its objective (the cost table) plus whatever the team's optimizer spends thinking, up to
the spec's budget per study; jobs are sized for that ceiling, so that no optimizer, however slow within its
rules, makes a job outlast the target.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class JobPlan:
    """A phase's `studies_per_job` and its `studies_per_job_by_problem` exceptions."""

    studies_per_job: int
    by_problem: dict[str, int]


def plan(seconds_per_study: dict[str, float], studies: int, default: int, max_job_s: float) -> JobPlan:
    """Per problem, the most studies per job (up to `default`) whose estimated time fits `max_job_s`, a
    single study at least (studies never split). The phase default becomes the largest size any problem
    needs, so only the heavier problems are listed as exceptions."""
    sizes = {}
    for problem, seconds in seconds_per_study.items():
        fits = max(1, math.floor(max_job_s / seconds)) if seconds > 0 else default
        # The fewest jobs that fit, as even as chunks allow: 10 studies that fit 6 go 5+5, not 6+4.
        jobs = math.ceil(studies / min(fits, default))
        sizes[problem] = math.ceil(studies / jobs)
    common = max(sizes.values(), default=default)
    return JobPlan(common, {p: size for p, size in sorted(sizes.items()) if size < common})
