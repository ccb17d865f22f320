"""Teams, hashed tokens and the daily quota, against a real Redis."""

from __future__ import annotations

import dataclasses
import threading
import time

import pytest

from artifacts import archive
from competition import quotas, service, teams
from queue_schema.records import read_events
from queue_schema.states import FailureCause
from runtime import lifecycle
from runtime.spec import load
from tests.conftest import SUBMISSIONS


def _spec(quota: int = 2, **phase_window):
    spec = load("demo")
    spec = dataclasses.replace(spec, submission=dataclasses.replace(spec.submission, daily_quota=quota))
    if phase_window:
        feedback = dataclasses.replace(spec.phases["feedback"], **phase_window)
        spec = dataclasses.replace(spec, phases={**spec.phases, "feedback": feedback})
    return spec


@pytest.fixture(scope="module")
def zip_bytes() -> bytes:
    return archive.pack(SUBMISSIONS / "random_search", load("demo").submission)


def _all_redis_text(r) -> str:
    parts = []
    for key in r.scan_iter():
        kind = r.type(key)
        parts.append(key)
        if kind == "string":
            parts.append(str(r.get(key)))
        elif kind == "hash":
            parts.extend(f"{k}={v}" for k, v in r.hgetall(key).items())
        elif kind == "zset":
            parts.extend(r.zrange(key, 0, -1))
        elif kind == "stream":
            parts.extend(str(fields) for _, fields in r.xrange(key))
    return "\n".join(parts)


# -- teams ------------------------------------------------------------------------------------------


def test_a_token_is_shown_once_stored_only_hashed_and_authenticates_its_team(r):
    token = teams.add_team(r, "alpha")
    other = teams.add_team(r, "beta-2")
    assert token.startswith("bbo_") and len(token) > 40 and token != other
    assert token not in _all_redis_text(r)  # neither in keys, records nor the audit events
    assert teams.token_hash(token) in _all_redis_text(r)
    assert teams.authenticate(r, token) == "alpha"
    assert teams.authenticate(r, other) == "beta-2"
    for bad in ("", None, token + "x", token[:-1], "bbo_" + "a" * 43, "x" * 10_000):
        assert teams.authenticate(r, bad) is None
    assert [t.name for t in teams.list_teams(r)] == ["alpha", "beta-2"]


def test_team_names_are_validated_and_unique(r):
    for bad in ("a", "A-team", "has space", "x" * 41, "dots.no", "ünï", "../etc"):
        with pytest.raises(teams.TeamError, match="not allowed"):
            teams.add_team(r, bad)
    teams.add_team(r, "ok_name-1")
    with pytest.raises(teams.TeamExists, match="already exists"):
        teams.add_team(r, "ok_name-1")
    with pytest.raises(teams.UnknownTeam):
        teams.rotate_token(r, "nobody")


def test_rotate_revoke_disable(r):
    old = teams.add_team(r, "alpha")
    new = teams.rotate_token(r, "alpha")
    assert teams.authenticate(r, old) is None and teams.authenticate(r, new) == "alpha"
    teams.set_disabled(r, "alpha", True)
    assert teams.authenticate(r, new) is None
    assert teams.list_teams(r)[0].disabled
    teams.set_disabled(r, "alpha", False)
    assert teams.authenticate(r, new) == "alpha"
    teams.revoke_token(r, "alpha")
    assert teams.authenticate(r, new) is None
    assert not teams.list_teams(r)[0].has_token
    kinds = [e.kind for e in read_events(r)]
    assert kinds == ["team_added", "token_rotated", "team_disabled", "team_enabled", "token_revoked"]


# -- quotas -----------------------------------------------------------------------------------------


def test_the_quota_refuses_the_extra_upload_and_says_when_it_resets(r, zip_bytes):
    spec = _spec(quota=2)
    for _ in range(2):
        service.submit(r, "alpha", zip_bytes, "a.zip", spec)
    assert quotas.remaining(r, "alpha", spec).remaining == 0
    before = r.dbsize()
    with pytest.raises(quotas.QuotaExceeded) as caught:
        service.submit(r, "alpha", zip_bytes, "a.zip", spec)
    assert r.dbsize() == before  # a refused upload stores nothing (the hold came and went)
    message = str(caught.value)
    assert "2 of 2" in message and "resets at" in message and "T00:00:00Z" in message
    assert 0 < caught.value.retry_after <= 86_400
    assert quotas.remaining(r, "beta", spec).remaining == 2  # per team
    tomorrow = time.time() + 86_400
    assert quotas.remaining(r, "alpha", spec, now=tomorrow).remaining == 2  # per UTC day


