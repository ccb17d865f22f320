"""The store's indexes (queue_schema/records/indexes.py) against a full scan, and the readers that use them.

Real Redis, no mocks: the index must equal what a scan of every submission finds after any mix of
transitions, disqualifications and rescores; the boards, `rescore_all` and the metrics must not read
every submission; a study's normalized score is stored when it is written and the report uses it.
"""

from __future__ import annotations

import random

import pytest

from competition import final, moderation, rescore, scores, service, teams
from queue_schema import keys
from queue_schema.payloads import ScoredVersion, StudyResult
from queue_schema.records import (
    INDEX_LAYOUT,
    best_by_team,
    ensure_indexes,
    load_submission,
    load_submissions,
    read_studies,
    rebuild_indexes,
    start_score_version,
    transition,
    write_study,
)
from queue_schema.states import FailureCause, StudyState, SubmissionState
from runtime import versions
from tests import console_helpers as fixed

SPECS = (("demo", "feedback"), ("demo", "final"), ("other", "feedback"))


def _scan(r) -> dict:
    """The indexes as a scan of every submission computes them (the slow way the readers used to)."""
    subs = load_submissions(r, r.zrange(keys.submissions_index(), 0, -1))
    states = {s.value: set() for s in SubmissionState}
    causes = {c.value: set() for c in FailureCause}
    scored: dict[str, dict[str, float]] = {}
    for sub in subs:
        states[sub.state.value].add(sub.id)
        if sub.state == SubmissionState.FAILED and sub.failure is not None:
            causes[sub.failure.cause.value].add(sub.id)
        shown = sub.last_scored()
        if shown is not None:
            scored.setdefault(keys.scored_index(sub.spec_name, sub.phase), {})[sub.id] = shown.score
    return {
        "states": states,
        "causes": causes,
        "scored": scored,
        "studies": sum(s.progress.studies_done for s in subs),
    }


def _index(r) -> dict:
    scored = {}
    for key in r.smembers(keys.scored_indexes()):
        members = dict(r.zrange(key, 0, -1, withscores=True))
        if members:
            scored[key] = members
    return {
        "states": {s.value: set(r.smembers(keys.state_index(s.value))) for s in SubmissionState},
        "causes": {c.value: set(r.smembers(keys.failure_index(c.value))) for c in FailureCause},
        "scored": scored,
        "studies": int(r.get(keys.studies_done_total()) or 0),
    }


def _study(index: int, loss: float) -> StudyResult:
    return StudyResult(study=index, state=StudyState.COMPLETE, losses=[[loss] * 2])


def _populate(r, n: int, spec, seed: int = 0) -> tuple[list[str], random.Random]:
    rng = random.Random(seed)
    ids = []
    for i in range(n):
        name, phase = SPECS[i % len(SPECS)]
        sub = fixed.record(r, f"s{i:017d}", f"team{i % 7}", 1_700_000_000.0 + i, spec, phase=phase)
        if name != spec.name:  # a second competition in the same store
            r.hset(keys.submission(sub.id), "record", sub.model_copy(update={"spec_name": name}).to_json())
        ids.append(sub.id)
    return ids, rng


def test_the_index_equals_a_full_scan_after_any_mix_of_changes(r):
    spec = fixed.demo_spec()
    ids, rng = _populate(r, 60, spec)
    rebuild_indexes(r)  # the records above were partly written past the writers (the other competition)
    for step in range(600):
        sid = rng.choice(ids)
        sub = load_submission(r, sid)
        v = sub.score_version
        move = rng.choice(["run", "score", "fail", "stop", "study", "disqualify", "requalify", "rescore"])
        if move == "run":
            transition(r, sid, SubmissionState.RUNNING, version=v)
        elif move == "score":
            transition(r, sid, SubmissionState.SCORED, version=v, score=rng.uniform(0, 100), scored_at=step)
        elif move == "fail":
            cause = rng.choice(list(FailureCause))
            transition(r, sid, SubmissionState.FAILED, version=v, failure=(cause, "boom"))
        elif move == "stop":
            transition(r, sid, SubmissionState.STOPPED, version=v)
        elif move == "study":
            write_study(r, sid, v, "DT-iris-acc", _study(step, 0.5), rng.choice([None, 0.3]))
        elif move == "disqualify":
            moderation.disqualify(r, sid, "copied", actor="tester")
        elif move == "requalify" and sub.disqualified:
            moderation.requalify(r, sid, actor="tester")
        elif move == "rescore" and sub.state in (SubmissionState.SCORED, SubmissionState.FAILED):
            # What rescore.rescore writes: the next version, keeping the last scored one as `previous`.
            previous = sub.previous
            if sub.state == SubmissionState.SCORED:
                previous = ScoredVersion(version=v, score=sub.score, scored_at=step, spec_hash=sub.spec_hash)
            start_score_version(r, sid, v, previous=previous, scored_at=None)
        if step % 50 == 0:
            assert _index(r) == _scan(r), step
    assert _index(r) == _scan(r)
    assert any(_scan(r)["scored"].values()) and _scan(r)["studies"] > 0
    incremental = _index(r)
    r.delete(keys.index_built())
    ensure_indexes(r)  # a rebuild from the records gives the same indexes
    assert r.get(keys.index_built()) == INDEX_LAYOUT
    assert _index(r) == incremental


