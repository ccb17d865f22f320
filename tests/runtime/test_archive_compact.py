"""What stays in Redis once a score version is archived (issue 16, the seed's scale in memory): the
version's `study` events leave the submission's stream for the archive object and read back merged, its
job set moves there too, its per-study normalized scores stay compactly, and its provenance is one entry
however many jobs (and workers) ran it. Every reader answers as before."""

from __future__ import annotations

import json

import pytest
from rq import Queue, SimpleWorker

from competition import final, rescore
from console.data import ConsoleData
from queue_schema import keys, records, study_codec
from queue_schema.connection import rq_connection
from runtime import archiver, dispatch
from tests.runtime.test_archiver import scored, store, two_study_spec, without_beats  # noqa: F401
from tests.scoring_helpers import PROBLEM, score_tiny

pytestmark = pytest.mark.usefixtures("unsafe_ok")


def archive(r, sid: str, version: int = 1) -> archiver.ArchiveReport:
    report = archiver.archive_version(r, sid, version, grace=0)
    assert report.outcome == "archived", report
    records._load_archive.cache_clear()  # readers start cold, as a new process would
    return report


def stream(r, sid: str) -> list[tuple[str, str]]:
    return [(entry_id, fields["json"]) for entry_id, fields in r.xrange(keys.submission_events(sid))]


def kinds(entries: list[tuple[str, str]]) -> list[str]:
    return [json.loads(raw)["kind"] for _, raw in entries]


def without_archived(events):
    return [e for e in events if e.kind != "archived"]


# -- the events ---------------------------------------------------------------------------------------


def test_the_study_events_leave_the_stream_and_read_events_gives_the_same_history(r, scored):  # noqa: F811
    sid = scored.id
    before_stream = stream(r, sid)
    before = records.read_events(r, sid, count=10_000)
    assert kinds(before_stream).count("study") == 2 and len(before) == len(before_stream)
    windows = {n: records.read_events(r, sid, count=n) for n in (1, 2, 3, len(before) - 1)}
    last_id = r.xinfo_stream(keys.submission_events(sid))["last-generated-id"]

    report = archive(r, sid)

    after_stream = stream(r, sid)
    assert "study" not in kinds(after_stream)
    # The other events are kept with their ids and order, the mover's own `archived` event after them.
    kept = [(i, raw) for i, raw in before_stream if json.loads(raw)["kind"] != "study"]
    assert after_stream[:-1] == kept and kinds(after_stream)[-1] == "archived"
    assert records._stream_id(after_stream[-1][0]) > records._stream_id(last_id)
    # The history reads as before (the `archived` event added), in full and in every window.
    after = records.read_events(r, sid, count=10_000)
    assert after[:-1] == before and after[-1].kind == "archived"
    for n, window in windows.items():
        assert records.read_events(r, sid, count=n + 1)[:-1] == window
    mark = records.archive_mark(r, sid, 1)
    study_ids = [i for i, raw in before_stream if json.loads(raw)["kind"] == "study"]
    assert (mark.events, mark.last_event) == (2, study_ids[-1])
    assert records.load_archive(mark)["events"] == [[i, raw] for i, raw in before_stream if i in study_ids]
    assert report.outcome == "archived"


def test_read_events_opens_the_archive_only_when_its_events_are_in_the_window(r, scored, monkeypatch):  # noqa: F811
    sid = scored.id
    archive(r, sid)
    full = records.read_events(r, sid, count=10_000)

    def refuse(mark):
        raise AssertionError("the archive was opened")

    monkeypatch.setattr(records.events, "load_archive", refuse)  # read_events' own global
    newest = records.read_events(r, sid, count=1)
    assert [e.kind for e in newest] == ["archived"] and newest == full[-1:]
    with pytest.raises(AssertionError, match="opened"):
        records.read_events(r, sid, count=10_000)
    # The global stream is not the submission's: it is read as it always was.
    assert any(e.kind == "study" and e.submission_id == sid for e in records.read_events(r, count=10_000))


