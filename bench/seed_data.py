"""Seed data: a store filled like a competition in full swing, for the organizer console and benchmarks.

By default 3,608 submissions of 70 teams (the NeurIPS 2020 challenge's numbers), 30 jobs each (108,240):
most scored, some failed (every failure cause), a few stopped, and a tail running (part-way, RQ jobs
started by live-looking workers) and queued (real RQ jobs waiting in the team queues). Records are written
by the project's own writers (`records.save_new_submission`, `records.write_study`, `records.append_job_log`,
the event writer, `archive.store`, `teams.add_team`) so they have exactly the real shapes, with the times
they would have happened at. Those writers are handed a stand-in client that queues their commands into
one pipeline (`Deferred`), so the whole history goes in a few hundred round trips. The RQ jobs are made as
enqueue.enqueue_jobs makes them (same call, payload and options; tests/bench/test_seed_data.py compares), in
one pipeline too, and running jobs are started as an RQ worker starts them.

The competition is the demo one at the challenge's shape: 6 visible problems x 10 studies, 2 studies a job
(30 jobs, 60 studies of 8 x 4 evaluations per submission), so that the shipped demo baselines score it and
a submission's detail (per-problem and per-study results, convergence) is real. Study results are written
for the `detailed` newest scored submissions and for every running, failed and stopped one that got that
far; the others carry their counters, score versions and job sets (a full store's 200,000 studies would
take minutes to seed for nothing the console shows at once). Finished jobs' RQ records have expired (RQ
keeps them a week); running submissions' finished and started ones are there. Worker and job heartbeats
have their real TTLs: they lapse unless something refreshes them (the console benchmark does).

    python -m bench seed-data [--submissions 3608] [--teams 70] [--seed 0] [--detailed 100] [--json]
        [--redis-url URL | --state-dir DIR] [--flush]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import io
import itertools
import json
import math
import os
import random
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis
from rq import Queue
from rq.utils import utcformat

from artifacts import archive
from autoscaler.policy import Decision
from baselines import scoring
from bench.common import print_figures
from competition import audit
from competition import teams as team_records
from queue_schema import keys
from queue_schema.connection import rq_connection
from queue_schema.ids import artifact_digest, job_id, new_submission_id
from queue_schema.payloads import (
    Event,
    Failure,
    Heartbeat,
    JobHeartbeat,
    StudyResult,
    Submission,
    leaderboard_score,
)
from queue_schema.records import _event_into, append_job_log, save_new_submission, write_study
from queue_schema.states import FailureCause, StudyState, SubmissionState
from runtime import dispatch, recovery, rq_adapter, versions
from runtime import enqueue as enqueue_module
from runtime.provenance import score_provenance, scoring_packages, study_seeds
from runtime.spec import Spec, load

ROOT = Path(__file__).resolve().parent.parent
OPTIMIZER = ROOT / "tests" / "submissions" / "random_search" / "optimizer.py"

DEFAULT_SUBMISSIONS = 3608
DEFAULT_TEAMS = 70
DEFAULT_DETAILED = 100
COMPETITION_DAYS = 90
MAX_WORKERS = 24
ACTOR = "seed-data"
BACKEND = "docker"
IMAGE_DIGEST = "sha256:" + "5eed" * 16
CHATTY_LOG_LINES = 5_000  # one running job's log is full (records.JOB_LOG_MAXLEN), for the Logs view
BATCH = 5_000  # commands per round trip
RESULT_TTL_S = enqueue_module.RESULT_TTL_S
EXECUTION_TTL_S = 90
TEMPLATE_SHA256 = "0" * 64
AUTOSCALER_FLEET = "local"
AUTOSCALER_STEPS = 8
AUTOSCALER_ADD = 4  # machines a step (the provider's rate)

# Shares of the store by state (the rest is scored). Queued and running are the newest submissions.
QUEUED_SHARE = 0.035
RUNNING_SHARE = 0.01
FAILED_SHARE = 0.06
STOPPED_SHARE = 0.015

FAILURE_MESSAGES = {
    FailureCause.INVALID_SUBMISSION: "optimizer.py not found at the top level of the archive",
    FailureCause.INSTALL_FAILED: "pip could not install requirements.txt: no distribution for torch==1.4.0",
    FailureCause.OPTIMIZER_CRASHED: "suggest raised IndexError: list index out of range",
    FailureCause.TIME_LIMIT: "the optimizer used up its 60 s budget for the study",
    FailureCause.RESOURCE_LIMIT: "the optimizer exceeded its memory limit (1024 MB)",
    FailureCause.INFRASTRUCTURE: "scoring infrastructure error (RuntimeError); not charged to your quota",
}
# Causes found before any study ran.
EARLY_CAUSES = frozenset({FailureCause.INVALID_SUBMISSION, FailureCause.INSTALL_FAILED})

_ADJECTIVES = "amber azure bold brave calm clever coral crisp deep eager fast fuzzy gentle grand keen lucky"
_NOUNS = "badger bayes comet condor falcon fox gecko heron ibis jaguar kernel lynx marmot newt otter owl"

Jobs = list[tuple[str, int, list[int]]]  # (problem, chunk, studies) of every job, in queue order


def log(message: str) -> None:
    print(f"bench seed-data: {message}", file=sys.stderr, flush=True)


# -- the competition --------------------------------------------------------------------------------


def seed_spec() -> Spec:
    """The demo competition at the challenge's shape: 30 jobs per feedback submission, demo baselines."""
    demo = load("demo")
    feedback, final = demo.phase("feedback"), demo.phase("final")
    visible = (*feedback.problems, *final.problems[:2])
    return dataclasses.replace(
        demo,
        description="Seed data: the demo problems at the NeurIPS 2020 challenge's scale (30 jobs each).",
        phases={
            "feedback": dataclasses.replace(feedback, problems=visible, studies=10, studies_per_job=2),
            "final": dataclasses.replace(final, problems=final.problems[2:]),
        },
    )


