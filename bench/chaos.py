"""Chaos figures: the real parts under faults, and what each fault cost (every count here should be 0).

Everything runs against real parts in a temporary state folder (an embedded Redis of its own, never the
user's): RQ workers started with `bbo admin worker`, the gateway with `bbo admin serve`. Each scenario is
bounded in time and prints counts.

- worker_kill: a stream of small submissions (an optimizer that thinks 0.3 s per round, so a study lasts
  seconds) scored by 2 workers; a worker is SIGKILLed in the middle of a study --kills times and a new one
  started each time. At the end every submission must be scored exactly once: every study result written
  once (write-once records), one `study` event per study, counters equal to the studies. The detection
  time is from the kill to the reaper's `job_requeued` event for the job (target <= 60 s).
- redis_restart: uploads through HTTP (real team tokens, a few client threads) while the embedded Redis
  (AOF, fsync always) is SIGKILLed and restarted in the middle; each upload ends "accepted id" or an
  error. Every accepted id must be in the store afterwards and be scored by the workers (`lost` = 0).
- disk_full: the Redis folder on a small tmpfs that is then filled up; uploads must be refused with a
  clear error (not a 500, not a hang), and after space comes back and the store restarts, every earlier
  submission still loads and its artifact's sha256 still matches. Needs root (mount); skipped otherwise.
- store_refuses: the store refuses every write for --refusal-s seconds (maxmemory under noeviction: the
  same refusal a full disk's MISCONF gives every client) in the middle of studies. Workers must wait it
  out rather than quit (`workers_quit_on_refusal` = 0), and every submission must end scored exactly once.

- engine_restart: submissions scored in docker sandboxes; in the middle of a study the Docker engine is
  stopped (SIGTERM to dockerd, which takes its containers down) and, after a pause, started again
  (scripts/start-dockerd). The affected jobs fail as `infrastructure`, RQ retries them, and they resume
  at their next unfinished study; nothing may be charged to a team: every submission ends scored, or
  failed as `infrastructure` (refunded). Needs root, dockerd and the sandbox image; it stops the engine
  this machine's other docker users share, so it runs only when asked (`--only engine_restart`).

Every scenario that scores submissions also counts those its team paid for (`SCENARIO_charged_to_team`:
unscored but still counted against the quota, or failed with a cause that is the team's); every fault
here is ours, so their total `charged_to_team` must be 0.

With the process backend the workers run studies without isolation, with BBO_ALLOW_UNSAFE_SANDBOX=1 set
for them only (the output says so).

    python -m bench chaos --json [--quick] [--only worker_kill,...,engine_restart] [--kills N] [--keep-state]
"""

from __future__ import annotations

from queue_schema.settings import pin_threads

pin_threads()

import argparse  # noqa: E402
import contextlib  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import psutil  # noqa: E402

from bench.common import (  # noqa: E402
    Stack,
    Upload,
    logger,
    print_figures,
    salted_zip,
    scratch_state,
    team_api,
    try_upload,
    wait_until,
)
from runtime.supervisor import Child, stop_children  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SUBMISSIONS = ROOT / "tests" / "submissions"
SCENARIOS = (
    "worker_kill",
    "redis_restart",
    "disk_full",
    "store_refuses",
    "daemon_restart",
    "engine_restart",
)
FINISHED = ("scored", "failed", "stopped")
PONDERER_STUDIES = 3  # per problem, in one job: a job killed after its first study still has work left


_log = logger("chaos")


def _small_spec(work: Path, *, problems: list[str], studies: int, studies_per_job: int, quota: int) -> Any:
    """The demo spec (same rounds, batch and baseline settings, so its baselines apply) cut down."""
    from runtime.spec import SPECS_DIR, load

    text = (SPECS_DIR / "demo.toml").read_text()
    text = text.replace(
        '[phases.feedback]\nproblems = ["DT-iris-acc", "lasso-diabetes-mae", "SVM-wine-nll", "RF-iris-acc"]\n'
        "studies = 2\n",
        f"[phases.feedback]\nproblems = {json.dumps(problems)}\nstudies = {studies}\n"
        f"studies_per_job = {studies_per_job}\n",
    ).replace("daily_quota = 20", f"daily_quota = {quota}")
    if f"studies_per_job = {studies_per_job}\n" not in text:
        raise SystemExit("bench chaos: runtime/specs/demo.toml changed shape; update _small_spec")
    path = work / "chaos-spec.toml"
    path.write_text(text)
    return load(path)


