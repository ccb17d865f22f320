"""Competition traces for the autoscaler simulator: when submissions arrive and how long their jobs run.

The default `seed` trace is the NeurIPS 2020 challenge as its post describes it: 70 teams, 3,608
feedback submissions over about four months, arrivals rising toward the deadline with a daily cycle,
30 problems per submission (10 studies each), enqueued as the service enqueues them: in the jobs the
spec's plan makes (`runtime.spec.Phase.jobs`, a few studies each, heavy problems in smaller jobs),
longest problems first.

A study's duration is its objective (the shipped per-problem cost table: seconds per evaluation x rounds
x batch, with some jitter) plus the time the team's optimizer thinks, a share of the spec's budget per
study (640 s, as in 2020) that differs from one submission to the next. The mean share is set so that the
whole competition is 10.36 compute-years, the post's figure (108,240 executions of about 50 minutes):
at this machine's measured speed that takes optimizers spending about a third of their budget, a
plausible figure, where the objective alone would be 2.6 compute-years. (If the target cannot be met
that way, the objective is scaled up instead and the summary says so.)
"""

from __future__ import annotations

import bisect
import math
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime

from runtime import dispatch, spec

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
    info: dict[str, float] = field(default_factory=dict)  # how the durations were made (for the summary)
    problems: int = 0  # per submission: 2020's "executions" are submissions x problems

    @property
    def jobs(self) -> int:
        return sum(len(a.durations) for a in self.arrivals)

    @property
    def executions(self) -> int:
        return len(self.arrivals) * self.problems

    @property
    def busy_seconds(self) -> float:
        return sum(sum(a.durations) for a in self.arrivals)


@dataclass(frozen=True)
class SeedTraceSettings:
    teams: int = 70
    submissions: int = 3608
    start: str = "2020-06-15T00:00:00+00:00"  # about four months up to the 2020 feedback deadline
    days: float = 122.0
    # Total job time; None: 10.36 compute-years pro rata to `submissions` (about 50 minutes an execution).
    compute_years: float | None = None
    spec_name: str = "neurips2020"
    phase: str = "feedback"
    ramp: float = 2.5  # arrival rate grows as exp(ramp * fraction of the window): x12 by the deadline
    daily_amplitude: float = 0.6  # rate x (1 + a cos(...)), busiest at `daily_peak_hour` UTC
    daily_peak_hour: float = 16.0
    daily_quota: int = 5  # per team per UTC day, as in the spec
    jitter: float = 0.15  # lognormal sigma of a study's objective time around its problem's cost
    # Spread of the optimizer's share of its budget between submissions: Beta(k m, k (1 - m)) around
    # the mean share m the total asks for; larger k, closer to the mean.
    budget_share_concentration: float = 4.0
    # "cost": durations from the cost table and the optimizer budget; "flat": every job the same (their
    # mean), to see the fleet alone when no job is longer than the average.
    shape: str = "cost"
    seed: int = 2020


@dataclass(frozen=True)
class JobShape:
    """One job of a submission: its problem's objective seconds per study, and its studies."""

    problem: str
    objective_s: float  # per study, on the machine that measured the cost table
    studies: int


