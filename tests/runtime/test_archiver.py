"""The mover (runtime/archiver.py): a complete score version's data leaves Redis for a verified archive
object, readers see the same data, and a crash at any step loses nothing and leaves no half state."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from queue_schema import archive_store, keys, records
from queue_schema.archive_store import DirectoryStore
from queue_schema.states import SubmissionState
from runtime import archiver, recovery
from runtime.spec import Spec
from tests.contract.test_archive_store import s3_endpoint, s3_env  # noqa: F401 (fixtures)
from tests.scoring_helpers import PROBLEM, score_tiny, tiny_spec

pytestmark = pytest.mark.usefixtures("unsafe_ok")
ROOT = Path(__file__).parents[2]
STEPS = ["snapshot", "tmp_written", "object_written", "verified", "marked"]


def two_study_spec() -> Spec:
    """One problem, two studies in two jobs: two study fields, two job logs."""
    spec = tiny_spec()
    feedback = dataclasses.replace(spec.phases["feedback"], studies=2, studies_per_job=1)
    return dataclasses.replace(spec, phases={**spec.phases, "feedback": feedback})


@pytest.fixture()
def store(tmp_path, monkeypatch):
    monkeypatch.setenv(archive_store.ARCHIVE_URL_ENV, str(tmp_path / "archive"))
    records._load_archive.cache_clear()
    return DirectoryStore(tmp_path / "archive")


@pytest.fixture()
def scored(r, store):
    sub = score_tiny(r, "alpha", two_study_spec())
    assert sub.state.value == "scored", sub
    return without_beats(r, sub)


def without_beats(r, sub):
    """A finished job's heartbeat is left to expire (JOB_HEARTBEAT_TTL_S): as if it had."""
    for version in range(1, sub.score_version + 1):
        for job in r.smembers(keys.submission_jobs(sub.id, version)):
            r.delete(keys.job_heartbeat(job))
    return sub


def live_view(r, sid: str, version: int = 1) -> dict:
    """Everything the readers get of a version, through records."""
    jobs = records.version_jobs(r, sid, version)
    return {
        "jobs": jobs,
        # The submission's history (the mover's own `archived` event aside), study events included.
        "events": [e for e in records.read_events(r, sid, count=10_000) if e.kind != "archived"],
        "studies": records.read_studies(r, sid, version, PROBLEM),
        "indices": records.finished_study_indices(r, sid, version, PROBLEM),
        "logs": {job: records.read_job_log(r, job) for job in jobs},
        "entries": {job: records.read_job_log_entries(r, job) for job in jobs},
    }


def assert_whole(r, sid: str, before: dict, version: int = 1) -> None:
    """No half state: either Redis has the data and there is no mark, or the mark names an object that
    verifies and Redis has none of the study data; and every reader sees the same content."""
    mark = records.archive_mark(r, sid, version)
    redis_has = r.exists(keys.study_results(sid, version, PROBLEM))
    if mark is None:
        assert redis_has
    else:
        assert not redis_has
        archive_store.open_store(mark.store).load(mark.object, mark.sha256)
    records._load_archive.cache_clear()
    assert live_view(r, sid, version) == before


def test_a_scored_version_moves_to_the_archive_and_reads_the_same(r, scored, store):
    before = live_view(r, scored.id)
    assert len(before["studies"]) == 2 and all(before["logs"].values())
    assert not r.exists(keys.study_scores(scored.id, 1))

    report = archiver.archive_version(r, scored.id, 1, grace=0)
    assert report.outcome == "archived", report
    assert (report.studies, report.logs) == (2, 2)
    assert report.object == f"{scored.id}/v1.json.gz" and report.bytes > 0

    assert not r.exists(keys.study_results(scored.id, 1, PROBLEM), keys.problems_done(scored.id, 1))
    assert not any(r.exists(keys.job_log(job)) for job in before["logs"])
    assert not r.exists(keys.submission_jobs(scored.id, 1))  # in the archive: records.version_jobs
    mark = records.archive_mark(r, scored.id, 1)
    assert mark is not None and mark.sha256 == report.sha256
    assert archive_store.digest((store.root / mark.object).read_bytes()) == mark.sha256
    # Per-study normalized scores stay in Redis, as the final phase keeps them.
    kept = records.read_study_scores(r, scored.id, 1)
    assert kept[PROBLEM] == [s.normalized for _, s in sorted(before["studies"].items())]

    records._load_archive.cache_clear()
    assert live_view(r, scored.id) == before
    assert records.read_job_log_entries(r, next(iter(before["entries"])), "0-1", 1)[0][0] > "0-1"
    assert archiver.archive_version(r, scored.id, 1, grace=0).outcome == "already"


def test_a_version_waits_for_its_end_its_grace_and_its_jobs(r, scored):
    assert archiver.archive_version(r, scored.id, 1, grace=3600).outcome == "waiting"
    job = sorted(r.smembers(keys.submission_jobs(scored.id, 1)))[0]
    r.set(keys.job_heartbeat(job), "{}", ex=30)  # a straggler still beating
    report = archiver.archive_version(r, scored.id, 1, grace=0)
    assert report.outcome == "waiting" and job in report.reason
    r.delete(keys.job_heartbeat(job))
    r.zadd(keys.dispatch_inflight(), {job: time.time()})  # popped, not started
    assert archiver.archive_version(r, scored.id, 1, grace=0).outcome == "waiting"
    r.delete(keys.dispatch_inflight())
    assert archiver.archive_version(r, scored.id, 2, grace=0).outcome == "gone"
    records.transition(r, scored.id, SubmissionState.QUEUED)  # as if running again: not complete
    report = archiver.archive_version(r, scored.id, 1, grace=0)
    assert report.outcome == "waiting" and "queued" in report.reason
    records.transition(r, scored.id, SubmissionState.SCORED)
    assert archiver.archive_version(r, scored.id, 1, grace=0).outcome == "archived"
    assert archiver.archive_version(r, "s-nobody", 1, grace=0).outcome == "gone"


