"""The autoscaling policy's invariants (autoscaler_interface.md), as properties over arbitrary fleets,
plus a few worked examples."""

from __future__ import annotations

import math
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from autoscaler.policy import (
    Decision,
    Observation,
    PolicyConfig,
    PolicyState,
    WorkerView,
    decide,
    desired_workers,
    error_backoff,
)

NOW = 1_700_000_000.0

states = st.sampled_from(["booting", "idle", "busy", "draining"])


@st.composite
def fleets(draw) -> tuple[WorkerView, ...]:
    n = draw(st.integers(0, 40))
    return tuple(
        WorkerView(f"w{i}", draw(states), NOW - draw(st.floats(0, 2000, allow_nan=False))) for i in range(n)
    )


@st.composite
def configs(draw) -> PolicyConfig:
    cap = draw(st.integers(1, 60))
    budget = draw(st.none() | st.floats(0, 1000, allow_nan=False))
    return PolicyConfig(
        min_workers=draw(st.integers(0, cap)),
        max_workers=cap,
        jobs_per_worker=draw(st.integers(1, 4)),
        scale_up_cooldown_s=draw(st.floats(0, 300, allow_nan=False)),
        scale_down_cooldown_s=draw(st.floats(0, 600, allow_nan=False)),
        idle_before_drain_s=draw(st.floats(0, 600, allow_nan=False)),
        boot_timeout_s=draw(st.floats(1, 900, allow_nan=False)),
        budget_machine_hours=budget,
        max_add_per_step=draw(st.none() | st.integers(1, 20)),
        error_backoff_s=draw(st.floats(1, 300, allow_nan=False)),
        max_error_backoff_s=draw(st.floats(1, 3600, allow_nan=False)),
    )


@st.composite
def observations(draw) -> Observation:
    return Observation(
        now=NOW,
        queued=draw(st.integers(0, 200)),
        running=draw(st.integers(0, 60)),
        workers=draw(fleets()),
        machine_hours_used=draw(st.floats(0, 1200, allow_nan=False)),
        provider_error=draw(st.none() | st.just("quota exceeded")),
    )


def _moment(draw_value: float | None) -> float:
    return 0.0 if draw_value is None else NOW - draw_value


policy_states = st.builds(
    PolicyState,
    last_scale_up=st.none().map(_moment) | st.floats(0, 900, allow_nan=False).map(_moment),
    last_scale_down=st.none().map(_moment) | st.floats(0, 900, allow_nan=False).map(_moment),
    last_error_at=st.none().map(_moment) | st.floats(0, 900, allow_nan=False).map(_moment),
    error_streak=st.integers(0, 8),
)


def _capacity(obs: Observation, config: PolicyConfig) -> int:
    lost = sum(1 for w in obs.workers if w.state == "booting" and obs.now - w.since > config.boot_timeout_s)
    return sum(1 for w in obs.workers if w.state != "draining") - lost


def _adding_is_held(obs: Observation, config: PolicyConfig, state: PolicyState) -> bool:
    budget = config.budget_machine_hours
    if obs.provider_error is None and state.last_scale_up > state.last_error_at:
        state = replace(state, error_streak=0)  # an add went through since the last error
    return (
        (budget is not None and obs.machine_hours_used >= budget)
        or obs.provider_error is not None
        or (state.last_error_at > 0 and obs.now - state.last_error_at < error_backoff(config, state))
        or (state.last_scale_up > 0 and obs.now - state.last_scale_up < config.scale_up_cooldown_s)
    )