def _ponderer_stream(state: Path) -> tuple[Stack, Any, Any, bytes]:
    """A scenario's stack with its store started (and the store's client), and the spec and zip of a
    stream of slow submissions: the ponderer thinks each round, so a study lasts seconds and can be hit in
    the middle; PONDERER_STUDIES studies of two fast problems, one job each; the team `chaos` sends them."""
    from artifacts import archive
    from competition import teams

    stack = Stack(state, prefix="chaos")
    r = stack.start_store()
    spec = _small_spec(
        state,
        problems=["DT-iris-acc", "lasso-diabetes-mae"],
        studies=PONDERER_STUDIES,
        studies_per_job=PONDERER_STUDIES,
        quota=999,
    )
    teams.add_team(r, "chaos")
    return stack, r, spec, archive.pack(SUBMISSIONS / "ponderer", spec.submission)


def _wait_finished(r: Any, sids: list[str], timeout: float) -> None:
    from queue_schema.records import load_submission

    def finished() -> bool:
        return all(load_submission(r, sid).state.value in FINISHED for sid in sids)

    wait_until(finished, timeout, "every submission to finish", interval=1.0)


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def _gone(proc: psutil.Process) -> bool:
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def exactly_once(r: Any, sid: str, spec: Any) -> tuple[bool, bool]:
    """(scored exactly once, something counted twice) for one submission, from the write-once study
    results, the `study` events and the submission's counters."""
    from queue_schema import keys
    from queue_schema.records import load_submission, read_events

    sub = load_submission(r, sid)
    phase = spec.phase(sub.phase)
    expected = {(problem, study) for problem in phase.problems for study in range(phase.studies)}
    version = sub.score_version
    stored = {
        (problem, int(study))
        for problem in phase.problems
        for study in r.hkeys(keys.study_results(sid, version, problem))
    }
    written = [
        (e.data["problem"], e.data["study"])
        for e in read_events(r, sid, count=10_000)
        if e.kind == "study" and e.data.get("version") == version
    ]
    evals_done, norm_count = (int(v or 0) for v in r.hmget(keys.submission(sid), "evals_done", "norm_count"))
    double = (
        len(written) != len(set(written))
        or len(written) > len(expected)
        or evals_done > len(expected) * spec.evals_per_study
        or norm_count > len(expected)
        or sub.progress.studies_done > len(expected)
    )
    once = (
        sub.state.value == "scored"
        and stored == expected
        and sorted(written) == sorted(expected)
        and evals_done == len(expected) * spec.evals_per_study
        and norm_count == len(expected)
        and not double
    )
    return once, double


def _log_story(r: Any, conn: Any, sid: str) -> None:
    """A submission's counters, events and jobs on stderr: what a failed check needs to be understood
    after the scenario's state folder is gone (as in CI)."""
    from rq.exceptions import NoSuchJobError
    from rq.job import Job

    from queue_schema import keys
    from queue_schema.records import read_events

    _log(f"  {sid}: {r.hgetall(keys.submission(sid))}")
    for event in read_events(r, sid, count=10_000):
        _log(f"  event {event.ts:.3f} {event.kind} {event.data}")
    version = int(r.hget(keys.submission(sid), "score_version") or 1)
    for job_id in sorted(r.smembers(keys.submission_jobs(sid, version))):
        try:
            job = Job.fetch(job_id, connection=conn)
        except NoSuchJobError:
            _log(f"  job {job_id}: gone")
            continue
        _log(f"  job {job_id}: {job.get_status()} meta={job.meta} retries_left={job.retries_left}")


def charged_to_team(r: Any, sids: list[str]) -> int:
    """Submissions whose team paid for our fault: unscored yet still counted against the quota, or failed
    with a cause that is the team's. A team pays for a scored upload (it got its score), never for ours."""
    from queue_schema.records import load_submission

    subs = [sub for sub in (load_submission(r, sid) for sid in sids) if sub is not None]
    return sum(
        (sub.state.value != "scored" and sub.charged)
        or (sub.failure is not None and sub.failure.cause.value != "infrastructure")
        for sub in subs
    )


# -- worker_kill ------------------------------------------------------------------------------------


def _victim(r: Any, conn: Any, sids: list[str], spared: set[str]) -> tuple[str, str] | None:
    """(job id, worker name) of a started job in the middle of a study: some of its studies written and
    not all, so one is running now. Jobs killed once already are spared, so that no job reaches the
    reaper's give-up count (which would fail its submission as infrastructure, by design)."""
    from rq.exceptions import NoSuchJobError
    from rq.job import Job, JobStatus

    from queue_schema import keys
    from queue_schema.payloads import ScoreJob

    for sid in sids:
        for job_id in r.smembers(keys.submission_jobs(sid, 1)):
            if job_id in spared:
                continue
            try:
                job = Job.fetch(job_id, connection=conn)
            except NoSuchJobError:
                continue
            if job.get_status() != JobStatus.STARTED or not job.worker_name:
                continue
            payload = ScoreJob.model_validate(job.args[0])
            if 0 < r.hlen(keys.study_results(sid, 1, payload.problem)) < PONDERER_STUDIES:
                return job_id, job.worker_name
    return None