def job_order(spec: Spec) -> Jobs:
    """A feedback submission's jobs in the order enqueue.enqueue_jobs queues them (longest problem first)."""
    phase = spec.phase("feedback")
    return [
        (problem, chunk, studies)
        for problem in dispatch.order_problems(spec.name, phase.problems)
        for chunk, studies in phase.chunks()
    ]


# -- the plan: who submitted what, when, and how it went ----------------------------------------------


@dataclass
class Plan:
    sid: str
    team: str
    created_at: float
    state: SubmissionState
    target: float  # the normalized score its studies aim at (0: best known, 1: random median)
    started_at: float = 0.0
    ended_at: float = 0.0
    jobs_done: int = 0  # jobs finished, in queue order
    workers: list[str] = field(default_factory=list)  # the workers running its next jobs
    cause: FailureCause | None = None
    stopped_by: str = ""
    detailed: bool = False
    sha256: str = ""


def team_names(count: int, rng: random.Random) -> list[str]:
    names = [f"{a}-{n}" for a in _ADJECTIVES.split() for n in _NOUNS.split()]
    rng.shuffle(names)
    return names[:count] + [f"team-{i:03d}" for i in range(count - len(names))]


def state_counts(n: int) -> dict[SubmissionState, int]:
    """How many submissions of each state: the shares, with at least one of each (and every failure
    cause) so that a small store has every shape too."""
    counts = {
        SubmissionState.QUEUED: max(1, round(n * QUEUED_SHARE)),
        SubmissionState.RUNNING: max(1, round(n * RUNNING_SHARE)),
        SubmissionState.STOPPED: max(1, round(n * STOPPED_SHARE)),
        SubmissionState.FAILED: max(len(FAILURE_MESSAGES), round(n * FAILED_SHARE)),
    }
    counts[SubmissionState.SCORED] = n - sum(counts.values())
    if counts[SubmissionState.SCORED] < 1:
        raise ValueError(
            f"{n} submissions cannot have every state; seed at least {n - counts[SubmissionState.SCORED] + 1}"
        )
    return counts


