"""The autoscaling policy: a pure function from what the fleet looks like now to what to do about it.

The daemon (real clock, real providers) and the simulator (simulated clock) call the same `decide`, so
a policy that meets its targets in simulation behaves the same way in production.

Shape of the rules:
- Desired capacity is ceil((queued + running) / (jobs_per_worker x backlog_per_worker)), clamped to
  [min_workers, max_workers].
  Booting machines count toward capacity, so a burst is answered once, not once per step while they boot.
- Scale up fast: the whole shortfall in one step (bounded by the cap, the provider's per-step rate and
  the scale-up cooldown). Scale down slowly: only workers idle for `idle_before_drain_s`, only after the
  scale-down cooldown, and never below what is needed or min_workers.
- Only idle workers are ever drained (a warm shutdown never interrupts a running job).
- After a provider error (quota refused, API down) adding holds for `error_backoff_s`, doubled after each
  further error in a row up to `max_error_backoff_s`: report, don't flap, and don't hammer a quota.
- Never above the cap; nothing is added once the machine-hour budget is spent.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

WorkerState = Literal["booting", "idle", "busy", "draining"]


@dataclass(frozen=True)
class WorkerView:
    name: str  # the provider's machine/worker id (label), stable across daemon restarts
    state: WorkerState
    since: float  # unix time it entered this state (booting: created_at)


@dataclass(frozen=True)
class Observation:
    now: float
    queued: int  # jobs waiting (all bbo queues: runtime.dispatch.queue_depths)
    running: int  # jobs started, not finished
    workers: tuple[WorkerView, ...] = field(default_factory=tuple)
    machine_hours_used: float = 0.0  # spent so far in this run (for the budget)
    provider_error: str | None = None  # the last act's error (quota refused, API down), if any

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PolicyConfig:
    min_workers: int = 0
    max_workers: int = 4  # the safety cap
    jobs_per_worker: int = 1  # one job per worker at a time (RQ worker)
    scale_up_cooldown_s: float = 10.0
    scale_down_cooldown_s: float = 60.0
    idle_before_drain_s: float = 60.0  # a worker must have been idle this long to be drained
    boot_timeout_s: float = 600.0  # booting longer than this counts as lost (the daemon sweeps it)
    budget_machine_hours: float | None = None
    max_add_per_step: int | None = None  # e.g. a provider's API rate; None: no limit
    error_backoff_s: float = 60.0  # after a provider error, hold this long before adding again
    # Jobs (queued and running) the fleet is sized for per worker slot. 1: a worker for every job (the
    # fastest scores, about a boot per job); 1.5: two workers for every three jobs, each working through
    # its share in a row (fewer boots, longer waits for the last jobs).
    backlog_per_worker: float = 1.0
    max_error_backoff_s: float = 900.0  # the hold doubles with each error in a row, up to this

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Decision:
    add: int  # machines to create now (>= 0)
    drain: tuple[str, ...]  # idle workers to shut down warmly (names from Observation.workers)
    reason: str  # one line for people: why
    held: bool = False  # True when it wanted to act but a cooldown/error/cap/budget held it
    # What kind of answer this is, without the figures (add, drain, steady, wait, hold-cap, hold-budget,
    # hold-error, hold-cooldown): the daemon records an event when the kind changes, not the counts.
    kind: str = "steady"

    def to_dict(self) -> dict[str, Any]:
        return {
            "add": self.add,
            "drain": list(self.drain),
            "reason": self.reason,
            "held": self.held,
            "decision": self.kind,  # not "kind": that names the event itself in the stream
        }


@dataclass(frozen=True)
class PolicyState:  # what the policy remembers between steps (the daemon keeps it in Redis as JSON)
    last_scale_up: float = 0.0
    last_scale_down: float = 0.0
    last_error_at: float = 0.0
    error_streak: int = 0  # provider errors in a row (the back-off grows with it)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PolicyState:
        names = ("last_scale_up", "last_scale_down", "last_error_at")
        state = cls(**{name: float(data[name]) for name in names if name in data})
        return replace(state, error_streak=int(data.get("error_streak", 0)))


def error_backoff(config: PolicyConfig, state: PolicyState) -> float:
    """How long adding holds after the last provider error: error_backoff_s, doubled per further error
    in a row, at most max_error_backoff_s."""
    doublings = min(max(state.error_streak, 1) - 1, 30)
    return min(config.error_backoff_s * 2**doublings, max(config.max_error_backoff_s, config.error_backoff_s))


def desired_workers(obs: Observation, config: PolicyConfig) -> int:
    """ceil((queued + running) / (jobs_per_worker x backlog_per_worker)), clamped to [min, max]."""
    return max(config.min_workers, min(config.max_workers, _demand(obs, config)))


def _demand(obs: Observation, config: PolicyConfig) -> int:
    per_worker = max(1, config.jobs_per_worker) * max(1.0, config.backlog_per_worker)
    # Rounded to 1e-9 first, so 2.0000000001 workers' worth of float error does not ask for a third.
    return math.ceil(round((max(0, obs.queued) + max(0, obs.running)) / per_worker, 9))


def decide(obs: Observation, config: PolicyConfig, state: PolicyState) -> tuple[Decision, PolicyState]:
    """One step: add machines, drain idle workers, or hold; `held` is True when something it wanted
    (all or part of it) was held back by a cooldown, a provider error, the cap or the budget."""
    now = obs.now
    if obs.provider_error is not None:
        state = replace(state, last_error_at=now, error_streak=state.error_streak + 1)
    elif state.error_streak and state.last_scale_up > state.last_error_at:
        state = replace(state, error_streak=0)  # an add since the last error went through
    booting = [w for w in obs.workers if w.state == "booting"]
    lost = sum(1 for w in booting if now - w.since > config.boot_timeout_s)
    draining = sum(1 for w in obs.workers if w.state == "draining")
    # Capacity that is or will be serving; a machine booting past its timeout will never serve, but it
    # still counts toward the cap until the daemon deletes it.
    capacity = len(obs.workers) - draining - lost
    desired = desired_workers(obs, config)
    if desired > capacity:
        decision, state = _scale_up(obs, config, state, desired, capacity)
    elif desired < capacity:
        decision, state = _scale_down(obs, config, state, desired, capacity)
    elif _demand(obs, config) > config.max_workers:
        demand = f"{obs.queued} queued + {obs.running} running"
        reason = f"hold: at the cap of {config.max_workers} workers; {demand}"
        decision = Decision(0, (), reason, held=True, kind="hold-cap")
    else:
        steady = f"steady: {capacity} workers for {obs.queued} queued + {obs.running} running"
        decision = Decision(0, (), steady, kind="steady")
    if obs.provider_error is not None and obs.provider_error not in decision.reason:
        # Whatever else held it, the error is reported, never swallowed.
        decision = replace(decision, reason=f"{decision.reason}; provider error: {obs.provider_error}")
    return decision, state


def _scale_up(
    obs: Observation, config: PolicyConfig, state: PolicyState, desired: int, capacity: int
) -> tuple[Decision, PolicyState]:
    now = obs.now
    want = desired - capacity
    need = f"need {desired} workers, have {capacity}"
    budget = config.budget_machine_hours
    if budget is not None and obs.machine_hours_used >= budget:
        reason = f"hold: budget spent ({obs.machine_hours_used:.1f} of {budget:g} machine-hours); {need}"
        return Decision(0, (), reason, held=True, kind="hold-budget"), state
    backoff = error_backoff(config, state)
    if state.last_error_at and now - state.last_error_at < backoff:
        error = obs.provider_error or "an earlier error"
        wait = backoff - (now - state.last_error_at)
        streak = f", {state.error_streak} in a row" if state.error_streak > 1 else ""
        reason = f"hold: provider error ({error}{streak}), retry in {wait:.0f}s; {need}"
        return Decision(0, (), reason, held=True, kind="hold-error"), state
    if state.last_scale_up and now - state.last_scale_up < config.scale_up_cooldown_s:
        return Decision(0, (), f"hold: scale-up cooldown; {need}", held=True, kind="hold-cooldown"), state
    room = max(0, config.max_workers - len(obs.workers))  # the cap counts every machine that exists
    add = min(want, room)
    if config.max_add_per_step is not None:
        add = min(add, max(0, config.max_add_per_step))
    if add <= 0:
        reason = f"hold: at the cap of {config.max_workers} machines; {need}"
        return Decision(0, (), reason, held=True, kind="hold-cap"), state
    limited = add < want
    reason = f"add {add}: {obs.queued} queued + {obs.running} running, {need}"
    if limited:
        reason += f" (limited by the cap of {config.max_workers} or the per-step limit)"
    return Decision(add, (), reason, held=limited, kind="add"), replace(state, last_scale_up=now)


def _scale_down(
    obs: Observation, config: PolicyConfig, state: PolicyState, desired: int, capacity: int
) -> tuple[Decision, PolicyState]:
    now = obs.now
    surplus = capacity - desired
    idle = sorted(
        (w for w in obs.workers if w.state == "idle" and now - w.since >= config.idle_before_drain_s),
        key=lambda w: (w.since, w.name),
    )
    if not idle:
        reason = f"wait: {surplus} surplus, none idle for {config.idle_before_drain_s:g}s yet"
        return Decision(0, (), reason, kind="wait"), state
    if state.last_scale_down and now - state.last_scale_down < config.scale_down_cooldown_s:
        reason = f"hold: scale-down cooldown; {surplus} surplus"
        return Decision(0, (), reason, held=True, kind="hold-cooldown"), state
    drain = tuple(w.name for w in idle[:surplus])
    reason = f"drain {len(drain)} idle: need {desired} workers, have {capacity}"
    return Decision(0, drain, reason, kind="drain"), replace(state, last_scale_down=now)
