"""Whose failure is it: team bytes that crash the trusted side are the team's typed cause, charged to its
quota; only failures positively ours are `infrastructure`, refunded up to the spec's refunds per day, and
past that held for an organizer's ruling.

The hostile optimizers here write raw lines on the protocol channel themselves (the host's private
duplicate of stdout, which the team's code can find among its file descriptors: bench/hostile.py), as a
team that reads `sandbox_image/host.py` would; each case is an input that escaped as an unclassified
exception on the landed code and was refunded as `infrastructure`.
"""

from __future__ import annotations

import io
import threading
import zipfile
from pathlib import Path

import pytest

from artifacts import archive
from bench import hostile
from competition import moderation, quotas
from competition.submit import create_submission
from queue_schema import keys
from queue_schema.connection import rq_connection
from queue_schema.ids import artifact_digest, new_submission_id
from queue_schema.payloads import MAX_FAILURE_MESSAGE, Submission
from queue_schema.records import load_submission, read_events, save_new_submission
from queue_schema.states import FailureCause, RefundState
from runtime import lifecycle
from runtime.enqueue import enqueue_jobs, phase_progress
from runtime.spec import load
from workers.failures import is_ours
from workers.fair_worker import FairSimpleWorker

pytestmark = pytest.mark.usefixtures("unsafe_ok")

HOSTILE_REPLIES = {
    # json.loads raised ValueError: "Exceeds the limit (4300 digits) for integer string conversion".
    "a 5,000-digit number": (b'{"ok":true,"op":"suggest","X":[{"x0":1' + b"1" * 5000 + b"}]}\n", False),
    # json.loads raised RecursionError.
    "deeply nested JSON": (
        b'{"ok":true,"op":"suggest","X":' + b"[" * 100_000 + b"]" * 100_000 + b"}\n",
        False,
    ),
    # The harness did reply.error.get(...) on a string: AttributeError.
    "an error that is not an object": (b'{"ok":false,"op":"suggest","error":"boom"}\n', False),
    # The constructor's error message, a dict, reached the Failure record: a pydantic ValidationError.
    "an error message that is not text": (b'{"ok":false,"op":"init","error":{"message":{"a":[1]}}}\n', True),
}