def plan(
    submissions: int, teams: list[str], rng: random.Random, now: float, detailed: int, jobs: int
) -> list[Plan]:
    """Every submission, oldest first, with its fate decided."""
    counts = state_counts(submissions)
    start = now - COMPETITION_DAYS * 86_400
    queued, running = counts[SubmissionState.QUEUED], counts[SubmissionState.RUNNING]
    # Activity grows towards the deadline; the active tail came in over the last two hours.
    history = sorted(
        start + (now - 3 * 3600 - start) * rng.random() ** 0.6 for _ in range(submissions - queued - running)
    )
    finished = [
        state
        for state in (SubmissionState.FAILED, SubmissionState.STOPPED, SubmissionState.SCORED)
        for _ in range(counts[state])
    ]
    rng.shuffle(finished)
    timeline = [
        *zip(history, finished, strict=True),
        *((now - 7200 + i * 3600 / running, SubmissionState.RUNNING) for i in range(running)),
        *((now - 3600 + (i + 1) * 3500 / queued, SubmissionState.QUEUED) for i in range(queued)),
    ]
    # Some teams submit a lot, some a little; each has its level and gets better over time.
    weights = [rng.lognormvariate(0, 0.8) for _ in teams]
    level = {team: rng.uniform(0.05, 0.45) for team in teams}
    causes = itertools.cycle(FAILURE_MESSAGES)  # every cause in turn
    out: list[Plan] = []
    for created, state in timeline:
        team = rng.choices(teams, weights)[0]
        progress = (created - start) / (now - start)
        target = min(0.98, max(0.0, level[team] - 0.06 * progress + rng.gauss(0, 0.04)))
        sid = new_submission_id(created)[:9] + f"{rng.getrandbits(40):010x}"  # deterministic tail
        p = Plan(sid=sid, team=team, created_at=created, state=state, target=target)
        p.started_at = created + rng.uniform(5, 300 if state == SubmissionState.RUNNING else 1200)
        if state == SubmissionState.SCORED:
            p.jobs_done = jobs
            p.ended_at = p.started_at + rng.uniform(1800, 7200)
        elif state == SubmissionState.FAILED:
            p.cause = next(causes)
            p.jobs_done = 0 if p.cause in EARLY_CAUSES else rng.randrange(jobs)
            p.ended_at = p.started_at + rng.uniform(20, 3600)
        elif state == SubmissionState.STOPPED:
            p.jobs_done = rng.randrange(jobs)
            p.stopped_by = rng.choice([team, team, "organizers"])
            p.ended_at = p.started_at + rng.uniform(60, 3600)
        elif state == SubmissionState.RUNNING:
            p.jobs_done = rng.randrange(jobs - 2)
        out.append(p)
    scored = [p for p in out if p.state == SubmissionState.SCORED]
    for p in scored[len(scored) - detailed :] if detailed > 0 else []:
        p.detailed = True
    for p in out:
        if (
            p.state in (SubmissionState.RUNNING, SubmissionState.FAILED, SubmissionState.STOPPED)
            and p.jobs_done
        ):
            p.detailed = True
    # Busy workers run the next jobs of the running submissions (round-robin, as the fleet takes them).
    active = [p for p in out if p.state == SubmissionState.RUNNING]
    for i in range(min(MAX_WORKERS, len(active))):
        active[i % len(active)].workers.append(f"worker-{i:02d}")
    return out


# -- writing ----------------------------------------------------------------------------------------


class Deferred:
    """Stands in for a client so that the project's writers queue their commands into one pipeline, sent
    every BATCH commands. Every command answers 1 at once: the writers handed this only look at a reply
    to learn whether their write was the first (write_study, archive.store), which in an empty store it
    is. `pipeline()` is itself and `execute()` does nothing, so writers that batch on their own batch here."""

    def __init__(self, r: redis.Redis) -> None:
        self._pipe = r.pipeline(transaction=False)

    def pipeline(self, transaction: bool = True) -> Deferred:
        return self

    def __enter__(self) -> Deferred:  # `with r.pipeline() as pipe:` in a writer
        return self

    def __exit__(self, *_: object) -> None:
        pass

    def execute(self) -> list[Any]:
        return []

    def __getattr__(self, name: str) -> Any:
        command = getattr(self._pipe, name)

        def queued(*args: Any, **kwargs: Any) -> int:
            command(*args, **kwargs)
            if len(self._pipe) >= BATCH:
                self._pipe.execute()
            return 1

        return queued

    @property
    def raw(self) -> redis.client.Pipeline:
        """The pipeline itself, for libraries that take one (RQ)."""
        return self._pipe

    def flush(self) -> None:
        if len(self._pipe):
            self._pipe.execute()


@contextlib.contextmanager
def bulk_load(r: redis.Redis) -> Iterator[None]:
    """While seeding, let the store fsync its append-only file once a second instead of at every write
    (the embedded store's `always`), and put the policy back afterwards. A server that refuses CONFIG is
    left as it is."""
    try:
        before = r.config_get("appendfsync").get("appendfsync")
    except redis.ResponseError:
        before = None
    if before == "always":
        r.config_set("appendfsync", "everysec")
    try:
        yield
    finally:
        if before == "always":
            r.config_set("appendfsync", "always")