@settings(max_examples=400, deadline=None)
@given(observations(), configs(), policy_states)
def test_invariants(obs: Observation, config: PolicyConfig, state: PolicyState) -> None:
    decision, new_state = decide(obs, config, state)
    by_name = {w.name: w for w in obs.workers}
    capacity = _capacity(obs, config)
    desired = desired_workers(obs, config)

    # Never above the cap, counting every machine that exists (draining ones too).
    assert decision.add >= 0
    assert decision.add == 0 or len(obs.workers) + decision.add <= config.max_workers
    # Never both add and drain.
    assert not (decision.add and decision.drain)
    # Only idle workers, idle long enough, each once.
    assert len(set(decision.drain)) == len(decision.drain)
    for name in decision.drain:
        worker = by_name[name]
        assert worker.state == "idle"
        assert obs.now - worker.since >= config.idle_before_drain_s
    # Down slowly: not within the cooldown, never below what is needed or min_workers.
    if decision.drain:
        assert state.last_scale_down == 0 or obs.now - state.last_scale_down >= config.scale_down_cooldown_s
        assert capacity - len(decision.drain) >= desired >= config.min_workers
        assert new_state.last_scale_down == obs.now
    else:
        assert new_state.last_scale_down == state.last_scale_down
    # Budget, provider errors and the scale-up cooldown hold adding.
    if _adding_is_held(obs, config, state):
        assert decision.add == 0
    if config.budget_machine_hours is not None and obs.machine_hours_used >= config.budget_machine_hours:
        assert decision.add == 0
    if obs.provider_error is not None:
        assert decision.add == 0 and new_state.last_error_at == obs.now
        if desired > capacity:
            assert decision.held and obs.provider_error in decision.reason
    # Up fast: all the shortfall at once, up to the cap and the per-step limit.
    if desired > capacity and not _adding_is_held(obs, config, state):
        expected = min(desired - capacity, max(0, config.max_workers - len(obs.workers)))
        if config.max_add_per_step is not None:
            expected = min(expected, config.max_add_per_step)
        assert decision.add == expected
        assert decision.held == (expected < desired - capacity)
    if desired <= capacity:
        assert decision.add == 0
    assert (new_state.last_scale_up == obs.now) == (decision.add > 0) or state.last_scale_up == obs.now
    assert decision.reason and "\n" not in decision.reason
    # Pure: the same inputs, the same answer.
    assert decide(obs, config, state) == (decision, new_state)


@settings(max_examples=200, deadline=None)
@given(observations(), configs(), policy_states)
def test_min_workers_are_kept(obs: Observation, config: PolicyConfig, state: PolicyState) -> None:
    decision, _ = decide(obs, config, state)
    capacity = _capacity(obs, config)
    assert capacity - len(decision.drain) >= min(capacity, config.min_workers)
    room = config.max_workers - len(obs.workers)
    if capacity < config.min_workers and room > 0 and not _adding_is_held(obs, config, state):
        assert decision.add > 0


@settings(max_examples=100, deadline=None)
@given(observations(), configs())
def test_error_backoff_then_recovers(obs: Observation, config: PolicyConfig) -> None:
    """After an error, no add until error_backoff_s has passed; then the same demand is answered."""
    erring = Observation(obs.now, obs.queued, obs.running, obs.workers, 0.0, "quota exceeded")
    decision, state = decide(erring, config, PolicyState())
    assert decision.add == 0
    calm = Observation(obs.now + config.error_backoff_s / 2, obs.queued, obs.running, obs.workers, 0.0)
    assert decide(calm, config, state)[0].add == 0
    later = Observation(obs.now + config.error_backoff_s + 0.01, obs.queued, obs.running, obs.workers, 0.0)
    shortfall = desired_workers(later, config) - _capacity(later, config)
    room = config.max_workers - len(obs.workers)
    budget_left = config.budget_machine_hours is None or config.budget_machine_hours > 0.0
    if shortfall > 0 and room > 0 and budget_left:
        assert decide(later, config, state)[0].add > 0


# -- examples ------------------------------------------------------------------------------------------


def _obs(queued: int, running: int, *workers: tuple[str, str, float], **extra) -> Observation:
    views = tuple(WorkerView(name, state, NOW - age) for name, state, age in workers)
    return Observation(NOW, queued, running, views, **extra)


def test_a_burst_is_answered_in_one_step() -> None:
    decision, state = decide(_obs(30, 0), PolicyConfig(max_workers=300), PolicyState())
    assert decision == Decision(30, (), decision.reason, kind="add")
    assert state.last_scale_up == NOW


def test_booting_machines_count_toward_capacity() -> None:
    booting = [(f"b{i}", "booting", 30.0) for i in range(30)]
    decision, _ = decide(_obs(30, 0, *booting), PolicyConfig(max_workers=300), PolicyState())
    assert decision.add == 0 and not decision.drain


def test_a_machine_lost_while_booting_is_replaced_within_the_cap() -> None:
    workers = [("lost", "booting", 2000.0), ("ok", "booting", 10.0)]
    decision, _ = decide(_obs(2, 0, *workers), PolicyConfig(max_workers=3), PolicyState())
    assert decision.add == 1
    decision, _ = decide(_obs(2, 0, *workers), PolicyConfig(max_workers=2), PolicyState())
    assert decision.add == 0 and decision.held and "cap" in decision.reason


def test_the_cap_holds_and_says_so() -> None:
    workers = [(f"w{i}", "busy", 100.0) for i in range(3)] + [("d", "draining", 5.0)]
    decision, _ = decide(_obs(100, 3, *workers), PolicyConfig(max_workers=4), PolicyState())
    assert decision.add == 0 and decision.held and "cap of 4" in decision.reason


