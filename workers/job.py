"""The RQ job: score one problem (a chunk of its studies) of one score version of a submission.

Each study runs in a fresh sandbox; the next study's sandbox starts while the current one runs, so its
start-up cost is hidden. The first study's is hidden too where the work horse holds a warm sandbox of the
same backend and limits (workers/warm_slot.py), started while the worker waited for this job: the job
hands it the submission instead of starting one. A result is written once under its study index, so a
retried job skips finished studies and nothing is counted twice. A fatal optimizer error fails the
whole submission and cancels its other jobs; a stop (or that failure) seen by the watcher kills the
running sandbox within a second.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rq import get_current_job

from artifacts import archive
from queue_schema import keys
from queue_schema.connection import connect, rq_connection
from queue_schema.payloads import ScoreJob
from queue_schema.records import finished_study_indices, load_submission, transition, write_study
from queue_schema.settings import state_dir
from queue_schema.states import FailureCause, SubmissionState
from runtime import lifecycle, versions
from runtime.spec import Spec, stored_spec
from workers import warm_slot
from workers.failures import is_ours
from workers.harness import FatalOptimizerError, SandboxInfrastructureError, run_one_study
from workers.heartbeat import JobBeat, dying_with_parent
from workers.joblog import JobLog
from workers.optimizer_process import OptimizerProcess
from workers.sandbox import select
from workers.sandbox.base import InstallFailed, SandboxBackend, SandboxUnavailable

WATCH_INTERVAL_S = 0.5
# A sandbox backend that is not there (the container engine restarting) is waited for this long, polling,
# before the job gives up: RQ retries a failed job at once, so without the wait every retry would fail
# the same way within seconds and the submission would fail over an outage of a minute.
SANDBOX_WAIT_S = 300.0
SANDBOX_POLL_S = 5.0


def _prepare_objective(spec: Spec, problem: str) -> None:
    # Off the job's path: a failure here (an environment that cannot be built, a process that dies) is met
    # again by the study itself, which reports it as the platform's.
    with contextlib.suppress(Exception):
        spec.suite_set.of(problem).prepare(problem)


def score_problem(payload: dict[str, Any]) -> dict[str, Any]:
    """RQ entry point (enqueued by name: 'workers.job.score_problem')."""
    return ProblemRun(ScoreJob.model_validate(payload)).run()


class ProblemRun:
    def __init__(self, job: ScoreJob) -> None:
        self.job = job
        self.r = connect()
        current = get_current_job()
        self.job_id = current.id if current else f"{job.submission_id}-local"
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        # The reaper requeues a started job whose heartbeat stops (runtime/recovery.py).
        self.beat = JobBeat(self.r, self.job_id, current.worker_name if current else None)
        self.log = JobLog(self.r, self.job_id)
        self._stop = threading.Event()
        self._procs: list[OptimizerProcess] = []
        self._lock = threading.Lock()

    # -- main -------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        job = self.job
        sub = load_submission(self.r, job.submission_id)
        if (
            sub is None
            or sub.score_version != job.score_version
            or sub.state
            in (
                SubmissionState.STOPPED,
                SubmissionState.FAILED,
            )
        ):
            return {"status": "skipped"}
        spec = stored_spec(self.r, job.spec_hash)
        if spec is None:
            raise RuntimeError(f"spec {job.spec_hash} is not in the store")
        # The objective's side (an objective process of the problem's suite) starts while the sandbox does.
        threading.Thread(target=_prepare_objective, args=(spec, job.problem), daemon=True).start()
        self.log.limit(
            keys.log_budget(job.submission_id, job.score_version),
            spec.logs.submission_mb * 1024 * 1024,
            spec.logs.retention_days * 86_400,
        )
        transition(
            self.r,
            job.submission_id,
            SubmissionState.RUNNING,
            version=job.score_version,
            only_from=[SubmissionState.QUEUED],
        )
        done = finished_study_indices(self.r, job.submission_id, job.score_version, job.problem)
        pending = [s for s in job.studies if s not in done]
        self.log(f"[harness] {job.problem}: studies {job.studies}, {len(pending)} to run on {self.worker}")
        watcher = threading.Thread(target=self._watch, daemon=True)
        watcher.start()
        try:
            if pending:
                outcome = self._run_studies(spec, pending)
                if outcome is not None:
                    return outcome
        finally:
            self._stop.set()
            self._kill_all()
            self.log.flush()
        return self._problem_finished(spec)

    def _sandbox_when_ready(self, name: str) -> SandboxBackend | None:
        """The sandbox backend, waited for up to SANDBOX_WAIT_S while it is unavailable (the job keeps
        beating meanwhile); None if the submission was stopped while waiting."""
        deadline = time.monotonic() + SANDBOX_WAIT_S
        told = False
        while True:
            try:
                return select(name)
            except SandboxUnavailable as exc:
                if time.monotonic() >= deadline:
                    raise
                if not told:
                    self.log(f"[harness] sandbox unavailable, waiting up to {SANDBOX_WAIT_S:g} s: {exc}")
                    told = True
            if self._stop.wait(SANDBOX_POLL_S):
                return None

    def _run_studies(self, spec: Spec, pending: list[int]) -> dict[str, Any] | None:
        job = self.job
        workdir = state_dir() / "work" / f"{self.job_id}-{os.getpid()}"
        warm = warm_slot.take(job.backend, spec.limits)
        try:
            backend = warm.backend if warm is not None else self._sandbox_when_ready(job.backend)
            if backend is None:
                return {"status": "stopped"}
            data = archive.fetch(rq_connection(), job.artifact_sha256)
            with self._teams_bytes(FailureCause.INVALID_SUBMISSION, "the archive could not be unpacked"):
                submission_dir = archive.extract(data, workdir / "submission", spec.submission)
            with self._teams_bytes(FailureCause.INSTALL_FAILED, "the bundled requirements did not install"):
                backend.prepare(submission_dir, spec.limits)
            describe = backend.describe()
            baselines = versions.baselines_or_none(spec)

            def launch() -> OptimizerProcess:
                # The sandbox dies with this horse, which dies with its worker (workers/heartbeat.py).
                launched = dying_with_parent(backend.launch(submission_dir, spec.limits))
                proc = OptimizerProcess(launched, log=self.log, stderr_cap_bytes=spec.logs.study_kb * 1024)
                with self._lock:
                    self._procs.append(proc)
                return proc.start()

            upcoming = (self._adopt(warm, submission_dir) if warm is not None else None) or launch()
            warm = None
            for position, study in enumerate(pending):
                if self._stop.is_set():
                    return {"status": "stopped"}
                self.beat.study = study
                proc = upcoming
                upcoming = launch() if position + 1 < len(pending) else None
                try:
                    with self._teams_bytes(
                        FailureCause.OPTIMIZER_CRASHED, "the optimizer's output could not be handled"
                    ):
                        result = run_one_study(
                            proc, job.problem, study, spec, describe, self.log, close_later=True
                        )
                except SandboxInfrastructureError as lost:
                    # An ordinary exception: RQ retries the job, which resumes at this study.
                    raise RuntimeError(str(lost)) from None
                except FatalOptimizerError as fatal:
                    if self._stop.is_set():
                        return {"status": "stopped"}
                    self.log(f"[harness] fatal in study {study}: {fatal}")
                    lifecycle.fail(self.r, job.submission_id, job.score_version, fatal.cause, fatal.message)
                    return {"status": "failed", "cause": fatal.cause.value}
                if self._stop.is_set():
                    return {"status": "stopped"}
                result.worker = self.worker
                normalized = versions.study_normalized(baselines, job.problem, result, spec.rounds)
                write_study(self.r, job.submission_id, job.score_version, job.problem, result, normalized)
                self.log(
                    f"[harness] study {study} {result.state.value}: {len(result.losses)} rounds, "
                    f"optimizer {result.suggest_time_s:.1f} s, objective {result.eval_time_s:.1f} s"
                )
            return None
        except archive.InvalidSubmission as exc:
            lifecycle.fail(
                self.r, job.submission_id, job.score_version, FailureCause.INVALID_SUBMISSION, str(exc)
            )
            return {"status": "failed", "cause": FailureCause.INVALID_SUBMISSION.value}
        except InstallFailed as exc:
            self.log(f"[harness] install failed: {exc}")
            lifecycle.fail(
                self.r, job.submission_id, job.score_version, FailureCause.INSTALL_FAILED, str(exc)
            )
            return {"status": "failed", "cause": FailureCause.INSTALL_FAILED.value}
        except FatalOptimizerError as fatal:  # an unclassified failure while unpacking or installing
            lifecycle.fail(self.r, job.submission_id, job.score_version, fatal.cause, fatal.message)
            return {"status": "failed", "cause": fatal.cause.value}
        finally:
            if warm is not None:  # taken, never handed the submission (a failure before the first study)
                warm.proc.kill()
            shutil.rmtree(workdir, ignore_errors=True)

    def _adopt(self, warm: warm_slot.WarmSandbox, submission_dir: Path) -> OptimizerProcess | None:
        """The warm sandbox, handed this job's submission (prepared by its backend), as the first study's
        sandbox; None, with it closed, when it cannot take it or was lost: a cold one starts instead."""
        proc = warm.proc
        with self._lock:
            self._procs.append(proc)
        for line in warm.early:
            self.log(line)
        try:
            if proc.load(submission_dir, log=self.log):
                self.log(f"[harness] the first study takes the warm {warm.backend.name} sandbox")
                return proc
            self.log("[harness] the warm sandbox cannot take this submission (its bundle shadows a preload)")
        except Exception as exc:  # noqa: BLE001 - ours (its files, its pipe): the cold start is the fallback
            self.log(
                f"[harness] the warm sandbox was lost ({type(exc).__name__}: {exc}); starting a fresh one"
            )
        proc.kill()
        return None

    @contextlib.contextmanager
    def _teams_bytes(self, cause: FailureCause, what: str) -> Iterator[None]:
        """A step that handles the team's bytes: a failure not positively ours (`is_ours`) is the team's
        `cause`, so no team input can turn into a refunded infrastructure failure by crashing our code."""
        try:
            yield
        except (archive.InvalidSubmission, InstallFailed):
            raise
        except Exception as exc:
            if is_ours(exc):
                raise
            self.log(f"[harness] {what}: unclassified {type(exc).__name__}, charged as {cause.value}")
            for line in traceback.format_exc().splitlines()[-40:]:
                self.log(f"[harness]   {line}")
            raise FatalOptimizerError(cause, f"{what} ({type(exc).__name__})") from None

    def _problem_finished(self, spec: Spec) -> dict[str, Any]:
        job = self.job
        done = finished_study_indices(self.r, job.submission_id, job.score_version, job.problem)
        if not set(job.studies) <= done:
            return {"status": "incomplete"}
        self.r.sadd(keys.problems_done(job.submission_id, job.score_version), f"{job.problem}#{job.chunk}")
        finished = versions.finalize_if_complete(self.r, job.submission_id, job.score_version)
        return {"status": "done", "finalized": finished}

    # -- stop watcher -----------------------------------------------------------------------------
    def _watch(self) -> None:
        key = keys.submission(self.job.submission_id)
        while not self._stop.wait(WATCH_INTERVAL_S):
            with contextlib.suppress(Exception):
                self.beat()
                state, version = self.r.hmget(key, "state", "score_version")
                if state in (SubmissionState.STOPPED.value, SubmissionState.FAILED.value) or (
                    version is not None and int(version) != self.job.score_version
                ):
                    self.log("[harness] submission stopped: killing the sandbox")
                    self._stop.set()
                    self._kill_all()
                    return
            self.log.flush()

    def _kill_all(self) -> None:
        with self._lock:
            procs, self._procs = self._procs, []
        for proc in procs:
            proc.kill()