@dataclass
class Seeder:
    out: Deferred  # our keys (str client)
    rq: Deferred  # RQ's keys (bytes client)
    spec: Spec
    baselines: Any
    jobs: Jobs
    rng: random.Random
    now: float
    spec_hash: str = ""  # the spec's hash, computed once
    provenance: str = ""  # JSON of a scored version's provenance, artifact TEMPLATE_SHA256
    events: list[Event] = field(default_factory=list)
    figures: dict[str, int] = field(default_factory=dict)
    checked: archive.Artifact | None = None  # the first upload, through intake's checks

    def count(self, name: str, n: int = 1) -> None:
        self.figures[name] = self.figures.get(name, 0) + n

    def event(self, when: float, kind: str, sid: str | None, /, **data: Any) -> None:
        self.events.append(Event(kind=kind, submission_id=sid, ts=when, data=data))

    def moved(self, when: float, sid: str, old: SubmissionState, new: SubmissionState, **extra: Any) -> None:
        """The event `records.transition` writes."""
        self.event(when, "state", sid, **{"from": old.value, "to": new.value, "version": 1, **extra})

    # -- pieces ------------------------------------------------------------------------------------

    def artifact(self, p: Plan) -> None:
        """A distinct starter-kit zip per submission (teams tweak their optimizer between uploads). The
        first is checked as intake checks uploads; the rest differ from it only in a VERSION file."""
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
            stamp = (2020, 7, 10, 0, 0, 0)
            zf.writestr(zipfile.ZipInfo("optimizer.py", stamp), OPTIMIZER.read_bytes())
            zf.writestr(zipfile.ZipInfo("VERSION", stamp), f"{p.team} {p.sid}\n")
        data = buffer.getvalue()
        if self.checked is None:
            self.checked = archive.check(data, self.spec.submission)
        files, unpacked = self.checked.files, self.checked.unpacked_bytes
        artifact = archive.Artifact(artifact_digest(data), data, files, unpacked)
        p.sha256 = artifact.sha256
        archive.store(self.out, artifact)

    def record(
        self, p: Plan, state: SubmissionState, studies_done: int = 0, norm_sum: float = 0.0
    ) -> Submission:
        """The submission record as the real transitions leave it in `state`."""
        progress = enqueue_module.phase_progress(self.spec, "feedback")
        progress.studies_done = studies_done
        progress.evals_done = studies_done * self.spec.evals_per_study
        terminal = state in (SubmissionState.SCORED, SubmissionState.FAILED, SubmissionState.STOPPED)
        return Submission(
            id=p.sid,
            team=p.team,
            state=state,
            artifact_sha256=p.sha256,
            spec_name=self.spec.name,
            spec_hash=self.spec_hash,
            phase="feedback",
            baseline_version=self.baselines.version,
            created_at=p.created_at,
            updated_at={SubmissionState.QUEUED: p.created_at, SubmissionState.RUNNING: p.started_at}.get(
                state, p.ended_at
            ),
            # A transition records the running score the counters give at that moment.
            partial_score=leaderboard_score(norm_sum / studies_done) if terminal and studies_done else None,
            failure=Failure(cause=p.cause, message=FAILURE_MESSAGES[p.cause]) if p.cause else None,
            progress=progress,
            charged=p.cause != FailureCause.INFRASTRUCTURE,
            backend=BACKEND,
        )

    def study(self, p: Plan, problem: str, study: int, when: float) -> StudyResult:
        return study_result(self.rng, self.spec, self.baselines, problem, study, p.target, when)

    def studies(self, p: Plan, count: int) -> tuple[dict[str, list[StudyResult]], float]:
        """Write the first `count` studies in job order through the real write-once script (which moves
        the live counters) with their events; returns the results and the sum of their normalized scores."""
        written: dict[str, list[StudyResult]] = {}
        norm_sum = 0.0
        span = max(60.0, (p.ended_at or self.now) - p.started_at)
        for index, (problem, study) in enumerate((pr, st) for pr, _, sts in self.jobs for st in sts):
            if index >= count:
                break
            when = p.started_at + span * (index + 1) / (count + 1)
            result = self.study(p, problem, study, when)
            normalized = versions.study_normalized(self.baselines, problem, result, self.spec.rounds)
            write_study(self.out, p.sid, 1, problem, result, normalized, announce=False)
            norm_sum += normalized
            self.event(
                when, "study", p.sid, problem=problem, study=study, state=result.state.value, version=1
            )
            written.setdefault(problem, []).append(result)
        self.count("studies_written", count)
        return written, norm_sum

    def job_log(
        self,
        p: Plan,
        jid: str,
        problem: str,
        studies: list[int],
        worker: str,
        done: int,
        extra: Sequence[str] = (),
    ) -> None:
        """The organizer-only log of a job that ran, as workers/joblog.py writes it."""
        t = p.started_at
        stamp = time.strftime("%H:%M:%S", time.gmtime(t))
        lines = [f"{stamp} [harness] {problem}: studies {studies}, {len(studies)} to run on {worker}"]
        for study in studies[:done]:
            t += self.rng.uniform(20, 300)
            stamp = time.strftime("%H:%M:%S", time.gmtime(t))
            lines.append(f"{stamp} /opt/optimizer/optimizer.py:41: UserWarning: suggesting from the prior")
            lines.append(
                f"{stamp} [harness] study {study} complete: {self.spec.rounds} rounds, "
                f"optimizer {self.rng.uniform(1, 40):.1f} s, objective {self.rng.uniform(0.2, 6):.1f} s"
            )
        if p.cause is not None and done < len(studies):
            lines.append(f"{stamp} [harness] fatal in study {studies[done]}: {FAILURE_MESSAGES[p.cause]}")
        append_job_log(self.out, jid, lines + list(extra))
        self.count("job_logs")