def test_idle_workers_drain_only_after_idling_and_the_cooldown() -> None:
    config = PolicyConfig(idle_before_drain_s=60, scale_down_cooldown_s=300)
    fresh = _obs(0, 1, ("busy", "busy", 500.0), ("idle", "idle", 30.0))
    decision, _ = decide(fresh, config, PolicyState())
    assert decision.drain == () and not decision.held
    settled = _obs(0, 1, ("busy", "busy", 500.0), ("idle", "idle", 90.0))
    decision, state = decide(settled, config, PolicyState())
    assert decision.drain == ("idle",)
    decision, _ = decide(settled, config, PolicyState(last_scale_down=NOW - 100))
    assert decision.drain == () and decision.held and "cooldown" in decision.reason


def test_the_longest_idle_drain_first() -> None:
    workers = [("a", "idle", 100.0), ("b", "idle", 400.0), ("c", "idle", 200.0)]
    decision, _ = decide(_obs(1, 0, *workers), PolicyConfig(min_workers=0), PolicyState())
    assert decision.drain == ("b", "c")


def test_provider_error_holds_and_reports() -> None:
    decision, state = decide(
        _obs(10, 0, provider_error="quota exceeded: 24 vCPUs"), PolicyConfig(), PolicyState()
    )
    assert decision.add == 0 and decision.held and "quota exceeded: 24 vCPUs" in decision.reason
    assert state.last_error_at == NOW


def test_budget_spent_adds_nothing() -> None:
    config = PolicyConfig(budget_machine_hours=10.0)
    decision, _ = decide(_obs(10, 0, machine_hours_used=10.0), config, PolicyState())
    assert decision.add == 0 and decision.held and "budget" in decision.reason
    decision, _ = decide(_obs(10, 0, machine_hours_used=9.0), config, PolicyState())
    assert decision.add == 4


def test_jobs_per_worker_rounds_up() -> None:
    assert desired_workers(_obs(5, 2), PolicyConfig(max_workers=10, jobs_per_worker=2)) == math.ceil(7 / 2)


def test_state_round_trips_through_json() -> None:
    state = PolicyState(1.0, 2.0, 3.0, error_streak=2)
    assert PolicyState.from_dict(state.to_dict()) == state
    assert PolicyState.from_dict({}) == PolicyState()
    assert Decision(1, ("a",), "why", kind="add").to_dict() == {
        "add": 1,
        "drain": ["a"],
        "reason": "why",
        "held": False,
        "decision": "add",
    }


def test_repeated_quota_refusals_back_off_longer_and_a_success_resets() -> None:
    """Each refusal in a row doubles the hold (60, 120, 240 s ... at most 900 s); an add that goes
    through ends the streak, so the next error waits the base time again."""
    config = PolicyConfig(max_workers=10, error_backoff_s=60.0, max_error_backoff_s=900.0)
    state = PolicyState()
    now = NOW
    holds = []
    for _ in range(6):
        _, state = decide(Observation(now, 10, 0, (), provider_error="quota"), config, state)
        hold = error_backoff(config, state)
        holds.append(hold)
        calm, _ = decide(Observation(now + hold - 1, 10, 0), config, state)
        assert calm.add == 0 and calm.kind == "hold-error"
        now += hold + 1
        retry, state = decide(Observation(now, 10, 0), config, state)
        assert retry.add == 10  # the retry the daemon makes, which the provider refuses again
    assert holds == [60.0, 120.0, 240.0, 480.0, 900.0, 900.0]
    assert state.error_streak == 6
    # The retry went through: the next observation carries no error and the streak is over.
    _, state = decide(Observation(now + 30, 0, 10), config, state)
    assert state.error_streak == 0
    _, state = decide(Observation(now + 60, 10, 0, provider_error="quota"), config, state)
    assert error_backoff(config, state) == 60.0


def test_decision_kinds_leave_out_the_counts() -> None:
    """The daemon writes an event when the kind changes: the same situation with other counts is the
    same kind."""
    config = PolicyConfig(max_workers=4)
    busy = [(f"w{i}", "busy", 10.0) for i in range(4)]
    one, _ = decide(_obs(5, 4, *busy), config, PolicyState())
    two, _ = decide(_obs(9, 4, *busy), config, PolicyState())
    assert one.kind == two.kind == "hold-cap" and one.reason != two.reason
    assert decide(_obs(3, 0), config, PolicyState())[0].kind == "add"
    assert decide(_obs(0, 0), config, PolicyState())[0].kind == "steady"