def worker_kill(state: Path, args: argparse.Namespace) -> dict[str, Any]:
    from competition.submit import create_submission
    from queue_schema import keys
    from queue_schema.connection import rq_connection
    from queue_schema.records import load_submission, read_events

    stack, r, spec, data = _ponderer_stream(state)
    conn = rq_connection(stack.store.url)
    sids: list[str] = []
    killed: dict[str, tuple[float, str]] = {}  # job id -> (kill time, submission id)
    detection: dict[str, float] = {}
    leftovers = 0
    try:
        stack.wait_registered([stack.start_worker(), stack.start_worker()])
        deadline = time.monotonic() + args.worker_kill_timeout
        while len(killed) < args.kills:
            if time.monotonic() > deadline:
                _log(f"worker_kill: time is up after {len(killed)} kills")
                break
            active = [sid for sid in sids if load_submission(r, sid).state.value not in FINISHED]
            if len(active) < 2:  # a stream: two submissions (four jobs) in flight for two workers
                sub = create_submission(
                    r, team="chaos", data=data, spec=spec, phase="feedback", backend="process"
                )
                sids.append(sub.id)
                continue
            found = _victim(r, conn, active, set(killed))
            if found is None or found[1] not in stack.workers or not stack.workers[found[1]].alive:
                time.sleep(0.1)
                continue
            job_id, name = found
            worker = stack.workers.pop(name)
            tree = _descendants(worker.pid)
            worker.send_signal(signal.SIGKILL)  # the worker's main process only, as a crash would
            killed_at = time.time()
            worker.proc.wait(10)
            sid = next(s for s in active if job_id in r.smembers(keys.submission_jobs(s, 1)))
            killed[job_id] = (killed_at, sid)
            stack.start_worker()
            _log(f"worker_kill {len(killed)}/{args.kills}: killed {name} running {job_id}")
            # The work horse and its optimizer must die with the worker, not linger as orphans.
            with contextlib.suppress(SystemExit):
                wait_until(lambda tree=tree: all(_gone(p) for p in tree), 20, "the horse to die")
            for p in tree:
                if not _gone(p):
                    leftovers += 1
                    with contextlib.suppress(psutil.Error):
                        p.kill()

        _log(f"worker_kill: waiting for {len(sids)} submissions to finish")
        _wait_finished(r, sids, args.worker_kill_timeout)
        for job_id, (killed_at, sid) in killed.items():
            requeued = [
                e.ts
                for e in read_events(r, sid, count=10_000)
                if e.kind == "job_requeued" and e.data.get("job") == job_id and e.ts >= killed_at
            ]
            if requeued:
                detection[job_id] = min(requeued) - killed_at
        verdicts = [exactly_once(r, sid, spec) for sid in sids]
        failures = {
            sid: load_submission(r, sid).failure
            for sid, (once, _) in zip(sids, verdicts, strict=True)
            if not once
        }
        for sid, failure in failures.items():
            _log(f"worker_kill: {sid} not scored exactly once: {failure}")
            _log_story(r, conn, sid)
        charged = charged_to_team(r, sids)
    finally:
        stack.stop()
    return {
        "worker_kills": len(killed),
        "submissions": len(sids),
        "completed_exactly_once": sum(once for once, _ in verdicts),
        "double_counted": sum(double for _, double in verdicts),
        "kills_not_detected": len(killed) - len(detection),
        "max_detection_s": round(max(detection.values(), default=0.0), 1),
        "median_detection_s": round(sorted(detection.values())[len(detection) // 2], 1) if detection else 0.0,
        "horse_processes_left_behind": leftovers,
        "worker_kill_charged_to_team": charged,
    }


# -- redis_restart ----------------------------------------------------------------------------------


def redis_restart(state: Path, args: argparse.Namespace) -> dict[str, Any]:
    from artifacts import archive
    from competition import teams
    from queue_schema.connection import connect, reset_clients
    from queue_schema.records import load_submission

    stack = Stack(state, prefix="chaos")
    r = stack.start_store()
    clients, per_team = 4, 10
    spec = _small_spec(state, problems=["DT-iris-acc"], studies=1, studies_per_job=1, quota=per_team)
    data = archive.pack(SUBMISSIONS / "random_search", spec.submission)
    tokens = [teams.add_team(r, f"team-{i:02d}") for i in range(-(-args.uploads // per_team))]
    outcomes: list[Upload] = []
    lock = threading.Lock()
    turn = iter(range(args.uploads))
    restarts = 0
    lost: list[str] = []
    try:
        stack.start_gateway(state / "chaos-spec.toml")
        workers = [stack.start_worker(), stack.start_worker()]

        def client_loop() -> None:
            apis: dict[str, Any] = {}  # this client's connection of each team
            try:
                while True:
                    with lock:
                        index = next(turn, None)
                    if index is None:
                        return
                    token = tokens[index % len(tokens)]
                    api = apis.setdefault(token, team_api(stack.base, token))
                    outcome = try_upload(api, data)
                    with lock:
                        outcomes.append(outcome)
                    time.sleep(0.05)  # teams do not upload back to back: leaves room for the restarts
            finally:
                for api in apis.values():
                    api.client.close()

        threads = [threading.Thread(target=client_loop, daemon=True) for _ in range(clients)]
        for thread in threads:
            thread.start()
        for fraction in (1 / 3, 2 / 3)[: args.restarts]:
            wait_until(
                lambda f=fraction: len(outcomes) >= f * args.uploads, 300, "uploads to go through", 0.01
            )
            stack.kill_store()
            stack.start_store()  # replays the AOF
            restarts += 1
            _log(f"redis_restart: store killed and restarted after {len(outcomes)} uploads")
        for thread in threads:
            thread.join(600)
        reset_clients()
        r = connect(stack.store.url)
        accepted = [outcome.id for outcome in outcomes if outcome.id is not None]
        errors = [outcome.why for outcome in outcomes if outcome.id is None]
        for why in sorted(set(errors))[:5]:
            _log(f"redis_restart: an upload refused: {why}")
        _log(f"redis_restart: {len(accepted)} accepted, {len(errors)} refused; scoring them")
        missing = [sid for sid in accepted if load_submission(r, sid) is None]
        with contextlib.suppress(SystemExit):
            stack.wait_registered(workers, 60)

        def all_finished() -> bool:
            present = [load_submission(r, sid) for sid in accepted if sid not in missing]
            return all(sub.state.value in FINISHED for sub in present)

        wait_until(
            all_finished, args.redis_restart_timeout, "every accepted upload to be scored", interval=1.0
        )
        unscored = [
            sid for sid in accepted if sid not in missing and load_submission(r, sid).state.value != "scored"
        ]
        for sid in unscored:
            sub = load_submission(r, sid)
            _log(f"redis_restart: {sid} ended {sub.state.value}: {sub.failure}")
        lost = missing + unscored
        charged = charged_to_team(r, [sid for sid in accepted if sid not in missing])
    finally:
        stack.stop()
    return {
        "redis_restarts": restarts,
        "uploads": len(outcomes),
        "accepted": len(accepted),
        "refused_with_error": len(errors),
        "refusals_by_status": _by_status(errors),
        "lost": len(lost),
        "redis_restart_charged_to_team": charged,
    }


def _by_status(errors: list[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for why in errors:
        head = why.split(" ", 1)[0]
        key = head if head.isdigit() else head.rstrip(":")
        counts[key] = counts.get(key, 0) + 1
    return counts


# -- disk_full --------------------------------------------------------------------------------------


def _fill(folder: Path) -> int:
    """Fill the file system of `folder` to the last byte; the bytes written."""
    written = 0
    chunk = b"\0" * (64 * 1024)
    with open(folder / "filler", "wb", buffering=0) as out:
        for size in (len(chunk), 4096, 1):
            while True:
                try:
                    written += out.write(chunk[:size])
                except OSError:
                    break
    return written


def disk_full(state: Path, args: argparse.Namespace) -> dict[str, Any]:
    from artifacts import archive
    from competition import teams
    from queue_schema.connection import connect, reset_clients, rq_connection
    from queue_schema.records import load_submission

    if os.geteuid() != 0 or shutil.which("mount") is None:
        _log("disk_full: skipped (mounting a tmpfs needs root)")
        return {"disk_full_skipped": True}
    small = state / "small"
    small.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={args.tmpfs_mb}m", "tmpfs", str(small)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:  # root without CAP_SYS_ADMIN, as in many CI containers
        _log(f"disk_full: skipped (mount failed: {mounted.stderr.strip()[:200]})")
        return {"disk_full_skipped": True}
    stack: Stack | None = None
    store_died = recovered = False
    stored: dict[str, str] = {}  # submission id -> artifact sha256 (of the bytes we sent)
    outcomes: list[tuple[int | None, str, float]] = []
    corrupted = 0
    try:
        stack = Stack(state, redis_dir=small / "redis", prefix="chaos")
        r = stack.start_store()
        _small_spec(state, problems=["DT-iris-acc"], studies=1, studies_per_job=1, quota=999)
        token = teams.add_team(r, "filler")
        stack.start_gateway(state / "chaos-spec.toml")
        with team_api(stack.base, token, timeout=args.disk_full_request_timeout) as api:

            def post(index: int) -> tuple[int | None, str, float]:
                data = salted_zip(SUBMISSIONS / "random_search", f"disk-full-{index}", pad_bytes=256 * 1024)
                started = time.monotonic()
                outcome = try_upload(api, data)
                if outcome.id is not None:
                    stored[outcome.id] = hashlib.sha256(data).hexdigest()
                return outcome.status, outcome.body or str(outcome.id), time.monotonic() - started

            for index in range(5):
                status, body, _ = post(index)
                if status != 201:
                    raise SystemExit(
                        f"bench chaos: disk_full: an upload before the fill failed: {status} {body}"
                    )
            filled = _fill(small)
            _log(f"disk_full: {len(stored)} submissions stored, then {filled / 1e6:.1f} MB of filler")
            for index in range(5, 5 + args.full_uploads):
                outcomes.append(post(index))
                status, body, seconds = outcomes[-1]
                _log(f"disk_full: upload on a full disk: {status} in {seconds:.1f} s: {body[:160]}")
            store_died = stack.store.process is not None and stack.store.process.poll() is not None
            for line in (small / "redis" / "redis.log").read_text(errors="replace").splitlines():
                if "AOF" in line or "space" in line:
                    _log(f"disk_full: redis.log: {line.strip()[:200]}")
            (small / "filler").unlink()
            # The store may have died on the write error (fsync always): restart it as an operator would
            # after freeing space (a SIGKILL if it still runs: the harshest stop), then check that
            # everything stored before is intact and that uploads are taken again.
            if not store_died:
                stack.kill_store()
            reset_clients()
            stack.store.start()
            r = connect(stack.store.url)
            raw = rq_connection(stack.store.url)
            for sid, sha in stored.items():
                sub = load_submission(r, sid)
                try:
                    intact = (
                        sub is not None
                        and hashlib.sha256(archive.fetch(raw, sub.artifact_sha256)).hexdigest() == sha
                    )
                except Exception as exc:  # a missing or unreadable artifact is what this counts
                    _log(f"disk_full: {sid}: artifact unreadable: {exc}")
                    intact = False
                corrupted += not intact
            after = post(10_000)
            recovered = after[0] == 201
            if not recovered:
                _log(f"disk_full: upload after freeing space and restarting the store: {after[0]} {after[1]}")
    finally:
        if stack is not None:
            stack.stop()
        subprocess.run(["umount", "-l", str(small)], check=False)
    refusals = [
        o for o in outcomes if o[0] is not None and 400 <= o[0] < 600 and o[0] != 500 and '"error"' in o[1]
    ]
    return {
        "disk_full_uploads": len(outcomes),
        "disk_full_refusals": len(refusals),
        # The refusal's words: "out of disk space", not a store merely "not reachable".
        "disk_full_refusals_naming_the_disk": sum("disk" in o[1] for o in outcomes if o[0] == 503),
        "disk_full_statuses": sorted({str(o[0]) for o in outcomes}),
        "disk_full_server_errors": sum(o[0] == 500 for o in outcomes),
        "disk_full_hangs_or_drops": sum(o[0] is None for o in outcomes),
        "disk_full_max_answer_s": round(max((o[2] for o in outcomes), default=0.0), 2),
        "disk_full_accepted": sum(o[0] == 201 for o in outcomes),
        "disk_full_store_died": store_died,
        "disk_full_recovered_after_restart": recovered,
        "disk_full_submissions_checked": len(stored),
        "corrupted": corrupted,
    }


# -- store_refuses ----------------------------------------------------------------------------------


def store_refuses(state: Path, args: argparse.Namespace) -> dict[str, Any]:
    from competition.submit import create_submission
    from queue_schema import keys
    from queue_schema.connection import rq_connection

    stack, r, spec, data = _ponderer_stream(state)
    sids: list[str] = []
    exited: list[str] = []
    refusals = 0

    def note_exits() -> None:
        exited.extend(stack.exited_workers())

    def in_the_middle() -> bool:
        return any(
            0 < r.hlen(keys.study_results(sid, 1, problem)) < PONDERER_STUDIES
            for sid in sids
            for problem in spec.phase("feedback").problems
        )

    try:
        stack.wait_registered([stack.start_worker(), stack.start_worker()])
        for _ in range(args.refusals):
            sids += [
                create_submission(
                    r, team="chaos", data=data, spec=spec, phase="feedback", backend="process"
                ).id
                for _ in range(2)
            ]
            wait_until(in_the_middle, 120, "a study in the middle")
            # Every write refused, for every client, as a full disk's MISCONF does: maxmemory under the
            # store's noeviction policy is the same refusal without filling a disk.
            r.config_set("maxmemory", "1")
            refused_at = time.monotonic()
            while time.monotonic() - refused_at < args.refusal_s:
                note_exits()
                time.sleep(0.5)
            r.config_set("maxmemory", "0")
            refusals += 1
            note_exits()
            _log(f"store_refuses {refusals}/{args.refusals}: writes refused for {args.refusal_s:g} s")
            while len(stack.workers) < 2:  # as a supervisor would: only needed if one quit
                stack.start_worker()
        _wait_finished(r, sids, args.worker_kill_timeout)
        verdicts = [exactly_once(r, sid, spec) for sid in sids]
        for sid, (once, _) in zip(sids, verdicts, strict=True):
            if not once:
                _log(f"store_refuses: {sid} not scored exactly once")
                _log_story(r, rq_connection(stack.store.url), sid)
        charged = charged_to_team(r, sids)
    finally:
        stack.stop()
    return {
        "store_refusals": refusals,
        "store_refusal_s": args.refusal_s,
        "workers_quit_on_refusal": len(exited),
        "store_refused_submissions": len(sids),
        "store_refused_scored_once": sum(once for once, _ in verdicts),
        "store_refused_double_counted": sum(double for _, double in verdicts),
        "store_refuses_charged_to_team": charged,
    }


# -- daemon_restart ---------------------------------------------------------------------------------


def _fleet_workers(fleet: str, store_url: str) -> dict[str, list[int]]:
    """Live worker processes of the fleet, by name, from the process table alone (not the provider's
    code, which is what is under test): a `bbo admin worker --name FLEET-N` whose parent is not one too
    (a work horse is a fork of its worker)."""
    candidates: dict[int, str] = {}
    parents: dict[int, int] = {}
    for proc in psutil.process_iter(["cmdline", "ppid", "status"]):
        cmdline = proc.info.get("cmdline") or []
        if (
            proc.info.get("status") == psutil.STATUS_ZOMBIE
            or "worker" not in cmdline
            or "--name" not in cmdline
        ):
            continue
        name = cmdline[cmdline.index("--name") + 1] if cmdline.index("--name") + 1 < len(cmdline) else ""
        if not name.startswith(f"{fleet}-"):
            continue
        with contextlib.suppress(psutil.Error):
            if proc.environ().get("BBO_REDIS_URL") == store_url:
                candidates[proc.pid] = name
                parents[proc.pid] = proc.info.get("ppid") or 0
    out: dict[str, list[int]] = {}
    for pid, name in candidates.items():
        if parents[pid] not in candidates:
            out.setdefault(name, []).append(pid)
    return out


def daemon_restart(state: Path, args: argparse.Namespace) -> dict[str, Any]:
    from autoscaler.daemon import read_status
    from autoscaler.providers.base import machines_key
    from autoscaler.providers.local import LocalProvider
    from competition.submit import create_submission

    stack, r, spec, data = _ponderer_stream(state)
    fleet, cap = f"chaos{os.getpid()}", 2
    daemon: Child | None = None
    restarts = orphans = duplicates = 0
    takeover: list[float] = []
    sids: list[str] = []

    def start_daemon() -> Child:
        return stack.command(
            "autoscaler",
            *("autoscaler", "run", "--provider", "local", "--fleet", fleet, "--max", str(cap)),
            *("--interval", "1", "--idle-before-drain-s", "600"),
        )

    def stepped_since(moment: float) -> bool:
        return float(read_status(r, fleet).get("ts") or 0) > moment

    def live() -> dict[str, list[int]]:
        return _fleet_workers(fleet, stack.store.url)

    try:
        for _ in range(args.daemon_submissions):
            sids.append(
                create_submission(
                    r, team="chaos", data=data, spec=spec, phase="feedback", backend="process"
                ).id
            )
        daemon = start_daemon()
        wait_until(lambda: len(live()) == cap, 120, f"the daemon to start {cap} workers")
        for attempt in range(args.daemon_restarts):
            wait_until(
                lambda: sum(hb.state == "busy" for hb in _heartbeats(r, fleet)) == cap,
                120,
                "the fleet to be busy",
            )
            daemon.send_signal(signal.SIGKILL)  # no clean-up, its lock left to expire
            daemon.proc.wait(10)
            killed_at = time.time()
            before = live()
            # A daemon on this machine takes a dead one's lock over at once; one that still finds it held
            # exits, and, as an operator's supervisor would, it is started again until it runs.
            while True:
                daemon = start_daemon()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    daemon.proc.wait(5)
                if daemon.alive:
                    break
                if time.time() - killed_at > 120:
                    raise SystemExit("bench chaos: daemon_restart: no new daemon could start within 120 s")
            wait_until(lambda k=killed_at: stepped_since(k), 60, "the new daemon's first step")
            takeover.append(time.time() - killed_at)
            restarts += 1
            # Watch a few steps of the new daemon: every live worker must be one of its machines (no
            # orphan), and it must start none beside them (no duplicate).
            peak = 0
            for _ in range(5):
                step_at = time.time()
                wait_until(lambda s=step_at: stepped_since(s), 30, "the new daemon's next step")
                now_live = live()
                peak = max(peak, len(now_live))
                duplicates += sum(len(pids) - 1 for pids in now_live.values())
            known = set(r.hkeys(machines_key("local", fleet)))
            now_live = live()
            lost = set(now_live) - known
            status = read_status(r, fleet)
            counted = sum((status.get("workers") or {}).values())
            orphans += len(lost) + max(0, len(now_live) - counted)
            duplicates += max(0, peak - max(cap, len(before)))
            _log(
                f"daemon_restart {attempt + 1}/{args.daemon_restarts}: new daemon stepping "
                f"{takeover[-1]:.1f} s after the kill; workers before {sorted(before)}, "
                f"after {sorted(now_live)}, daemon counts {counted}"
            )

        _wait_finished(r, sids, args.worker_kill_timeout)
        scored_once = sum(exactly_once(r, sid, spec)[0] for sid in sids)
        charged = charged_to_team(r, sids)
    finally:
        if daemon is not None:
            stop_children([daemon], 30)  # the daemon stops; the workers stay up (they are the fleet)
        provider = LocalProvider(r, fleet=fleet, cap=cap, env=stack.env)
        for name in live():
            provider.delete(name)
        stack.stop()
    return {
        "daemon_restarts": restarts,
        "orphans": orphans,
        "duplicates": duplicates,
        "daemon_takeover_max_s": round(max(takeover, default=0.0), 1),
        "daemon_submissions": len(sids),
        "daemon_submissions_scored_once": scored_once,
        "daemon_restart_charged_to_team": charged,
    }


def _heartbeats(r: Any, fleet: str) -> list[Any]:
    from runtime import recovery

    return [hb for hb in recovery.workers(r) if hb.worker.startswith(f"{fleet}-")]


# -- main -------------------------------------------------------------------------------------------


# -- engine_restart ---------------------------------------------------------------------------------


def _engine_pid() -> int | None:
    with contextlib.suppress(OSError, ValueError):
        pid = int(Path("/var/run/docker.pid").read_text().strip())
        if psutil.pid_exists(pid):
            return pid
    return None


def _engine_answers() -> bool:
    done = subprocess.run(["docker", "info"], capture_output=True, timeout=30, check=False)
    return done.returncode == 0


def engine_restart(state: Path, args: argparse.Namespace) -> dict[str, Any]:
    from competition.submit import create_submission
    from queue_schema.connection import rq_connection
    from queue_schema.records import load_submission
    from workers.sandbox.docker import available as engine_ready

    if os.geteuid() != 0 or _engine_pid() is None or not engine_ready():
        _log("engine_restart: skipped (needs root, a running dockerd we can restart and the sandbox image)")
        return {"engine_restarts": 0, "engine_restart_skipped": True}
    stack, r, spec, data = _ponderer_stream(state)
    conn = rq_connection(stack.store.url)
    sids: list[str] = []
    restarts = 0
    try:
        stack.wait_registered([stack.start_worker(), stack.start_worker()])
        for _ in range(args.engine_submissions):
            sub = create_submission(r, team="chaos", data=data, spec=spec, phase="feedback", backend="docker")
            sids.append(sub.id)
        for _ in range(args.engine_restarts):
            wait_until(lambda: _victim(r, conn, sids, set()), 300, "a job in the middle of a study")
            pid = _engine_pid()
            assert pid is not None
            os.kill(pid, signal.SIGTERM)  # dockerd stops its containers: the running sandboxes die
            # Gone, not just silent: start-dockerd leaves a live engine's pid file alone.
            wait_until(lambda pid=pid: not psutil.pid_exists(pid), 120, "the engine to exit", interval=0.5)
            _log("engine_restart: the engine is down")
            time.sleep(args.engine_down_s)
            subprocess.run([str(ROOT / "scripts" / "start-dockerd")], check=True, timeout=180)
            restarts += 1
            _log(f"engine_restart {restarts}/{args.engine_restarts}: the engine is back")

        _wait_finished(r, sids, 900)
        subs = [load_submission(r, sid) for sid in sids]
        charged = charged_to_team(r, sids)
    finally:
        if not _engine_answers():  # never leave the machine without its engine
            subprocess.run([str(ROOT / "scripts" / "start-dockerd")], check=False, timeout=180)
        stack.stop()
    scored = [sub for sub in subs if sub.state.value == "scored"]
    infrastructure = [sub for sub in subs if sub.failure and sub.failure.cause.value == "infrastructure"]
    return {
        "engine_restarts": restarts,
        "engine_backend": "docker",  # this scenario's studies run in docker sandboxes
        "engine_submissions": len(subs),
        "engine_scored": len(scored),
        "engine_failed_infrastructure": len(infrastructure),
        "engine_restart_charged_to_team": charged,
    }


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench chaos", description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    parser.add_argument("--quick", action="store_true", help="fewer kills and uploads (for CI)")
    parser.add_argument("--only", default="", help=f"comma-separated scenarios ({','.join(SCENARIOS)})")
    parser.add_argument("--kills", type=int, default=None, help="worker kills (20; quick 2)")
    parser.add_argument(
        "--uploads", type=int, default=None, help="uploads across the store restarts (100; quick 20)"
    )
    parser.add_argument("--restarts", type=int, default=2, choices=(1, 2), help="store restarts")
    parser.add_argument(
        "--tmpfs-mb", type=int, default=16, help="size of the tmpfs the disk_full store lives on"
    )
    parser.add_argument("--daemon-restarts", type=int, default=None, help="daemon kills (3; quick 1)")
    parser.add_argument("--full-uploads", type=int, default=5, help="uploads tried on the full disk")
    parser.add_argument(
        "--refusals", type=int, default=None, help="times the store refuses writes (2; quick 1)"
    )
    parser.add_argument("--refusal-s", type=float, default=20.0, help="how long each refusal lasts (s)")
    parser.add_argument("--engine-restarts", type=int, default=None, help="engine stops (2; quick 1)")
    parser.add_argument(
        "--keep-state", action="store_true", help="keep each scenario's state folder (store, logs)"
    )
    args = parser.parse_args(argv)
    args.kills = args.kills if args.kills is not None else (2 if args.quick else 20)
    args.daemon_restarts = (
        args.daemon_restarts if args.daemon_restarts is not None else (1 if args.quick else 3)
    )
    args.uploads = args.uploads if args.uploads is not None else (20 if args.quick else 100)
    args.engine_restarts = (
        args.engine_restarts if args.engine_restarts is not None else (1 if args.quick else 2)
    )
    args.worker_kill_timeout = 300 if args.quick else 1800
    args.redis_restart_timeout = 300 if args.quick else 900
    args.disk_full_request_timeout = 60.0
    args.daemon_submissions = 2 if args.quick else 6
    args.refusals = args.refusals if args.refusals is not None else (1 if args.quick else 2)
    args.engine_submissions = 2 if args.quick else 4
    args.engine_down_s = 5.0
    # The engine scenario stops the Docker engine every docker user of this machine shares: only on request.
    only = [s for s in args.only.split(",") if s] or [s for s in SCENARIOS if s != "engine_restart"]
    if set(only) - set(SCENARIOS):
        parser.error(f"--only takes {','.join(SCENARIOS)}")

    figures: dict[str, Any] = {"backend": "process", "unsafe_sandbox_for_workers": True, "quick": args.quick}
    _log("workers run studies with --backend process and BBO_ALLOW_UNSAFE_SANDBOX=1 (no isolation)")
    runners = {
        "worker_kill": worker_kill,
        "redis_restart": redis_restart,
        "disk_full": disk_full,
        "store_refuses": store_refuses,
        "daemon_restart": daemon_restart,
        "engine_restart": engine_restart,
    }
    for name in SCENARIOS:
        if name not in only:
            continue
        started = time.monotonic()
        with scratch_state("bbo-chaos-", keep=args.keep_state) as state:
            try:
                figures |= runners[name](state, args)
            finally:
                if args.keep_state:
                    _log(f"{name}: state folder kept: {state} (worker and gateway logs in processes.log)")
        figures[f"{name}_s"] = round(time.monotonic() - started, 1)
        _log(f"{name}: done in {figures[f'{name}_s']} s")
    # Every scenario's faults are ours: the total a team paid for them must be 0.
    figures["charged_to_team"] = sum(v for k, v in figures.items() if k.endswith("_charged_to_team"))
    if "engine_restart" not in only:
        figures["not_run"] = {
            "engine_restart": "stops this machine's shared Docker engine; --only engine_restart"
        }
    print_figures(figures, args.json)


if __name__ == "__main__":
    main(sys.argv[1:])
