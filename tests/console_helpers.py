"""Fixed console data for the console's tests: real records written by the project's own record functions,
with fixed ids and times so the screens (and their snapshots) come out the same every run."""

from __future__ import annotations

from competition import teams
from queue_schema import keys
from queue_schema.payloads import Heartbeat, StudyResult, Submission
from queue_schema.records import add_event, append_job_log, save_new_submission, transition, write_study
from queue_schema.states import FailureCause, StudyState, SubmissionState
from runtime.spec import Spec, load

NOW = 1_790_000_000.0  # the injected clock of every fixed screen


def demo_spec() -> Spec:
    return load("demo")


def record(r, sid: str, team: str, created_at: float, spec: Spec, *, phase: str = "feedback") -> Submission:
    """A new submission's record as create_submission writes it (without the artifact and the jobs)."""
    studies = len(spec.phase(phase).problems) * spec.phase(phase).studies
    sub = Submission(
        id=sid,
        team=team,
        artifact_sha256="0" * 64,
        spec_name=spec.name,
        spec_hash=spec.hash,
        phase=phase,
        created_at=created_at,
        updated_at=created_at,
    )
    sub.progress.studies_total = studies
    sub.progress.evals_total = studies * spec.evals_per_study
    r.set(keys.spec(spec.hash), spec.to_json())
    save_new_submission(r, sub)
    add_event(r, "submitted", sid, team=team, phase=phase, spec=spec.name)
    return sub


def study(r, sid: str, problem: str, index: int, spec: Spec, losses: list[float], normalized: float) -> None:
    rounds = [[value] * spec.batch for value in losses]
    result = StudyResult(study=index, state=StudyState.COMPLETE, losses=rounds, finished_at=NOW)
    write_study(r, sid, 1, problem, result, normalized)


def fixed_competition(r) -> dict[str, str]:
    """Three teams, five submissions in every state; returns {name: submission id}."""
    spec = demo_spec()
    for name in ("alpha", "beta", "gamma"):
        teams.add_team(r, name)
    ids = {
        "scored_alpha": "s0000000aaaaaaaaa1",
        "scored_beta": "s0000000bbbbbbbbb1",
        "running_gamma": "s0000000ccccccccc1",
        "failed_beta": "s0000000bbbbbbbbb2",
        "queued_alpha": "s0000000aaaaaaaaa2",
    }
    created = {name: NOW - 3600 * (5 - i) for i, name in enumerate(ids)}
    for name, sid in ids.items():
        record(r, sid, name.split("_")[1], created[name], spec)
    curve = [-0.7, -0.85, -0.9, -0.93, -0.94, -0.94, -0.95, -0.95][: spec.rounds]
    for name, score in (("scored_alpha", 91.25), ("scored_beta", 87.5)):
        sid = ids[name]
        transition(r, sid, SubmissionState.RUNNING)
        phase = spec.phase("feedback")
        for problem in phase.problems:
            for index in range(phase.studies):
                study(r, sid, problem, index, spec, curve, 0.1)
        transition(r, sid, SubmissionState.SCORED, score=score, scored_at=NOW - 600)
    running = ids["running_gamma"]
    transition(r, running, SubmissionState.RUNNING)
    study(r, running, spec.phase("feedback").problems[0], 0, spec, curve, 0.2)
    transition(r, ids["failed_beta"], SubmissionState.RUNNING)
    transition(
        r,
        ids["failed_beta"],
        SubmissionState.FAILED,
        failure=(FailureCause.OPTIMIZER_CRASHED, "suggest raised ZeroDivisionError"),
    )
    return ids


def job_log(r, job_id: str, lines: list[str]) -> None:
    append_job_log(r, job_id, lines)


def heartbeat(r, worker: str, state: str, job: str | None, ts: float) -> None:
    """A worker's heartbeat laid out as workers/heartbeat.py writes it."""
    beat = Heartbeat(
        worker=worker,
        host="node-1",
        pid=1234,
        state=state,
        current_job=job,
        backend="process",
        started_at=ts,
        ts=ts,
    )
    r.hset(keys.heartbeat(worker), mapping={"json": beat.to_json(), "job": job or ""})
    r.zadd(keys.heartbeats_index(), {worker: ts})


def autoscaler_decision(r, ts: float) -> None:
    import json

    status = {
        "add": 1,
        "drain": [],
        "reason": "2 jobs queued, 1 worker: adding 1",
        "held": False,
        "queued": 2,
        "running": 1,
        "workers": {"booting": 1, "idle": 0, "busy": 1, "draining": 0},
        "machine_hours": 0.5,
        "provider": "local",
        "fleet": "local",
        "dry_run": False,
        "ts": ts,
    }
    r.hset(keys.autoscaler_status("local"), mapping={k: json.dumps(v) for k, v in status.items()})
    r.sadd(keys.autoscaler_fleets(), "local")
    from queue_schema.payloads import Event
    from queue_schema.records import _event_into

    _event_into(r, Event(kind="autoscaler", ts=ts, data={k: v for k, v in status.items() if k != "ts"}))
