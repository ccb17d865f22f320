"""The warm hint (runtime/warm_hint.py): what a worker with no job to go by warms a sandbox for. Every score
version put on the queues records its backend and limits; a gateway records its competition's as it
starts; a hint this version cannot read is no hint; a non-scoring job never takes a held warm horse."""

from __future__ import annotations

import dataclasses
import warnings

from artifacts import archive
from competition.submit import create_submission
from gateway.app import create_app
from queue_schema import keys
from runtime import warm_hint
from runtime.spec import load
from runtime.warm_hint import WarmTarget
from tests.conftest import SUBMISSIONS
from workers.fair_worker import FairWorker

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette's note about httpx versions
    from fastapi.testclient import TestClient


def test_a_recorded_target_reads_back_and_a_garbled_one_is_no_hint(r):
    assert warm_hint.current(r) is None
    limits = dataclasses.replace(load("demo").limits, memory_mb=1024)
    warm_hint.record(r, "bwrap", limits)
    assert warm_hint.current(r) == WarmTarget("bwrap", limits)
    for garbled in ("{", "[]", '{"backend": "docker"}', '{"backend": "docker", "limits": {"cores": 3}}'):
        r.set(keys.warm_hint(), garbled)
        assert warm_hint.current(r) is None, garbled


def test_each_submission_records_its_backend_and_limits_before_its_jobs(r):
    spec = load("demo")
    data = archive.pack(SUBMISSIONS / "random_search", spec.submission)
    create_submission(r, team="t", data=data, spec=spec, phase="feedback", backend="process")
    assert warm_hint.current(r) == WarmTarget("process", spec.limits)
    tighter = dataclasses.replace(spec, limits=dataclasses.replace(spec.limits, pids=64))
    create_submission(r, team="u", data=data, spec=tighter, phase="feedback", backend="bwrap")
    assert warm_hint.current(r) == WarmTarget("bwrap", tighter.limits)


def test_a_gateway_records_its_competition_as_it_starts(r):
    spec = load("demo")
    app = create_app(spec, "bwrap")
    assert warm_hint.current(r) is None  # created, not started
    with TestClient(app):
        assert warm_hint.current(r) == WarmTarget("bwrap", spec.limits)


class _Job:
    func_name = "workers.baseline_unit.run_unit"
    id = "unit-1"


def test_a_job_with_no_sandbox_leaves_the_held_horse_for_the_next_scoring_job(r):
    worker = FairWorker(["bbo-priority"], connection=r)
    held = object()
    worker._next = held  # a pre-forked horse waiting with a warm sandbox
    assert worker.horse_for(_Job(), None, "execution") is None  # RQ forks this job's horse itself
    assert worker._next is held