def study_result(
    rng: random.Random, spec: Spec, baselines: Any, problem: str, study: int, target: float, when: float
) -> StudyResult:
    """One study's result as a worker writes it, its losses closing in on `target` (normalized)."""
    clip, opt = versions.clip_opt(baselines, problem)
    losses = _losses(rng, target, clip, opt, spec.rounds, spec.batch)
    cut = rng.random() < 0.02
    if cut:
        losses = losses[: rng.randrange(1, spec.rounds)]
    return StudyResult(
        study=study,
        state=StudyState.CUT_OFF if cut else StudyState.COMPLETE,
        losses=[[StudyResult.encode_loss(v) for v in round_] for round_ in losses],
        suggest_time_s=round(rng.uniform(0.5, 40.0), 3),
        eval_time_s=round(rng.uniform(0.2, 6.0), 3),
        cut_off_reason="suggest took 21.4 s, over the 20 s call timeout" if cut else None,
        worker=f"bbo-worker-{rng.randrange(MAX_WORKERS):02d}:{rng.randrange(1000, 60000)}",
        backend=BACKEND,
        image_digest=IMAGE_DIGEST,
        sandbox={"backend": BACKEND, "image_digest": IMAGE_DIGEST, "network": "none"},
        packages=scoring_packages(),
        seeds=_seeds(problem, study),
        finished_at=when,
    )


@functools.cache
def _seeds(problem: str, study: int) -> dict[str, Any]:
    return study_seeds(problem, study)  # the same for every team: computed once per study


def _losses(
    rng: random.Random, target: float, clip: float, opt: float, rounds: int, batch: int
) -> list[list[float]]:
    """Rounds of a study's visible losses whose best-so-far closes in on `target` (normalized)."""
    final = min(1.0, max(-0.2, target + rng.gauss(0, 0.08)))
    out = []
    for k in range(rounds):
        level = final + (1.0 - final) * math.exp(-3.0 * k / rounds)
        out.append([opt + (clip - opt) * (level + abs(rng.gauss(0, 0.15))) for _ in range(batch)])
    out[-1][rng.randrange(batch)] = opt + (clip - opt) * final
    return out


def seed_finished(s: Seeder, p: Plan) -> None:
    """A scored, failed or stopped submission: record, counters, score version, job sets, logs, events."""
    studies_done = sum(len(studies) for _, _, studies in s.jobs[: p.jobs_done])
    ids = [job_id(p.sid, 1, problem, chunk) for problem, chunk, _ in s.jobs]
    written: dict[str, list[StudyResult]] = {}
    norm_sum = p.target * studies_done
    if p.detailed and studies_done:
        save_new_submission(s.out, s.record(p, SubmissionState.QUEUED))
        written, norm_sum = s.studies(p, studies_done)
    sub = s.record(p, p.state, studies_done, norm_sum)
    if p.state == SubmissionState.SCORED:
        if written:
            losses = {
                problem: [
                    [[StudyResult.decode_loss(v) for v in round_] for round_ in r.losses] for r in found
                ]
                for problem, found in written.items()
            }
            sub.score = scoring.score_problems_formula(losses, s.baselines, s.spec.rounds).score
            provenance = json.dumps(score_provenance(sub, s.spec, s.baselines, written), sort_keys=True)
        else:
            sub.score = leaderboard_score(p.target)
            provenance = s.provenance.replace(TEMPLATE_SHA256, p.sha256)
        sub.scored_at = p.ended_at
        # What versions.finalize_if_complete writes.
        s.out.hset(
            keys.score_version(p.sid, 1),
            mapping={
                "score": repr(sub.score),
                "spec_hash": s.spec_hash,
                "baseline_version": sub.baseline_version,
                "scored_at": repr(p.ended_at),
                "provenance": provenance,
            },
        )
    if written:
        s.out.hset(keys.submission(p.sid), mapping={"record": sub.to_json(), "state": sub.state.value})
    else:
        save_new_submission(s.out, sub)
        if studies_done:  # what the write-once script would have counted
            s.out.hset(
                keys.submission(p.sid),
                mapping={
                    "studies_done": str(studies_done),
                    "evals_done": str(studies_done * s.spec.evals_per_study),
                    "norm_sum": repr(norm_sum),
                    "norm_count": str(studies_done),
                },
            )
    s.out.sadd(keys.submission_jobs(p.sid, 1), *ids)
    if p.jobs_done:
        s.out.sadd(keys.problems_done(p.sid, 1), *(f"{pr}#{ch}" for pr, ch, _ in s.jobs[: p.jobs_done]))
    s.count("jobs", len(ids))
    s.count("jobs_finished", p.jobs_done)
    submitted(s, p)
    s.moved(p.started_at, p.sid, SubmissionState.QUEUED, SubmissionState.RUNNING)
    if p.state == SubmissionState.FAILED:
        extra = {"cause": p.cause.value, "message": FAILURE_MESSAGES[p.cause]}
        s.moved(p.ended_at, p.sid, SubmissionState.RUNNING, p.state, **extra)
    else:
        s.moved(p.ended_at, p.sid, SubmissionState.RUNNING, p.state)
    if p.state == SubmissionState.STOPPED:
        cancelled = len(ids) - p.jobs_done - 1
        s.event(p.ended_at, "stop", p.sid, by=p.stopped_by, cancelled_jobs=cancelled, version=1)
        if p.stopped_by == "organizers":
            audit.record(s.out, "stop", p.sid, actor=ACTOR, team=p.team, cancelled=cancelled, version=1)
    if p.detailed:
        # The logs of the jobs that ran (the one that failed or was stopped too).
        ran = p.jobs_done + (p.state != SubmissionState.SCORED and p.cause not in EARLY_CAUSES)
        for index, (problem, _, studies) in enumerate(s.jobs[:ran]):
            done = len(studies) if index < p.jobs_done else 0
            s.job_log(p, ids[index], problem, studies, "worker-00", done)