def test_an_infrastructure_failure_is_refunded_a_team_failure_or_stop_is_not(r, zip_bytes):
    spec = _spec(quota=3)
    subs = [service.submit(r, "alpha", zip_bytes, "a.zip", spec) for _ in range(3)]
    lifecycle.fail(r, subs[0].id, 1, FailureCause.OPTIMIZER_CRASHED, "boom")
    service.stop(r, subs[1].id, by_team="alpha")
    assert quotas.remaining(r, "alpha", spec).remaining == 0
    lifecycle.fail(r, subs[2].id, 1, FailureCause.INFRASTRUCTURE, "worker lost")
    assert quotas.remaining(r, "alpha", spec).remaining == 1
    service.submit(r, "alpha", zip_bytes, "a.zip", spec)
    with pytest.raises(quotas.QuotaExceeded):
        service.submit(r, "alpha", zip_bytes, "a.zip", spec)
    # The organizers' manual refund, once, and only for the team's own submission.
    assert not quotas.refund(r, "beta", subs[0].id)
    assert quotas.refund(r, "alpha", subs[0].id)
    assert not quotas.refund(r, "alpha", subs[0].id)
    assert quotas.remaining(r, "alpha", spec).remaining == 1


def test_a_rejected_archive_costs_nothing(r):
    spec = _spec(quota=1)
    with pytest.raises(archive.InvalidSubmission):
        service.submit(r, "alpha", b"not a zip", "a.zip", spec)
    assert quotas.remaining(r, "alpha", spec).remaining == 1
    assert r.dbsize() == 0


def test_concurrent_reservations_never_exceed_the_quota(r):
    spec = _spec(quota=3)
    won, lost = [], []
    barrier = threading.Barrier(12)

    def attempt() -> None:
        barrier.wait()
        try:
            won.append(quotas.check_and_reserve(r, "alpha", spec))
        except quotas.QuotaExceeded:
            lost.append(1)

    threads = [threading.Thread(target=attempt) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 3 and len(lost) == 9
    for hold in won:
        quotas.release(r, "alpha", hold)
    assert quotas.remaining(r, "alpha", spec).remaining == 3


def test_a_hold_left_by_a_crashed_gateway_expires(r):
    spec = _spec(quota=1)
    now = time.time()
    quotas.check_and_reserve(r, "alpha", spec, now=now)  # never released
    with pytest.raises(quotas.QuotaExceeded, match="in progress"):
        quotas.check_and_reserve(r, "alpha", spec, now=now + 1)
    later = now + quotas.HOLD_TTL_S + 1
    if quotas.day_bounds(later)[0] == quotas.day_bounds(now)[0]:
        quotas.check_and_reserve(r, "alpha", spec, now=later)


# -- windows ----------------------------------------------------------------------------------------


def test_submissions_outside_the_phase_window_are_refused_with_the_dates(r, zip_bytes):
    spec = _spec(opens="2999-01-01T00:00:00")
    with pytest.raises(service.WindowClosed, match="open at 2999-01-01T00:00:00Z"):
        service.submit(r, "alpha", zip_bytes, "a.zip", spec)
    spec = _spec(opens="2000-01-01T00:00:00", closes="2001-01-01T00:00:00+00:00")
    with pytest.raises(service.WindowClosed, match="closed at 2001-01-01T00:00:00Z"):
        service.submit(r, "alpha", zip_bytes, "a.zip", spec)
    with pytest.raises(service.SpecError, match="no phase"):
        service.submit(r, "alpha", zip_bytes, "a.zip", spec, phase="bonus")
    assert r.dbsize() == 0
    spec = _spec(opens="2000-01-01T00:00:00", closes="2999-01-01T00:00:00")
    assert service.submit(r, "alpha", zip_bytes, "a.zip", spec).state.value == "queued"
