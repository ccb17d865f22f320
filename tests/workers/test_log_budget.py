"""Organizer logs have a budget: a study's stderr is capped, a score version's logs together are capped
(the spec's `logs.submission_mb`), and they expire after `logs.retention_days`. On the landed code a
chatty optimizer kept 256 KiB per study for ever: 75 MiB per neurips2020 feedback submission."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest

from competition.submit import create_submission
from queue_schema import keys
from queue_schema.connection import rq_connection
from queue_schema.records import load_submission, read_job_log
from runtime.spec import SPECS_DIR, load
from workers.fair_worker import FairSimpleWorker

pytestmark = pytest.mark.usefixtures("unsafe_ok")

DEMO = SPECS_DIR / "demo.toml"

# Prints 300 KiB on stderr per suggest: past the study cap in one call.
SHOUTER = """
import sys
import bayesmark.random_search as rs
from bayesmark.abstract_optimizer import AbstractOptimizer
from bayesmark.experiment import experiment_main


class Shouter(AbstractOptimizer):
    def suggest(self, n_suggestions=1):
        for _ in range(300):
            sys.stderr.write("x" * 1023 + "\\n")
        sys.stderr.flush()
        return rs.suggest_dict([], [], self.api_config, n_suggestions=n_suggestions)

    def observe(self, X, y):
        pass


if __name__ == "__main__":
    experiment_main(Shouter)
"""


def _spec(tmp_path: Path, submission_mb: int, retention_days: float):
    # Two quick problems, three studies each: 6 x 256 KiB offered against a 1 MiB budget.
    text = DEMO.read_text().replace(
        'problems = ["DT-iris-acc", "lasso-diabetes-mae", "SVM-wine-nll", "RF-iris-acc"]\nstudies = 2',
        'problems = ["DT-iris-acc", "lasso-diabetes-mae"]\nstudies = 3',
    )
    logs = "[logs]\nstudy_kb = 256\nsubmission_mb = 16\nretention_days = 14\n"
    assert "studies = 3" in text and logs in text, "demo.toml changed: update this test's spec edit"
    text = text.replace(
        logs, f"[logs]\nstudy_kb = 256\nsubmission_mb = {submission_mb}\nretention_days = {retention_days}\n"
    )
    path = tmp_path / "demo.toml"
    path.write_text(text)
    return load(path)


def _zip(source: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("optimizer.py", source)
    return buffer.getvalue()


def test_a_chatty_optimizer_stays_within_the_submissions_log_budget_and_its_logs_expire(r, tmp_path):
    spec = _spec(tmp_path, submission_mb=1, retention_days=0.01)
    sub = create_submission(r, team="t", data=_zip(SHOUTER), spec=spec, phase="feedback", backend="process")
    FairSimpleWorker(connection=rq_connection()).work(burst=True, logging_level="WARNING")
    assert load_submission(r, sub.id).state.value == "scored"

    job_ids = sorted(r.smembers(keys.submission_jobs(sub.id, 1)))
    logs = {job: read_job_log(r, job, count=100_000) for job in job_ids}
    kept = sum(len(line) for lines in logs.values() for line in lines)
    # 6 studies x 256 KiB were kept past the per-study cap; 1 MiB is the budget of all jobs together
    # (the time stamps and the notices themselves are a few hundred bytes on top).
    assert kept <= 1024 * 1024 + 4096, kept
    assert int(r.get(keys.log_budget(sub.id, 1))) <= 1024 * 1024
    told = [job for job, lines in logs.items() if any("log budget" in line for line in lines)]
    assert told, "a job whose lines were dropped says so in its log"
    for job in job_ids:
        ttl = r.ttl(keys.job_log(job))
        assert 0 < ttl <= 864, (job, ttl)  # 0.01 days
    assert 0 < r.ttl(keys.log_budget(sub.id, 1)) <= 864