def submitted(s: Seeder, p: Plan) -> None:
    s.event(
        p.created_at, "submitted", p.sid, team=p.team, phase="feedback", spec=s.spec.name, sha256=p.sha256
    )


def enqueue(s: Seeder, sub: Submission) -> list[Any]:
    """enqueue.enqueue_jobs's RQ jobs (same function, payload, id, timeout, TTLs, retries, callback and
    description, in the team's queue), enqueued in one pipeline rather than a round trip per call."""
    queue = Queue(dispatch.team_queue(s.out, sub.team), connection=rq_connection())
    data = [
        Queue.prepare_data(**enqueue_module.job_options(sub, s.spec, problem, chunk, studies, BACKEND))
        for problem, chunk, studies in s.jobs
    ]
    jobs = queue.enqueue_many(data, pipeline=s.rq.raw)
    s.out.sadd(keys.submission_jobs(sub.id, sub.score_version), *(job.id for job in jobs))
    s.count("jobs", len(jobs))
    return jobs


def seed_active(s: Seeder, p: Plan) -> None:
    """A queued or running submission, enqueued; a running one's first jobs finished and its next ones
    started by workers, as RQ and our workers leave them."""
    queued = s.record(p, SubmissionState.QUEUED)
    save_new_submission(s.out, queued)
    submitted(s, p)
    jobs = enqueue(s, queued)
    if p.state == SubmissionState.QUEUED:
        s.count("jobs_queued", len(jobs))
        s.rq.flush()
        return
    s.moved(p.started_at, p.sid, SubmissionState.QUEUED, SubmissionState.RUNNING)
    running = s.record(p, SubmissionState.RUNNING)
    s.out.hset(keys.submission(p.sid), mapping={"record": running.to_json(), "state": running.state.value})
    studies_done = sum(len(studies) for _, _, studies in s.jobs[: p.jobs_done])
    if studies_done:
        s.studies(p, studies_done)
    pipe = s.rq.raw
    ended = utcformat(datetime.fromtimestamp(s.now - 60, UTC))
    for job, (problem, chunk, studies) in zip(jobs[: p.jobs_done], s.jobs, strict=False):
        rq_adapter.record_finished(
            rq_connection(), pipe, job, ended, RESULT_TTL_S, {"status": "done", "finalized": False}
        )
        s.out.sadd(keys.problems_done(p.sid, 1), f"{problem}#{chunk}")
        s.job_log(p, job.id, problem, studies, p.workers[0] if p.workers else "worker-00", len(studies))
    s.count("jobs_finished", p.jobs_done)
    for offset, worker in enumerate(p.workers):
        index = p.jobs_done + offset
        job = jobs[index]
        problem, _, studies = s.jobs[index]
        rq_adapter.record_started(rq_connection(), pipe, job, worker, EXECUTION_TTL_S)
        beat_worker(s.out, worker, job.id, studies[0], s.now)
        extra: list[str] = []
        if not s.figures.get("full_logs"):
            stamp = time.strftime("%H:%M:%S", time.gmtime(s.now))
            extra = [f"{stamp} iteration {i}: best so far {1 / (i + 1):.6f}" for i in range(CHATTY_LOG_LINES)]
            s.count("full_logs")
        s.job_log(p, job.id, problem, studies, worker, 0, extra)
        s.count("jobs_started")
    s.count("jobs_queued", len(jobs) - p.jobs_done - len(p.workers))
    s.rq.flush()


