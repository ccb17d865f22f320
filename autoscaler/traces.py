"""Competition traces for the autoscaler simulator: when submissions arrive and how long their jobs run.

The default `seed` trace is the NeurIPS 2020 challenge as its post describes it: 70 teams, 3,608
feedback submissions over about four months, arrivals rising toward the deadline with a daily cycle,
30 jobs per submission (one per feedback problem, longest first as `competition.dispatch` orders them).
Job durations follow the shipped per-problem cost table (seconds per evaluation x rounds x batch x
studies per job), scaled so that the whole competition is 10.36 compute-years: the post's 108,240
executions averaged about 50 minutes each, its models and data being heavier than bayesmark's built-in
ones (about 1.3 compute-years at this machine's speed).
"""

from __future__ import annotations

import bisect
import math
import random
from dataclasses import dataclass
from datetime import UTC, datetime

from competition import dispatch, spec

SECONDS_PER_YEAR = 365.25 * 86400
COMPETITION_2020 = {"submissions": 3608, "compute_years": 10.36}
TRACES = ("seed",)


@dataclass(frozen=True)
class Arrival:
    submission: str
    team: str
    at: float  # unix time
    durations: tuple[float, ...]  # seconds per job, in the order they are enqueued (longest first)


@dataclass(frozen=True)
class Trace:
    name: str
    start: float
    end: float
    arrivals: tuple[Arrival, ...]  # sorted by time

    @property
    def jobs(self) -> int:
        return sum(len(a.durations) for a in self.arrivals)

    @property
    def busy_seconds(self) -> float:
        return sum(sum(a.durations) for a in self.arrivals)


@dataclass(frozen=True)
class SeedTraceSettings:
    teams: int = 70
    submissions: int = 3608
    start: str = "2020-06-15T00:00:00+00:00"  # about four months up to the 2020 feedback deadline
    days: float = 122.0
    # Total job time; None: 10.36 compute-years pro rata to `submissions` (about 50 minutes a job).
    compute_years: float | None = None
    spec_name: str = "neurips2020"
    phase: str = "feedback"
    ramp: float = 2.5  # arrival rate grows as exp(ramp * fraction of the window): x12 by the deadline
    daily_amplitude: float = 0.6  # rate x (1 + a cos(...)), busiest at `daily_peak_hour` UTC
    daily_peak_hour: float = 16.0
    daily_quota: int = 5  # per team per UTC day, as in the spec
    jitter: float = 0.15  # lognormal sigma of a job's duration around its problem's cost
    # "cost": durations in proportion to the cost table; "flat": every job the same (before jitter),
    # to see the fleet alone when no job is longer than the average.
    shape: str = "cost"
    seed: int = 2020


def job_costs(spec_name: str, phase_name: str) -> list[float]:
    """Relative cost of each job of one submission (seconds on this machine), longest first."""
    competition = spec.load(spec_name)
    phase = competition.phase(phase_name)
    seconds = dispatch.costs_for(spec_name, phase.problems).seconds_per_eval
    costs = []
    for problem in dispatch.order_problems(spec_name, phase.problems):
        for _, studies in phase.chunks():
            costs.append(seconds[problem] * competition.evals_per_study * len(studies))
    return costs


def _arrival_times(settings: SeedTraceSettings, start: float, rng: random.Random) -> list[float]:
    """Inverse-CDF sampling of a rate that rises toward the deadline and follows a daily cycle."""
    hours = int(settings.days * 24)
    cumulative = []
    total = 0.0
    for h in range(hours):
        frac = h / hours
        hour_of_day = h % 24
        daily = 1 + settings.daily_amplitude * math.cos(
            2 * math.pi * (hour_of_day - settings.daily_peak_hour) / 24
        )
        total += math.exp(settings.ramp * frac) * daily
        cumulative.append(total)
    times = []
    for _ in range(settings.submissions):
        u = rng.random() * total
        h = bisect.bisect_left(cumulative, u)
        times.append(start + (h + rng.random()) * 3600)
    return sorted(times)


def seed_trace(settings: SeedTraceSettings | None = None) -> Trace:
    settings = settings or SeedTraceSettings()
    rng = random.Random(settings.seed)
    start = datetime.fromisoformat(settings.start).astimezone(UTC).timestamp()
    end = start + settings.days * 86400
    teams = [f"team{i:02d}" for i in range(settings.teams)]
    # A few keen teams submit most: Zipf-like activity.
    weights = [1 / (rank + 1) ** 0.8 for rank in range(settings.teams)]
    costs = job_costs(settings.spec_name, settings.phase)
    if settings.shape == "flat":
        costs = [sum(costs) / len(costs)] * len(costs)
    elif settings.shape != "cost":
        raise ValueError(f"unknown duration shape {settings.shape!r} (known: cost, flat)")
    per_day: dict[tuple[str, int], int] = {}
    raw: list[tuple[float, str, list[float]]] = []
    for at in _arrival_times(settings, start, rng):
        day = int((at - start) // 86400)
        team = rng.choices(teams, weights)[0]
        for _ in range(4 * settings.teams):  # a team over its daily quota: someone else submits
            if per_day.get((team, day), 0) < settings.daily_quota:
                break
            team = rng.choice(teams)
        per_day[(team, day)] = per_day.get((team, day), 0) + 1
        durations = [c * math.exp(rng.gauss(0, settings.jitter)) for c in costs]
        raw.append((at, team, durations))
    total = sum(sum(d) for _, _, d in raw)
    years = settings.compute_years
    if years is None:
        years = COMPETITION_2020["compute_years"] * settings.submissions / COMPETITION_2020["submissions"]
    scale = years * SECONDS_PER_YEAR / total if total else 1.0
    arrivals = tuple(
        Arrival(f"s{n:05d}", team, at, tuple(d * scale for d in durations))
        for n, (at, team, durations) in enumerate(raw)
    )
    return Trace("seed", start, end, arrivals)


def load(name: str, **overrides) -> Trace:
    """A trace by name; `overrides` are SeedTraceSettings fields (e.g. submissions=200 for a small run)."""
    if name == "seed":
        return seed_trace(SeedTraceSettings(**overrides))
    raise ValueError(f"unknown trace {name!r} (known: {', '.join(TRACES)})")
