from __future__ import annotations

import json

import pytest

from queue_schema import SCHEMA_VERSION, ids, keys
from queue_schema.payloads import ScoreJob, StudyResult, Submission
from queue_schema.states import IllegalTransition, StudyState, SubmissionState, check_transition


def test_job_ids_are_deterministic_and_rq_safe():
    a = ids.job_id("s0abc1234def456", 2, "MLP-adam-iris-acc", 3)
    assert a == ids.job_id("s0abc1234def456", 2, "MLP-adam-iris-acc", 3)
    assert a != ids.job_id("s0abc1234def456", 3, "MLP-adam-iris-acc", 3)
    from rq.job import JOB_ID_PATTERN

    assert JOB_ID_PATTERN.fullmatch(a)


def test_submission_ids_sort_by_time_and_are_unique():
    early, late = ids.new_submission_id(1_600_000_000), ids.new_submission_id(1_700_000_000)
    assert early < late and ids.is_submission_id(early)
    assert len({ids.new_submission_id() for _ in range(1000)}) == 1000


@pytest.mark.parametrize(
    ("current", "new", "ok"),
    [
        ("queued", "running", True),
        ("running", "scored", True),
        ("running", "stopped", True),
        ("queued", "failed", True),
        ("scored", "queued", True),  # rescore
        ("scored", "running", False),
        ("failed", "scored", False),
        ("stopped", "running", False),
    ],
)
def test_state_machine(current, new, ok):
    if ok:
        check_transition(SubmissionState(current), SubmissionState(new))
    else:
        with pytest.raises(IllegalTransition):
            check_transition(SubmissionState(current), SubmissionState(new))


def test_payloads_round_trip_and_refuse_newer_schema():
    job = ScoreJob(
        submission_id="s1",
        score_version=1,
        problem="DT-iris-acc",
        studies=[0, 1],
        phase="feedback",
        spec_hash="abc",
        artifact_sha256="f" * 64,
    )
    assert ScoreJob.from_json(job.to_json()) == job
    newer = json.loads(job.to_json()) | {"schema_version": SCHEMA_VERSION + 1}
    with pytest.raises(ValueError, match="newer"):
        ScoreJob.model_validate(newer)


def test_study_result_encodes_infinity_as_null():
    result = StudyResult(
        study=0, state=StudyState.CUT_OFF, losses=[[StudyResult.encode_loss(float("inf")), 0.5]]
    )
    assert json.loads(result.to_json())["losses"] == [[None, 0.5]]
    assert StudyResult.decode_loss(None) == float("inf")


def test_public_view_has_the_contract_fields():
    sub = Submission(
        id="s1", team="t", artifact_sha256="a", spec_name="demo", spec_hash="h", phase="feedback"
    )
    view = sub.public_view()
    assert set(view) == {"id", "team", "state", "score", "failure", "progress", "created_at"}
    assert view["progress"] == {"studies_done": 0, "studies_total": 0}
    assert view["created_at"].endswith("Z")


def test_every_key_is_namespaced():
    built = [
        keys.submission("s"),
        keys.submissions_index(),
        keys.team_submissions("t"),
        keys.artifact("a"),
        keys.spec("h"),
        keys.study_results("s", 1, "p"),
        keys.problems_done("s", 1),
        keys.events(),
        keys.job_log("j"),
        keys.heartbeat("w"),
        keys.submission_jobs("s", 1),
    ]
    assert all(k.startswith(keys.PREFIX + ":") for k in built)
    assert len(set(built)) == len(built)


def test_a_study_is_stored_counted_and_announced_in_one_write_and_only_once(r):
    from queue_schema.records import load_submission, read_events, save_new_submission, write_study

    sub = Submission(
        id="s00000000aaaaaaaaaa",
        team="alpha",
        artifact_sha256="0" * 64,
        spec_name="demo",
        spec_hash="h",
        phase="feedback",
    )
    save_new_submission(r, sub)
    result = StudyResult(study=3, state=StudyState.COMPLETE, losses=[[0.5, 0.4], [0.3, 0.2]])

    # A retried job writes the same study again: stored, counted and announced the first time only. The
    # event is written by the same script as the result (a worker killed right after the write must not
    # leave a stored study that no event ever mentions: the retry skips stored studies).
    assert write_study(r, sub.id, 1, "DT-iris-acc", result, 0.75) == 1
    assert write_study(r, sub.id, 1, "DT-iris-acc", result, 0.75) == 0
    studies = [e for e in read_events(r, sub.id) if e.kind == "study"]
    assert [(e.data["problem"], e.data["study"], e.data["version"]) for e in studies] == [
        ("DT-iris-acc", 3, 1)
    ]
    assert [e.kind for e in read_events(r) if e.submission_id == sub.id] == ["study"]  # the global stream
    progress = load_submission(r, sub.id).progress
    assert (progress.studies_done, progress.evals_done) == (1, 4)

    # A seeder laying down its own timeline writes the study without the event.
    assert (
        write_study(
            r,
            sub.id,
            1,
            "DT-iris-acc",
            StudyResult(study=4, state=StudyState.COMPLETE, losses=[[0.1]]),
            None,
            announce=False,
        )
        == 1
    )
    assert len([e for e in read_events(r, sub.id) if e.kind == "study"]) == 1