def test_an_old_store_without_indexes_is_indexed_on_first_read(r):
    spec = fixed.demo_spec()
    teams.add_team(r, "team0")
    sub = fixed.record(r, "s0000000aaaaaaaaa1", "team0", 1_700_000_000.0, spec)
    transition(r, sub.id, SubmissionState.SCORED, score=91.5, scored_at=1_700_000_100.0)
    for name in ("state", "failed", "scored"):  # the store as an older release left it: no indexes
        for key in r.keys(f"bbo:idx:{name}*"):
            r.delete(key)
    r.delete(keys.index_built(), keys.studies_done_total())
    (row,) = service.leaderboard(r, "feedback", spec.name)
    assert (row["submission"], row["score"]) == (sub.id, 91.5)
    assert service.metrics_snapshot(r)["submissions"]["scored"] == 1


def _hash_reads(r) -> int:
    stats = r.info("commandstats")
    return sum(stats.get(f"cmdstat_{c}", {}).get("calls", 0) for c in ("hgetall", "hmget", "hget"))


def test_boards_rescore_all_and_metrics_do_not_read_every_submission(r):
    """2,000 submissions, 10 of them scored: each reader's hash reads stay near the scored count."""
    spec = fixed.demo_spec()
    for i in range(5):
        teams.add_team(r, f"team{i}")
    ids = [fixed.record(r, f"s{i:017d}", f"team{i % 5}", 1_700_000_000.0 + i, spec).id for i in range(2_000)]
    for i, sid in enumerate(ids[:10]):
        transition(r, sid, SubmissionState.SCORED, score=50.0 + i, scored_at=1_700_000_500.0)
    for sid in ids[10:400]:
        transition(r, sid, SubmissionState.FAILED, failure=(FailureCause.TIME_LIMIT, "slow"))
    ensure_indexes(r)
    scored = 10

    def reads(call) -> int:
        r.config_resetstat()
        call()
        return _hash_reads(r)

    board = service.leaderboard(r, "feedback", spec.name)
    assert [row["score"] for row in board] == [59.0, 58.0, 57.0, 56.0, 55.0]
    assert reads(lambda: service.leaderboard(r, "feedback", spec.name)) <= scored + 20
    assert reads(lambda: final.final_leaderboard(r, spec.name)) <= 20
    snapshot = service.metrics_snapshot(r)
    assert snapshot["submissions"]["failed"] == 390 and snapshot["failures"]["time_limit"] == 390
    assert snapshot["submissions"]["queued"] == 1_600 and snapshot["submissions"]["scored"] == scored
    assert reads(lambda: service.metrics_snapshot(r)) <= 20
    # rescore_all: the artifacts are not stored, so each scored one is refused, after reading only those.
    refused: list[tuple[str, str]] = []
    assert reads(lambda: refused.extend(rescore.rescore_all(r, spec, phase="feedback")[1])) <= 4 * scored + 20
    assert len(refused) == scored and all("no longer stored" in why for _, why in refused)


def test_best_by_team_breaks_ties_by_the_earlier_upload(r):
    spec = fixed.demo_spec()
    subs = [fixed.record(r, f"s0000000aaaaaaaaa{i}", "alpha", 1_700_000_000.0 + i, spec) for i in range(3)]
    for sub, score in zip(subs, (70.0, 80.0, 80.0), strict=True):
        transition(r, sub.id, SubmissionState.SCORED, score=score)
    best = best_by_team(load_submissions(r, [s.id for s in subs]))
    assert best["alpha"].id == subs[1].id


def test_a_stored_study_carries_its_normalized_score_and_the_report_uses_it(r):
    spec = fixed.demo_spec()
    sub = fixed.record(r, "s0000000aaaaaaaaa1", "alpha", 1_700_000_000.0, spec)
    problem = spec.phase("feedback").problems[0]
    baselines = versions.baselines_for(spec)
    clip, _ = versions.clip_opt(baselines, problem)
    result = StudyResult(study=0, state=StudyState.COMPLETE, losses=[[clip] * spec.batch])
    computed = versions.study_normalized(baselines, problem, result, spec.rounds)
    # A value that differs from what the losses give today (as if the baselines moved on since): the
    # report shows what was stored when the study was written, the value the running score counted.
    stored = computed - 0.125
    assert write_study(r, sub.id, 1, problem, result, stored) == 1
    assert read_studies(r, sub.id, 1, problem)[0].normalized == stored
    (row,) = [p for p in scores.report(r, sub.id)["problems"] if p["problem"] == problem]
    assert row["studies"][0]["normalized"] == stored
    assert row["normalized"] == stored
    assert row["studies"][0]["score"] == pytest.approx(100.0 * (1.0 - stored))


def test_an_old_study_record_without_a_stored_normalized_score_still_reads(r):
    spec = fixed.demo_spec()
    sub = fixed.record(r, "s0000000aaaaaaaaa1", "alpha", 1_700_000_000.0, spec)
    problem = spec.phase("feedback").problems[0]
    result = StudyResult(study=0, state=StudyState.COMPLETE, losses=[[0.0] * spec.batch])
    old_json = result.model_dump_json(exclude={"normalized"})
    assert "normalized" not in old_json
    r.hset(keys.study_results(sub.id, 1, problem), "0", old_json)  # as an older worker wrote it
    found = read_studies(r, sub.id, 1, problem)[0]
    assert found.normalized is None
    expected = versions.study_normalized(versions.baselines_for(spec), problem, found, spec.rounds)
    (row,) = [p for p in scores.report(r, sub.id)["problems"] if p["problem"] == problem]
    assert row["studies"][0]["normalized"] == expected