def test_a_late_write_aborts_the_move_and_nothing_is_dropped(r, scored, store):
    before = live_view(r, scored.id)
    key = keys.study_results(scored.id, 1, PROBLEM)

    def write_then_late_study(payload):
        mark = archiver._write(store, scored.id, 1, payload)
        r.hset(key, "7", r.hget(key, "0"))  # a late study lands between the snapshot and the commit
        return mark

    outcome, mark = records.archive_version_data(r, scored.id, 1, [PROBLEM], write_then_late_study)
    assert (outcome, mark) == ("raced", None)
    assert records.archive_mark(r, scored.id, 1) is None
    assert r.hlen(key) == 3
    r.hdel(key, "7")
    assert live_view(r, scored.id) == before
    assert archiver.archive_version(r, scored.id, 1, grace=0).outcome == "archived"


def test_an_object_that_does_not_verify_is_never_marked(r, scored, store):
    class Corrupting(DirectoryStore):
        def get(self, name):
            data = super().get(name)
            return data if data is None else data[:-8] + b"\0" * 8

    before = live_view(r, scored.id)
    with pytest.raises(archiver.VerifyError):
        archiver.archive_version(r, scored.id, 1, Corrupting(store.root), grace=0)
    assert records.archive_mark(r, scored.id, 1) is None
    assert live_view(r, scored.id) == before


@pytest.mark.parametrize("step", STEPS)
def test_killing_the_mover_at_any_step_loses_nothing(r, scored, store, step):
    """The mover in a subprocess, killed (os._exit) at `step`: the data is whole, in Redis or in a
    verified, marked object, and a rerun completes with the same content."""
    before = live_view(r, scored.id)
    code = (
        "from queue_schema.connection import connect; from runtime import archiver;"
        f"print(archiver.archive_version(connect(), {scored.id!r}, 1, grace=0))"
    )
    env = {**os.environ, archive_store.CRASH_AT_ENV: step}
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 9, done.stdout + done.stderr
    assert (records.archive_mark(r, scored.id, 1) is not None) == (step == "marked")
    assert_whole(r, scored.id, before)

    rerun = archiver.archive_version(r, scored.id, 1, grace=0)
    assert rerun.outcome == ("already" if step == "marked" else "archived")
    assert_whole(r, scored.id, before)
    assert records.archive_mark(r, scored.id, 1) is not None
    assert not list(store.root.rglob("*.tmp")) or step == "tmp_written"  # a stale one goes at a later put


def test_due_versions_are_found_from_events_and_archived_by_the_reaper(r, scored, store, monkeypatch):
    monkeypatch.setenv(archiver.GRACE_ENV, "3600")
    assert recovery.reap_if_due(r, "w1") is not None
    assert records.archive_mark(r, scored.id, 1) is None  # within its grace period
    assert r.zscore(keys.archive_pending(), f"{scored.id}:1") is not None  # found by the first pass

    other = without_beats(r, score_tiny(r, "beta", two_study_spec()))  # ended after the cursor
    records.note_ended_versions(r)
    assert r.zscore(keys.archive_pending(), f"{other.id}:1") == pytest.approx(other.updated_at, abs=5)

    later = time.time() + 3600 + 1
    report = archiver.archive_due(r, 1, now=later)
    assert [a.submission for a in report.archived] == [scored.id] and report.pending == 1
    monkeypatch.setenv(archiver.GRACE_ENV, "0")
    r.delete(keys.lock(recovery.REAPER_LOCK))
    recovery.reap_if_due(r, "w2")
    assert records.archive_mark(r, other.id, 1) is not None
    assert records.pending_versions(r) == 0


def test_a_rescored_version_is_archived_and_the_current_one_is_not(r, scored, store):
    from competition import rescore

    rescore.rescore(r, scored.id, actor="test", spec=two_study_spec())
    # Version 1 ended when the rescore closed it; version 2 is queued.
    assert archiver.archive_version(r, scored.id, 1, grace=0).outcome == "archived"
    assert archiver.archive_version(r, scored.id, 2, grace=0).outcome == "waiting"
    assert archiver.archive_all(r, grace=0).archived == []


def test_the_archive_can_be_an_s3_bucket(r, scored, s3_env, monkeypatch):  # noqa: F811
    monkeypatch.setenv(archive_store.ARCHIVE_URL_ENV, f"s3://{s3_env}/archive")
    before = live_view(r, scored.id)
    report = archiver.archive_version(r, scored.id, 1, grace=0)
    assert report.outcome == "archived"
    mark = records.archive_mark(r, scored.id, 1)
    assert mark.store == f"s3://{s3_env}/archive"
    records._load_archive.cache_clear()
    assert live_view(r, scored.id) == before


def test_admin_archive_cli(r, scored, store, monkeypatch):
    from typer.testing import CliRunner

    from cli.main import app

    monkeypatch.setenv(archiver.GRACE_ENV, "0")
    result = CliRunner().invoke(app, ["admin", "archive", "--all", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert [(a["submission"], a["version"]) for a in out["archived"]] == [(scored.id, 1)]
    result = CliRunner().invoke(app, ["admin", "archive", scored.id, "--json"])
    assert json.loads(result.stdout.strip().splitlines()[-1])["already"] == [1]
