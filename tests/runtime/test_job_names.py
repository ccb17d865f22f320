"""The runtime names the worker's job function and failure callback as strings (RQ stores names, and the
workers sit above the runtime): the names must resolve to the functions RQ will call."""

from __future__ import annotations

import inspect

from rq.utils import import_attribute

from runtime import enqueue
from workers import failures, job


def test_the_job_function_named_by_the_runtime_is_the_workers():
    assert import_attribute(enqueue.JOB_FUNCTION) is job.score_problem


def test_the_failure_callback_named_by_the_runtime_is_the_workers():
    callback = import_attribute(enqueue.FAILURE_CALLBACK)
    assert callback is failures.on_job_failure
    # RQ calls a failure callback with (job, connection, type, value, traceback).
    assert len(inspect.signature(callback).parameters) == 5


def test_the_baseline_unit_function_named_by_the_runtime_is_the_workers():
    from runtime import baseline_fleet
    from workers import baseline_unit

    assert import_attribute(baseline_fleet.UNIT_FUNCTION) is baseline_unit.run_baseline_unit
