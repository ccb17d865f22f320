"""Readers unchanged by the archive: the report, the bayesmark export, the final phase's study scores, the
console's detail and convergence, its logs, and reproduce give the same results before and after a score
version's data left Redis (runtime/archiver.py)."""

from __future__ import annotations

import filecmp
import json
import time
from pathlib import Path

import pytest

from competition import final, scores
from competition.reproduce import reproduce
from console.data import ConsoleData
from queue_schema import keys, records
from runtime import archiver
from tests.runtime.test_archiver import scored, store, two_study_spec  # noqa: F401 (fixtures)
from tests.scoring_helpers import PROBLEM

pytestmark = pytest.mark.usefixtures("unsafe_ok")


def archive(r, sid: str) -> None:
    assert archiver.archive_version(r, sid, 1, grace=0).outcome == "archived"
    assert not r.exists(keys.study_results(sid, 1, PROBLEM))
    records._load_archive.cache_clear()  # readers start cold, as a new process would


def same_tree(left: Path, right: Path) -> bool:
    """Byte-identical directory trees."""
    compared = filecmp.dircmp(left, right)
    if compared.left_only or compared.right_only or compared.funny_files:
        return False
    _, mismatch, errors = filecmp.cmpfiles(left, right, compared.common_files, shallow=False)
    return not mismatch and not errors and all(same_tree(left / d, right / d) for d in compared.common_dirs)


def test_report_export_final_scores_and_console_read_the_same(r, scored, tmp_path):  # noqa: F811
    sid = scored.id
    report = json.dumps(scores.report(r, sid), sort_keys=True)
    scores.export_bayesmark(r, sid, tmp_path / "export")  # bayesmark records the folder: the same one
    (tmp_path / "export").rename(tmp_path / "before")
    study_scores = final.study_scores(r, scored.last_scored())
    r.delete(keys.study_scores(sid, 1))  # so the archiver keeps its own
    console = ConsoleData(r)
    detail = console.detail(sid)

    archive(r, sid)

    assert json.dumps(scores.report(r, sid), sort_keys=True) == report
    scores.export_bayesmark(r, sid, tmp_path / "export")
    assert same_tree(tmp_path / "before", tmp_path / "export")
    assert final.study_scores(r, scored.last_scored()) == study_scores  # kept in Redis by the archiver
    r.delete(keys.study_scores(sid, 1))
    assert final.study_scores(r, scored.last_scored()) == study_scores  # recomputed from the archive
    assert ConsoleData(r).detail(sid) == detail
    assert detail["curve"] and detail["problems"]


def test_console_logs_come_from_the_archive_with_a_notice_until_they_expire(r, scored):  # noqa: F811
    console = ConsoleData(r)
    jobs = console.job_ids(scored.id)
    before = {job: console.log_lines(job) for job in jobs}
    assert all(lines for lines, _ in before.values())
    assert all(console.log_notice(scored.id, job) is None for job in jobs)
    r.pexpire(keys.job_log(jobs[0]), 3_600_000)  # its retention ends in an hour

    archive(r, scored.id)

    assert {job: console.log_lines(job) for job in jobs} == before
    lines, last = before[jobs[1]]
    assert console.log_lines(jobs[1], last) == ([], last)  # following: nothing new
    for job in jobs:
        assert "archived on" in console.log_notice(scored.id, job)
        assert "shown from the archive" in console.log_notice(scored.id, job)
    later = ConsoleData(r, clock=lambda: time.time() + 2 * 3600)
    assert later.log_lines(jobs[0]) == ([], "-")
    notice = later.log_notice(scored.id, jobs[0])
    assert "gone" in notice and "archived on" in notice and "days" in notice
    assert later.log_lines(jobs[1]) == before[jobs[1]]  # its own retention is days away


def test_reproduce_reruns_an_archived_study(r, scored):  # noqa: F811
    stored = records.read_studies(r, scored.id, 1, PROBLEM)[0]
    archive(r, scored.id)
    outcome = reproduce(r, scored.id, PROBLEM, 0)
    assert outcome["match"] is True, outcome
    assert outcome["stored_losses"] == stored.losses