def beat_worker(out: Any, worker: str, jid: str, study: int, now: float | None = None) -> None:
    """A busy worker's heartbeat and its job's, as workers/heartbeat.py writes them (with their TTLs)."""
    now = time.time() if now is None else now
    index = int(worker.rsplit("-", 1)[-1])
    host = f"bbo-{worker}"
    job_beat = JobHeartbeat(
        job_id=jid, worker=worker, host=host, pid=5000 + index, study=study, started_at=now - 60, ts=now
    )
    out.set(keys.job_heartbeat(jid), job_beat.to_json(), ex=recovery.JOB_HEARTBEAT_TTL_S)
    beat = Heartbeat(
        worker=worker,
        host=host,
        pid=4000 + index,
        state="busy",
        current_job=jid,
        backend=BACKEND,
        started_at=now - 86_400,
        ts=now,
    )
    out.hset(keys.heartbeat(worker), mapping={"json": beat.to_json(), "job": jid})
    out.expire(keys.heartbeat(worker), recovery.WORKER_HEARTBEAT_TTL_S)
    out.zadd(keys.heartbeats_index(), {worker: beat.ts})


def seed_autoscaler(s: Seeder, workers: int, queued_jobs: int) -> None:
    """The local fleet's autoscaler: its scale-ups over the last hour up to the cap and its last step's
    status, as autoscaler/daemon.py records them (events of kind "autoscaler", the status hash)."""
    up = 0
    data: dict[str, Any] = {}
    for step in range(AUTOSCALER_STEPS):
        add = min(AUTOSCALER_ADD, workers - up) if step < AUTOSCALER_STEPS - 1 else 0
        wanted = queued_jobs + up
        reason = (
            f"{wanted} jobs want {wanted} workers, {up} up: adding {add}"
            if add
            else f"{wanted} jobs want {wanted} workers: at the cap of {workers}"
        )
        decision = Decision(add=add, drain=(), reason=reason, held=not add).to_dict()
        if "kind" in decision:  # the decision's kind, in the policy's words
            decision["kind"] = "add" if add else "hold-cap"
        data = {
            **decision,
            "queued": queued_jobs,
            "running": up,
            "workers": {"booting": add, "idle": 0, "busy": up, "draining": 0},
            "machine_hours": round(up * step * 0.1, 6),
            "created": [f"worker-{i:02d}" for i in range(up, up + add)],
            "drained": [],
            "deleted": [],
            "requeued": [],
            "error": None,
            "dry_run": False,
            "provider": "docker",
            "fleet": AUTOSCALER_FLEET,
        }
        s.event(s.now - 3600 + step * 3600 / AUTOSCALER_STEPS, "autoscaler", None, **data)
        up += add
    status = {name: json.dumps(value) for name, value in data.items()}
    status["ts"] = json.dumps(s.now)
    s.out.hset(keys.autoscaler_status(AUTOSCALER_FLEET), mapping=status)
    s.out.sadd(keys.autoscaler_fleets(), AUTOSCALER_FLEET)


def _same_server(r: redis.Redis) -> None:
    """RQ's client (queue_schema.connection, from BBO_REDIS_URL) must reach the store being seeded."""
    probe = f"bbo:seed-data:probe:{os.getpid()}:{time.monotonic_ns()}"
    r.set(probe, "1", ex=60)
    try:
        if rq_connection().get(probe) != b"1":
            raise ValueError("seed: BBO_REDIS_URL must point at the Redis being seeded (RQ jobs go there)")
    finally:
        r.delete(probe)


def _provenance(s: Seeder) -> dict[str, Any]:
    """A scored version's provenance as finalize stores it (for the scored submissions seeded without
    studies: they share this one, with their own artifact)."""
    sample = Plan(
        sid="s-template", team="template", created_at=s.now, state=SubmissionState.SCORED, target=0.2
    )
    studies: dict[str, list[StudyResult]] = {}
    for problem, _, indices in s.jobs:
        for study in indices:
            studies.setdefault(problem, []).append(s.study(sample, problem, study, s.now))
    record = s.record(sample, SubmissionState.SCORED)
    return json.dumps(score_provenance(record, s.spec, s.baselines, studies), sort_keys=True)