def job_shapes(spec_name: str, phase_name: str) -> tuple[list[JobShape], float]:
    """The jobs of one submission in enqueue order (longest first, as the service enqueues them), and
    the optimizer budget per study."""
    competition = spec.load(spec_name)
    phase = competition.phase(phase_name)
    seconds = dispatch.costs_for(spec_name, phase.problems).seconds_per_eval
    shapes = [
        JobShape(problem, seconds[problem] * competition.evals_per_study, len(studies))
        for problem, _, studies in dispatch.order_jobs(competition, phase)
    ]
    return shapes, competition.limits.suggest_budget_s


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
    if settings.shape not in ("cost", "flat"):
        raise ValueError(f"unknown duration shape {settings.shape!r} (known: cost, flat)")
    rng = random.Random(settings.seed)
    start = datetime.fromisoformat(settings.start).astimezone(UTC).timestamp()
    end = start + settings.days * 86400
    teams = [f"team{i:02d}" for i in range(settings.teams)]
    # A few keen teams submit most: Zipf-like activity.
    weights = [1 / (rank + 1) ** 0.8 for rank in range(settings.teams)]
    shapes, budget_s = job_shapes(settings.spec_name, settings.phase)
    studies = sum(shape.studies for shape in shapes)
    per_day: dict[tuple[str, int], int] = {}
    raw: list[tuple[float, str, list[float], float]] = []  # at, team, objective per job, uniform draw
    for at in _arrival_times(settings, start, rng):
        day = int((at - start) // 86400)
        team = rng.choices(teams, weights)[0]
        for _ in range(4 * settings.teams):  # a team over its daily quota: someone else submits
            if per_day.get((team, day), 0) < settings.daily_quota:
                break
            team = rng.choice(teams)
        per_day[(team, day)] = per_day.get((team, day), 0) + 1
        objective = [
            sum(shape.objective_s * math.exp(rng.gauss(0, settings.jitter)) for _ in range(shape.studies))
            for shape in shapes
        ]
        raw.append((at, team, objective, rng.random()))
    years = settings.compute_years
    if years is None:
        years = COMPETITION_2020["compute_years"] * settings.submissions / COMPETITION_2020["submissions"]
    target = years * SECONDS_PER_YEAR
    objective_total = sum(sum(o) for _, _, o, _ in raw)
    # The optimizer's mean share of its budget that makes the total; the objective is scaled only if
    # no plausible share can.
    room = len(raw) * studies * budget_s
    share = (target - objective_total) / room if room else 0.0
    objective_scale = 1.0
    if not 0.0 < share < 0.95:
        share = min(max(share, 0.0), 0.5)
        objective_scale = (target - share * room) / objective_total if objective_total else 1.0
    shares = _shares(share, settings.budget_share_concentration, [u for *_, u in raw])
    arrivals = []
    for n, ((at, team, objective, _), u) in enumerate(zip(raw, shares, strict=True)):
        durations = tuple(
            o * objective_scale + u * budget_s * shape.studies
            for o, shape in zip(objective, shapes, strict=True)
        )
        arrivals.append(Arrival(f"s{n:05d}", team, at, durations))
    if settings.shape == "flat":
        mean = sum(sum(a.durations) for a in arrivals) / max(1, sum(len(a.durations) for a in arrivals))
        arrivals = [Arrival(a.submission, a.team, a.at, (mean,) * len(a.durations)) for a in arrivals]
    info = {"optimizer_budget_share": round(share, 4), "objective_scale": round(objective_scale, 4)}
    problems = len({shape.problem for shape in shapes})
    return Trace("seed", start, end, tuple(arrivals), info, problems)


def _shares(mean: float, concentration: float, draws: list[float]) -> list[float]:
    """Each submission's share of its optimizer budget: Beta quantiles of its uniform draw, rescaled so
    their mean is exactly `mean` (the total stays on target) and none exceeds the whole budget."""
    if mean <= 0.0 or not draws:
        return [0.0] * len(draws)
    from scipy.stats import beta  # scipy takes a second to import; only synthetic traces need it

    shares = [float(v) for v in beta.ppf(draws, concentration * mean, concentration * (1 - mean))]
    drawn_mean = sum(shares) / len(shares)
    factor = mean / drawn_mean if drawn_mean else 1.0
    return [min(1.0, v * factor) for v in shares]


def load(name: str, **overrides) -> Trace:
    """A trace by name; `overrides` are SeedTraceSettings fields (e.g. submissions=200 for a small run)."""
    if name == "seed":
        return seed_trace(SeedTraceSettings(**overrides))
    raise ValueError(f"unknown trace {name!r} (known: {', '.join(TRACES)})")