def test_the_stream_is_not_watched_an_event_during_the_move_is_kept(r, scored, store):  # noqa: F811
    """The submission's other versions (or an organizer) may write its stream while a version moves: the
    move goes through, and what they wrote stays."""
    sid = scored.id
    before = records.read_events(r, sid, count=10_000)

    def write_with_an_event_meanwhile(payload):
        records.add_event(r, "note", sid, text="meanwhile")
        return archiver._write(store, sid, 1, payload)

    outcome, mark = records.archive_version_data(r, sid, 1, [PROBLEM], write_with_an_event_meanwhile)
    assert outcome == "archived" and mark.events == 2
    records._load_archive.cache_clear()
    after = records.read_events(r, sid, count=10_000)
    assert after[:-1] == before and after[-1].kind == "note"
    assert kinds(stream(r, sid))[-1] == "note" and "study" not in kinds(stream(r, sid))


def test_a_rescored_submissions_events_merge_across_versions(r, scored):  # noqa: F811
    """Version 1 archived while version 2 wrote its own study events; then version 2 archived too: the
    history of both versions reads in order, whatever is archived."""
    sid = scored.id
    rescore.rescore(r, sid, actor="test", spec=two_study_spec())
    archive(r, sid, 1)
    conn = rq_connection()  # version 2's jobs run as score_tiny runs them
    queues = [Queue(name, connection=conn) for name in dispatch.queue_names(r)]
    SimpleWorker(queues, connection=conn).work(burst=True, logging_level="WARNING")
    sub = without_beats(r, records.load_submission(r, sid))
    assert sub.score_version == 2 and sub.state.value == "scored"
    before = records.read_events(r, sid, count=10_000)
    studies = [(e.data["version"], e.data["study"]) for e in before if e.kind == "study"]
    assert sorted(studies) == [(1, 0), (1, 1), (2, 0), (2, 1)]
    archive(r, sid, 2)
    assert "study" not in kinds(stream(r, sid))
    assert without_archived(records.read_events(r, sid, count=10_000)) == without_archived(before)


def test_console_and_cli_views_of_a_submission_are_unchanged(r, scored):  # noqa: F811
    """The console's data layer (detail, job list, job logs, the submission row) and the per-submission
    events give the same answers before and after."""
    console = ConsoleData(r)
    sid = scored.id
    before = {
        "detail": console.detail(sid),
        "jobs": console.job_ids(sid),
        "row": console.row(sid),
        "events": records.read_events(r, sid, count=10_000),
    }
    before["logs"] = {job: console.log_lines(job) for job in before["jobs"]}
    assert len(before["jobs"]) == 2

    archive(r, sid)

    console = ConsoleData(r)
    assert console.detail(sid) == before["detail"]
    assert console.job_ids(sid) == before["jobs"]
    assert console.row(sid) == before["row"]
    assert {job: console.log_lines(job) for job in before["jobs"]} == before["logs"]
    assert without_archived(records.read_events(r, sid, count=10_000)) == before["events"]


# -- the job set --------------------------------------------------------------------------------------


def test_the_job_set_moves_to_the_archive_and_reads_the_same(r, scored):  # noqa: F811
    sid = scored.id
    jobs = sorted(r.smembers(keys.submission_jobs(sid, 1)))
    backend = rescore._previous_backend(r, scored)
    assert records.version_jobs(r, sid, 1) == jobs and len(jobs) == 2
    assert backend == "process"  # found from the jobs' RQ records

    archive(r, sid)

    assert not r.exists(keys.submission_jobs(sid, 1))
    assert records.version_jobs(r, sid, 1) == jobs
    assert records.load_archive(records.archive_mark(r, sid, 1))["jobs"] == jobs
    assert rescore._previous_backend(r, scored) == backend
    assert records.version_jobs(r, sid, 2) == []  # no such version: nothing, and no archive to open