def seed(
    r: redis.Redis,
    submissions: int = DEFAULT_SUBMISSIONS,
    teams: int = DEFAULT_TEAMS,
    seed: int = 0,
    *,
    detailed: int = DEFAULT_DETAILED,
    now: float | None = None,
) -> dict[str, Any]:
    """Fill `r`, an empty store that BBO_REDIS_URL reaches too (RQ's client), with a competition in full
    swing; the same `seed` and `now` give the same data. Returns counts, `seconds`, `used_memory_mb` and
    `tokens` (team -> bearer token)."""
    started = time.perf_counter()
    _same_server(r)
    spec = seed_spec()
    baselines = versions.baselines_for(spec, required=spec.phase("feedback").problems)
    r.set(keys.spec(spec.hash), spec.to_json())
    rng = random.Random(seed)
    now = time.time() if now is None else now
    names = team_names(teams, rng)
    tokens = {name: team_records.add_team(r, name, actor=ACTOR) for name in names}
    jobs = job_order(spec)
    plans = plan(submissions, names, rng, now, detailed, len(jobs))
    s = Seeder(
        out=Deferred(r),
        rq=Deferred(rq_connection()),
        spec=spec,
        baselines=baselines,
        jobs=jobs,
        rng=rng,
        now=now,
    )
    s.spec_hash = spec.hash
    s.provenance = _provenance(s)
    for index, p in enumerate(plans, start=1):
        s.artifact(p)
        if p.state in (SubmissionState.QUEUED, SubmissionState.RUNNING):
            seed_active(s, p)
        else:
            seed_finished(s, p)
        if index % 1000 == 0:
            log(f"{index}/{len(plans)} submissions planned")
    s.rq.flush()
    seed_autoscaler(s, s.figures.get("jobs_started", 0), s.figures.get("jobs_queued", 0))
    # The global stream in the order things happened (each submission's own stream follows).
    for event in sorted(s.events, key=lambda e: e.ts):
        _event_into(s.out, event)
    s.out.flush()
    # Records were written in bulk, past the store's indexes: the first read rebuilds them.
    s.out.delete(keys.index_built())
    return {
        "submissions": len(plans),
        "teams": len(names),
        "states": {state.value: sum(p.state == state for p in plans) for state in SubmissionState},
        "failures": {cause.value: sum(p.cause == cause for p in plans) for cause in FailureCause},
        "jobs": s.figures.get("jobs", 0),
        "jobs_queued": s.figures.get("jobs_queued", 0),
        "jobs_started": s.figures.get("jobs_started", 0),
        "jobs_finished": s.figures.get("jobs_finished", 0),
        "jobs_per_submission": len(jobs),
        "studies_written": s.figures.get("studies_written", 0),
        "detailed_submissions": sum(p.detailed for p in plans),
        "events": len(s.events),
        "job_logs": s.figures.get("job_logs", 0),
        "workers": s.figures.get("jobs_started", 0),
        "spec": spec.name,
        "spec_hash": spec.hash,
        "seed": seed,
        "seconds": round(time.perf_counter() - started, 2),
        "used_memory_mb": round(int(r.info("memory")["used_memory"]) / 2**20, 1),
        "tokens": tokens,
    }


# -- command line -----------------------------------------------------------------------------------


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench seed-data", description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    parser.add_argument("--submissions", type=int, default=DEFAULT_SUBMISSIONS)
    parser.add_argument("--teams", type=int, default=DEFAULT_TEAMS)
    parser.add_argument("--seed", type=int, default=0, help="same seed, same data (ids, scores, states)")
    parser.add_argument(
        "--detailed", type=int, default=DEFAULT_DETAILED, help="newest scored submissions with study results"
    )
    parser.add_argument("--redis-url", default=None, help="the store to fill (default: BBO_REDIS_URL)")
    parser.add_argument("--state-dir", default=None, help="without a Redis URL: a new embedded store here")
    parser.add_argument("--flush", action="store_true", help="empty the store first (else it must be empty)")
    args = parser.parse_args(argv)
    if args.submissions < 1 or args.teams < 1:
        parser.error("--submissions and --teams must be positive")

    from queue_schema.connection import connect, reset_clients
    from runtime.redis_server import EmbeddedRedis

    url = args.redis_url or os.environ.get("BBO_REDIS_URL")
    server = None
    if not url:
        state = Path(args.state_dir or tempfile.mkdtemp(prefix="bbo-seed-")).resolve()
        os.environ["BBO_STATE_DIR"] = str(state)
        server = EmbeddedRedis()
        server.start()
        url = server.url
    os.environ["BBO_REDIS_URL"] = url
    reset_clients()
    try:
        r = connect(url)
        if args.flush:
            r.flushall()
        elif r.dbsize():
            raise SystemExit(f"bench seed-data: the store at {url} is not empty (--flush empties it)")
        with bulk_load(r):
            figures = seed(r, args.submissions, args.teams, args.seed, detailed=args.detailed)
    except ValueError as exc:
        raise SystemExit(f"bench seed-data: {exc}") from None
    finally:
        if server is not None:
            server.stop()  # SHUTDOWN writes the append-only file: the next `bbo` command starts from it
    figures.pop("tokens")
    figures["redis_url"] = url
    if server is not None:
        figures["state_dir"] = os.environ["BBO_STATE_DIR"]
        log(f"done; look at it with: BBO_STATE_DIR={figures['state_dir']} bbo admin console")
    print_figures(figures, args.json, width=22)
