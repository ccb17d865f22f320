"""The fixed hostile set of `python -m bench abuse` (bench/hostile.py), kept honest in the default suite:
every hostile upload is refused at intake with nothing stored, and every hostile optimizer, scored through
the queue (process backend, for speed; the benchmark runs them under docker or bwrap), ends as the
catalogue says, charged to its team, with no stored study over 64 KiB (the fork bomb excepted: it needs a
sandbox's process limit)."""

from __future__ import annotations

import dataclasses

import pytest

from artifacts import archive
from bench import hostile
from competition.submit import create_submission
from queue_schema import keys
from queue_schema.connection import rq_connection
from queue_schema.records import load_submission
from runtime.spec import load
from workers.fair_worker import FairSimpleWorker

pytestmark = pytest.mark.usefixtures("unsafe_ok")
STUDY_BYTES_BOUND = 64 * 1024


def _spec():
    spec = load("demo")
    feedback = dataclasses.replace(spec.phases["feedback"], problems=("DT-iris-acc",), studies=2)
    return dataclasses.replace(spec, phases={**spec.phases, "feedback": feedback})


@pytest.mark.parametrize("upload", hostile.UPLOADS, ids=lambda upload: upload.name)
def test_every_hostile_upload_is_refused_at_intake_and_stores_nothing(r, upload):
    spec = _spec()
    with pytest.raises(archive.InvalidSubmission):
        create_submission(r, team="t", data=upload.build(), spec=spec, phase="feedback", backend="process")
    assert r.dbsize() == 0


# The fork bomb needs a sandbox's process limit (the process backend has none: it would fork on the host
# until the machine refuses); the sandbox tests and the benchmark run it under docker and bwrap.
@pytest.mark.parametrize("name", sorted(set(hostile.OPTIMIZERS) - {"fork_bomb"}))
def test_every_hostile_optimizer_ends_as_the_catalogue_says_and_is_charged(r, name):
    spec = _spec()
    data = hostile.optimizer_zip(name)
    sub = create_submission(r, team="t", data=data, spec=spec, phase="feedback", backend="process")
    FairSimpleWorker(connection=rq_connection()).work(burst=True, logging_level="WARNING")
    done = load_submission(r, sub.id)
    state, cause = hostile.EXPECTED_OUTCOME[name]
    assert (done.state.value, done.failure.cause.value if done.failure else None) == (state, cause), done
    assert done.charged and done.refund is None
    studies = r.hvals(keys.study_results(sub.id, 1, "DT-iris-acc"))
    assert all(len(raw) <= STUDY_BYTES_BOUND for raw in studies), [len(raw) for raw in studies]