def _zip(files: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, text in files.items():
            zf.writestr(name, text)
    return buffer.getvalue()


def _work() -> None:
    FairSimpleWorker(connection=rq_connection()).work(burst=True, max_jobs=1, logging_level="WARNING")


def _lay_down(r, data: bytes):
    """A submission whose artifact skipped today's intake, with its jobs queued as intake queues them."""
    spec = load("demo")
    artifact = archive.Artifact(artifact_digest(data), data, 0, 0)
    archive.store(r, artifact)
    sub = Submission(
        id=new_submission_id(),
        team="t",
        artifact_sha256=artifact.sha256,
        spec_name=spec.name,
        spec_hash=spec.hash,
        phase="feedback",
        backend="process",
        progress=phase_progress(spec, "feedback"),
    )
    r.set(keys.spec(spec.hash), spec.to_json())
    save_new_submission(r, sub)
    enqueue_jobs(r, sub, spec, backend="process")
    return sub


def _submit(r, data: bytes, team: str = "t"):
    spec = load("demo")
    return create_submission(r, team=team, data=data, spec=spec, phase="feedback", backend="process")


@pytest.mark.parametrize("case", sorted(HOSTILE_REPLIES))
def test_a_hostile_protocol_reply_is_the_teams_crash_and_is_charged(r, case):
    line, in_init = HOSTILE_REPLIES[case]
    source = hostile.raw_reply_optimizer(line, in_init=in_init)
    sub = _submit(r, _zip({"optimizer.py": source}))
    _work()
    failed = load_submission(r, sub.id)
    assert failed.state.value == "failed", case
    assert failed.failure.cause == FailureCause.OPTIMIZER_CRASHED, (case, failed.failure)
    assert failed.charged and failed.refund is None, case
    assert len(failed.failure.message) <= MAX_FAILURE_MESSAGE + 80
    assert quotas.used_today(r, "t") == 1


def test_an_archive_the_worker_cannot_unpack_is_the_teams_and_charged(r):
    """Entry names that made extraction raise OSError (a 300-character name: ENAMETOOLONG; `pkg` both a
    file and a folder) were refunded as infrastructure. The artifact is laid in the store directly, as an
    upload accepted under looser rules (an older release's intake) would be."""
    for files in (
        {"optimizer.py": "x = 1\n", "a" * 300: "long"},
        {"optimizer.py": "x = 1\n", "pkg": "file", "pkg/m.py": "folder"},
    ):
        r.flushall()
        sub = _lay_down(r, _zip(files))
        _work()
        failed = load_submission(r, sub.id)
        assert failed.failure is not None and failed.failure.cause == FailureCause.INVALID_SUBMISSION, files
        assert failed.charged, files


def test_infrastructure_failures_are_refunded_up_to_the_daily_cap_then_held(r):
    spec = load("demo")
    per_day = spec.submission.refunds_per_day
    data = archive.pack(Path(__file__).parents[1] / "submissions" / "random_search", spec.submission)
    subs = [_submit(r, data) for _ in range(per_day + 2)]
    for sub in subs:
        lifecycle.fail(r, sub.id, 1, FailureCause.INFRASTRUCTURE, "worker lost")
    outcomes = [load_submission(r, sub.id) for sub in subs]
    assert [o.refund for o in outcomes] == [RefundState.AUTO] * per_day + [RefundState.HELD] * 2
    assert [o.charged for o in outcomes] == [False] * per_day + [True] * 2
    assert "not charged to your quota" in outcomes[0].failure.message
    assert "until an organizer reviews it" in outcomes[-1].failure.message
    assert quotas.used_today(r, "t") == 2
    assert {s.id for s in moderation.held_refunds(r)} == {o.id for o in outcomes[per_day:]}
    assert any(e.kind == "refund_held" for e in read_events(r, outcomes[-1].id))

    granted = moderation.decide_refund(r, outcomes[-1].id, True, reason="our disk", actor="ops")
    denied = moderation.decide_refund(r, outcomes[-2].id, False, reason="its own crash", actor="ops")
    assert (granted.refund, granted.charged) == (RefundState.GRANTED, False)
    assert (denied.refund, denied.charged) == (RefundState.DENIED, True)
    assert quotas.used_today(r, "t") == 1
    assert moderation.held_refunds(r) == []
    assert granted.public_view()["refund"] == "granted"
    with pytest.raises(moderation.ModerationError):
        moderation.decide_refund(r, outcomes[0].id, False)  # an automatic refund stays


def test_racing_infrastructure_failures_never_refund_past_the_cap(r):
    spec = load("demo")
    per_day = spec.submission.refunds_per_day
    data = archive.pack(Path(__file__).parents[1] / "submissions" / "random_search", spec.submission)
    subs = [_submit(r, data) for _ in range(12)]
    barrier = threading.Barrier(len(subs))

    def fail(sid: str) -> None:
        barrier.wait()
        lifecycle.fail(r, sid, 1, FailureCause.INFRASTRUCTURE, "worker lost")

    threads = [threading.Thread(target=fail, args=(s.id,)) for s in subs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    outcomes = [load_submission(r, s.id) for s in subs]
    assert sum(o.refund == RefundState.AUTO for o in outcomes) == per_day
    assert sum(o.refund == RefundState.HELD for o in outcomes) == len(subs) - per_day
    assert r.zcard(keys.team_refunds("t")) == per_day


def test_a_rescore_failing_as_infrastructure_neither_refunds_nor_holds(r):
    spec = load("demo")
    data = archive.pack(Path(__file__).parents[1] / "submissions" / "random_search", spec.submission)
    sub = _submit(r, data)
    r.hset(keys.submission(sub.id), "score_version", "2")
    lifecycle.fail(r, sub.id, 2, FailureCause.INFRASTRUCTURE, "worker lost")
    after = load_submission(r, sub.id)
    assert after.charged and after.refund is None


def test_only_failures_positively_ours_are_infrastructure():
    import errno

    import redis
    from rq.timeouts import JobTimeoutException

    from workers.harness import SandboxInfrastructureError
    from workers.sandbox.base import SandboxUnavailable

    ours = [
        redis.ConnectionError("gone"),
        SandboxUnavailable("no engine"),
        SandboxInfrastructureError("container lost"),
        OSError(errno.ENOSPC, "No space left on device"),
        JobTimeoutException("job timed out"),
        MemoryError(),
    ]
    theirs = [
        OSError(errno.ENAMETOOLONG, "File name too long"),
        IsADirectoryError(errno.EISDIR, "Is a directory"),
        ValueError("Exceeds the limit (4300 digits)"),
        RecursionError("maximum recursion depth exceeded"),
        AttributeError("'str' object has no attribute 'get'"),
        KeyError("x0"),
        TypeError("unhashable type: 'list'"),
    ]
    assert all(is_ours(exc) for exc in ours)
    assert not any(is_ours(exc) for exc in theirs)


def test_organizers_can_refund_a_charged_failure_they_find_was_ours(r):
    """A failure the service could not tell was ours is the team's: charged, and the organizers, who
    read the traceback in the log, can still refund it; a scored upload has nothing to refund."""
    spec = load("demo")
    data = archive.pack(Path(__file__).parents[1] / "submissions" / "random_search", spec.submission)
    crashed, scored = _submit(r, data), _submit(r, data)
    lifecycle.fail(
        r, crashed.id, 1, FailureCause.OPTIMIZER_CRASHED, "the optimizer's output could not be handled"
    )
    assert load_submission(r, crashed.id).charged
    granted = moderation.decide_refund(r, crashed.id, True, reason="a harness bug", actor="ops")
    assert (granted.refund, granted.charged) == (RefundState.GRANTED, False)
    with pytest.raises(moderation.ModerationError, match="no refund to decide"):
        moderation.decide_refund(r, scored.id, True)