def test_an_object_and_mark_from_before_events_and_jobs_moved_still_read(r, scored, store):  # noqa: F811
    """An object written by the first archiver (no `jobs`, no `events`; the set and the events stayed in
    Redis) and its mark (no event fields) read as they did."""
    sid = scored.id
    jobs = records.version_jobs(r, sid, 1)
    events = records.read_events(r, sid, count=10_000)

    def first_archiver(payload):
        payload = {k: v for k, v in payload.items() if k not in ("jobs", "events")}
        payload["events"], payload["jobs"] = [], []  # what this mover then takes out of Redis: nothing
        mark = archiver._write(store, sid, 1, payload)
        return mark

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(records.archiving, "_version_study_events", lambda entries, version: [])
        outcome, _ = records.archive_version_data(r, sid, 1, [PROBLEM], first_archiver)
    assert outcome == "archived"
    # Put back what the first archiver left in Redis, and its mark as it wrote it.
    r.sadd(keys.submission_jobs(sid, 1), *jobs)
    raw = json.loads(r.hget(keys.score_version(sid, 1), records.ARCHIVED_FIELD))
    old_mark = {k: v for k, v in raw.items() if k not in ("events", "last_event")}
    r.hset(keys.score_version(sid, 1), records.ARCHIVED_FIELD, json.dumps(old_mark))
    records._load_archive.cache_clear()
    assert records.archive_mark(r, sid, 1).events == 0
    assert records.version_jobs(r, sid, 1) == jobs
    assert records.read_events(r, sid, count=10_000) == events
    # A mark of a newer writer, with fields this one does not know, still reads.
    r.hset(keys.score_version(sid, 1), records.ARCHIVED_FIELD, json.dumps({**raw, "later": 1}))
    assert records.archive_mark(r, sid, 1).object == raw["object"]


# -- the study scores ---------------------------------------------------------------------------------


def test_study_scores_stay_compactly_with_the_same_values(r, scored):  # noqa: F811
    sid = scored.id
    values = final.study_scores(r, scored.last_scored())  # computed and kept
    raw = r.get(keys.study_scores(sid, 1))
    assert raw.startswith(study_codec.SCORES_PREFIX)
    assert records.read_study_scores(r, sid, 1) == values
    studies = records.read_studies(r, sid, 1, PROBLEM)
    assert values == {PROBLEM: [studies[i].normalized for i in sorted(studies)]}

    archive(r, sid)

    assert r.get(keys.study_scores(sid, 1)) == raw
    assert final.study_scores(r, scored.last_scored()) == values
    assert records.read_study_scores(r, sid, 1) == values


def test_study_scores_of_the_older_json_form_read_and_are_made_compact_when_archived(r, scored):  # noqa: F811
    sid = scored.id
    values = final.study_scores(r, scored.last_scored())
    legacy = json.dumps({"baseline_version": "b1", "problems": values})
    r.set(keys.study_scores(sid, 1), legacy)  # as the writer before the compact form kept them
    assert final.study_scores(r, scored.last_scored()) == values

    archive(r, sid)

    raw = r.get(keys.study_scores(sid, 1))
    assert raw.startswith(study_codec.SCORES_PREFIX) and len(raw) < len(legacy) + 200
    assert study_codec.decode_scores(raw) == ("b1", values)
    assert final.study_scores(r, scored.last_scored()) == values
    assert records.load_archive(records.archive_mark(r, sid, 1))["study_scores"] == legacy


def test_the_archiver_keeps_the_study_scores_it_computes_compactly(r, scored):  # noqa: F811
    sid = scored.id
    assert not r.exists(keys.study_scores(sid, 1))
    archive(r, sid)
    studies = {i: s.normalized for i, s in records.read_studies(r, sid, 1, PROBLEM).items()}
    assert r.get(keys.study_scores(sid, 1)).startswith(study_codec.SCORES_PREFIX)
    assert records.read_study_scores(r, sid, 1) == {PROBLEM: [studies[i] for i in sorted(studies)]}


# -- provenance ---------------------------------------------------------------------------------------


def test_a_multi_job_version_has_one_provenance_entry(r, store):  # noqa: F811
    sub = without_beats(r, score_tiny(r, "gamma", two_study_spec()))
    assert len(records.version_jobs(r, sub.id, 1)) == 2
    provenance = r.hgetall(keys.version_provenance(sub.id, 1))
    assert len(provenance) == 1
    studies = records.read_studies(r, sub.id, 1, PROBLEM)
    (text,) = provenance.values()
    assert all(s.worker and s.worker not in text for s in studies.values())
    archive(r, sub.id)
    assert records.read_studies(r, sub.id, 1, PROBLEM) == studies
