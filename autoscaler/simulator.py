"""Replay a competition trace through the autoscaling policy in simulated time.

Event-driven: submissions arrive (each enqueues its jobs on its team's queue), workers boot for
`boot_s`, run one job at a time taken round-robin over the team queues (as runtime.dispatch's fair
pop does), and `policy.decide` is called every `step_s` simulated seconds with an Observation built
from the simulated fleet. A machine costs from its creation to its deletion; a drained worker is idle
by construction (the policy drains only idle ones), so it is deleted at once.

While the fleet is empty and nothing is queued or running the policy's answer cannot change until the
next arrival, so the clock jumps there: months of quiet nights cost nothing to simulate.
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from autoscaler import policy
from autoscaler.traces import Trace

BOOT_DONE = 0
JOB_DONE = 1


@dataclass
class _Worker:
    name: str
    created: float
    view: policy.WorkerView
    job: tuple[int, float] | None = None  # (submission index, duration)


@dataclass
class Timeline:
    """The fleet and the queue at every policy step (for the plot)."""

    t: list[float] = field(default_factory=list)
    workers: list[int] = field(default_factory=list)
    busy: list[int] = field(default_factory=list)
    queued: list[int] = field(default_factory=list)


@dataclass
class Result:
    summary: dict[str, Any]
    timeline: Timeline


def _percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of an already sorted list; 0.0 for an empty one."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


class _Fleet:
    def __init__(self, trace: Trace, config: policy.PolicyConfig, boot_s: float):
        self.trace = trace
        self.config = config
        self.boot_s = boot_s
        self.events: list[tuple[float, int, int, str]] = []  # (time, seq, kind, worker name)
        self.seq = 0
        self.workers: dict[str, _Worker] = {}
        self.views: dict[str, policy.WorkerView] = {}  # what the policy sees, kept in step with workers
        self.idle: list[str] = []  # a stack: the most recently idle worker works next, the oldest drains
        self.teams = sorted({a.team for a in trace.arrivals})
        self.team_index = {team: i for i, team in enumerate(self.teams)}
        self.queues: list[deque[tuple[int, float]]] = [deque() for _ in self.teams]
        self.nonempty: list[int] = []  # sorted indices of team queues holding jobs
        self.cursor = -1
        self.queued = 0
        self.running = 0
        self.remaining = [len(a.durations) for a in trace.arrivals]
        self.scored_at: list[float | None] = [None] * len(trace.arrivals)
        self.created = 0
        self.closed_machine_s = 0.0
        self.live_created_sum = 0.0
        self.peak = 0
        self.last_completion = trace.start

    # -- machines ------------------------------------------------------------------------------------

    def machine_seconds(self, now: float) -> float:
        return self.closed_machine_s + len(self.workers) * now - self.live_created_sum

    def create(self, now: float) -> None:
        self.created += 1
        name = f"sim-{self.created:06d}"
        worker = _Worker(name, now, policy.WorkerView(name, "booting", now))
        self.workers[name] = worker
        self._set_view(worker)
        self.live_created_sum += now
        self.peak = max(self.peak, len(self.workers))
        self._schedule(now + self.boot_s, BOOT_DONE, name)

    def delete(self, name: str, now: float) -> None:
        worker = self.workers.pop(name)
        del self.views[name]
        assert worker.job is None, "the policy drained a busy worker"
        self.idle.remove(name)
        self.closed_machine_s += now - worker.created
        self.live_created_sum -= worker.created

    def _set_view(self, worker: _Worker) -> None:
        self.views[worker.name] = worker.view

    def _schedule(self, at: float, kind: int, name: str) -> None:
        self.seq += 1
        heapq.heappush(self.events, (at, self.seq, kind, name))

    # -- jobs ----------------------------------------------------------------------------------------

    def arrive(self, index: int, now: float) -> None:
        arrival = self.trace.arrivals[index]
        team = self.team_index[arrival.team]
        queue = self.queues[team]
        if not queue and arrival.durations:
            bisect.insort(self.nonempty, team)
        for duration in arrival.durations:
            queue.append((index, duration))
        self.queued += len(arrival.durations)
        while self.idle and self.queued:
            self._start(self.idle.pop(), now)

    def _pop_job(self) -> tuple[int, float]:
        """Round-robin over the team queues from just after the last team served."""
        at = bisect.bisect_right(self.nonempty, self.cursor)
        i = self.nonempty[at % len(self.nonempty)]
        queue = self.queues[i]
        job = queue.popleft()
        if not queue:
            self.nonempty.remove(i)
        self.cursor = i
        self.queued -= 1
        return job

    def _start(self, name: str, now: float) -> None:
        worker = self.workers[name]
        worker.job = self._pop_job()
        worker.view = policy.WorkerView(name, "busy", now)
        self._set_view(worker)
        self.running += 1
        self._schedule(now + worker.job[1], JOB_DONE, name)

    def _become_idle(self, worker: _Worker, now: float) -> None:
        if self.queued:
            self._start(worker.name, now)
        else:
            worker.view = policy.WorkerView(worker.name, "idle", now)
            self._set_view(worker)
            self.idle.append(worker.name)

    def handle(self, at: float, kind: int, name: str) -> None:
        worker = self.workers[name]
        if kind == JOB_DONE:
            index, _ = worker.job
            worker.job = None
            self.running -= 1
            self.remaining[index] -= 1
            if self.remaining[index] == 0:
                self.scored_at[index] = at
            self.last_completion = at
        self._become_idle(worker, at)

    def observe(self, now: float, provider_error: str | None = None) -> policy.Observation:
        return policy.Observation(
            now=now,
            queued=self.queued,
            running=self.running,
            workers=tuple(self.views.values()),
            machine_hours_used=self.machine_seconds(now) / 3600,
            provider_error=provider_error,
        )


def simulate(
    trace: Trace,
    config: policy.PolicyConfig,
    boot_s: float = 120.0,
    step_s: float = 30.0,
    progress: Callable[[str], None] | None = None,
    quota: int | None = None,
) -> Result:
    """Run the whole trace; the simulation ends once every submission is scored and the fleet is back
    to min_workers (or has idled out for a generous while).

    `quota`: the provider refuses machines beyond this many at once, and the refusal is the next
    observation's provider_error (to see the policy hold rather than flap)."""
    fleet = _Fleet(trace, config, boot_s)
    timeline = Timeline()
    state = policy.PolicyState()
    arrivals = trace.arrivals
    next_arrival = 0
    now = trace.start
    next_step = trace.start
    decisions = {"add": 0, "drain": 0, "held": 0, "steps": 0, "machines_added": 0, "machines_drained": 0}
    decisions["provider_errors"] = 0
    provider_error: str | None = None
    reported_day = -1
    total = len(arrivals)

    def done() -> bool:
        return next_arrival >= total and fleet.queued == 0 and fleet.running == 0

    while True:
        next_event = fleet.events[0][0] if fleet.events else math.inf
        arrival_at = arrivals[next_arrival].at if next_arrival < total else math.inf
        now = min(next_event, arrival_at, next_step)
        if now == math.inf:
            break
        if now == arrival_at:
            fleet.arrive(next_arrival, now)
            next_arrival += 1
            continue
        if now == next_event:
            at, _, kind, name = heapq.heappop(fleet.events)
            fleet.handle(at, kind, name)
            continue
        # A policy step.
        if done() and len(fleet.workers) <= config.min_workers:
            break
        obs = fleet.observe(now, provider_error)
        provider_error = None
        decision, state = policy.decide(obs, config, state)
        decisions["steps"] += 1
        if decision.held:
            decisions["held"] += 1
        if decision.add:
            decisions["add"] += 1
            decisions["machines_added"] += decision.add
            allowed = decision.add if quota is None else max(0, min(decision.add, quota - len(fleet.workers)))
            for _ in range(allowed):
                fleet.create(now)
            if allowed < decision.add:
                decisions["provider_errors"] += 1
                provider_error = f"quota refused {decision.add - allowed} machines (quota {quota})"
        if decision.drain:
            decisions["drain"] += 1
            decisions["machines_drained"] += len(decision.drain)
            for name in decision.drain:
                fleet.delete(name, now)
        busy = fleet.running
        timeline.t.append(now)
        timeline.workers.append(len(fleet.workers))
        timeline.busy.append(busy)
        timeline.queued.append(fleet.queued)
        quiet = not fleet.workers and fleet.queued == 0 and fleet.running == 0 and not decision.add
        if quiet and next_arrival < total:
            # Nothing can change before the next arrival: jump to the first step at or after it.
            steps_ahead = max(1, math.ceil((arrivals[next_arrival].at - now) / step_s))
            next_step = now + steps_ahead * step_s
        else:
            next_step = now + step_s
        if done() and now - fleet.last_completion > 10 * (
            config.idle_before_drain_s + config.scale_down_cooldown_s + step_s
        ):
            break  # min_workers keeps a fleet forever; stop the clock anyway
        day = int((now - trace.start) // 86400)
        if progress and day != reported_day and day % 10 == 0:
            reported_day = day
            progress(f"day {day}: {next_arrival}/{total} submissions, {len(fleet.workers)} workers")

    end = now
    scored = [s for s in fleet.scored_at if s is not None]
    time_to_score = sorted(s - a.at for s, a in zip(fleet.scored_at, arrivals, strict=True) if s is not None)
    # The part of time to score the fleet can do something about: beyond the submission's longest job.
    delay = sorted(
        s - a.at - max(a.durations, default=0.0)
        for s, a in zip(fleet.scored_at, arrivals, strict=True)
        if s is not None
    )
    longest = sorted(max(a.durations, default=0.0) for a in arrivals)
    machine_hours = fleet.machine_seconds(end) / 3600
    busy_hours = trace.busy_seconds / 3600
    summary = {
        "trace": trace.name,
        "submissions": len(arrivals),
        "scored": len(scored),
        "executions": trace.executions,
        "jobs": trace.jobs,
        "p50_time_to_score_s": round(_percentile(time_to_score, 50), 1),
        "p95_time_to_score_s": round(_percentile(time_to_score, 95), 1),
        "max_time_to_score_s": round(time_to_score[-1] if time_to_score else 0.0, 1),
        "p95_longest_job_s": round(_percentile(longest, 95), 1),
        "p50_delay_s": round(_percentile(delay, 50), 1),
        "p95_delay_s": round(_percentile(delay, 95), 1),
        "machine_hours": round(machine_hours, 1),
        "busy_machine_hours": round(busy_hours, 1),
        "overhead_ratio": round(machine_hours / busy_hours, 4) if busy_hours else None,
        "peak_workers": fleet.peak,
        "cap": config.max_workers,
        "machines_created": fleet.created,
        "boot_s": boot_s,
        "step_s": step_s,
        "simulated_days": round((end - trace.start) / 86400, 1),
        "decisions": decisions,
        "trace_info": trace.info,
        "policy": config.to_dict(),
    }
    return Result(summary, timeline)
