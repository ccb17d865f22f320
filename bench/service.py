"""Service figures: status throughput and tail latency, stop latency, and worker scaling.

Everything runs against real parts in a temporary state folder (an embedded Redis of its own, never the
user's): a uvicorn gateway started with `bbo admin serve`, and RQ workers started with `bbo admin worker`.

- status: teams ask for their submissions (GET /v1/submissions/{id}, what `bbo status --watch` polls)
  among a competition-sized store (3,600 submissions of 70 teams, as in 2020). `status_rps` is what the
  gateway sustains with 16 connections asking back to back; `status_p99_ms` is the latency when 64 clients
  offer 500 req/s together (Poisson arrivals, counted from each request's due time). Targets: >= 500 req/s,
  p99 <= 50 ms. The load comes from raw asyncio connections (httpx would cost more CPU than the gateway);
  httpx checks a sample of the answers.
- stop: a submission whose optimizer thinks for a second per round is stopped mid-study through the API;
  the figure is the time from the stop request to the study's sandbox being dead. Target: p95 <= 2 s.
- scaling: the same CPU-bound submission (one study per job) scored by 1 worker and by 2 workers.
  Target: 2 workers >= 1.85x the throughput of 1 (on an otherwise quiet machine with >= 2 cores).

With `--backend process` (the default) the workers run studies without isolation, with
BBO_ALLOW_UNSAFE_SANDBOX=1 set for them only (the output says so); `--backend docker` needs an engine
and the sandbox image.

    python -m bench service --json [--quick] [--backend process|docker|bwrap] [--skip status,stop,scaling]
"""

from __future__ import annotations

from queue_schema.settings import pin_threads

pin_threads()

import argparse  # noqa: E402
import asyncio  # noqa: E402
import contextlib  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import httpx  # noqa: E402
import psutil  # noqa: E402

from bench.common import Stack, embedded_store, logger, percentile, print_figures, scratch_state  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SUBMISSIONS = ROOT / "tests" / "submissions"
SANDBOX_HOST_MODULE = "sandbox_image.host"
PHASES = ("status", "stop", "scaling")


_log = logger("service")


def _percentile(values: list[float], q: float) -> float:
    value = percentile(values, q)
    return float("nan") if value is None else value


def _bench_spec(work: Path, name: str, problem: str, studies: int, rounds: int, batch: int) -> Any:
    from runtime.spec import load

    (work / f"{name}.toml").write_text(
        f"""
name = "{name}"
rounds = {rounds}
batch = {batch}
[phases.feedback]
problems = ["{problem}"]
studies = {studies}
studies_per_job = 1
[limits]
suggest_budget_s = 3600.0
call_timeout_s = 600.0
"""
    )
    return load(work / f"{name}.toml")


# -- processes --------------------------------------------------------------------------------------


class Fleet(Stack):
    """The gateway and workers as subprocesses of this benchmark, started by the `bbo` CLI, on the store at
    `url`; their output on stderr (stdout carries only the figures' JSON)."""

    def __init__(self, url: str, backend: str) -> None:
        super().__init__(store_url=url, unsafe=backend == "process", prefix="bench")
        self.backend = backend

    def sandboxes_alive(self) -> int:
        """Running sandboxes of our workers: host processes (process, bwrap) or labelled containers."""
        if self.backend == "docker":
            import docker

            from workers.sandbox.docker import ROLE_LABEL

            client = docker.from_env()
            return len(client.containers.list(filters={"label": f"{ROLE_LABEL}=sandbox"}))
        alive = 0
        for worker in self.workers.values():
            try:
                descendants = psutil.Process(worker.pid).children(recursive=True)
            except psutil.Error:
                continue
            for proc in descendants:
                try:
                    if proc.status() != psutil.STATUS_ZOMBIE and SANDBOX_HOST_MODULE in " ".join(
                        proc.cmdline()
                    ):
                        alive += 1
                except psutil.Error:
                    continue
        return alive


# -- status -----------------------------------------------------------------------------------------


def populate(r: Any, teams_count: int, submissions: int) -> list[tuple[str, str]]:
    """Teams and a store of submissions shaped as the real ones (mostly scored); (token, id) pairs."""
    from competition import teams
    from queue_schema.ids import new_submission_id
    from queue_schema.payloads import Failure, Progress, Submission
    from queue_schema.records import save_new_submission
    from queue_schema.states import FailureCause, SubmissionState
    from runtime.spec import load

    spec = load("demo")
    tokens = [teams.add_team(r, f"team-{i:02d}") for i in range(teams_count)]
    rng = random.Random(0)
    pairs = []
    started = time.time() - 90 * 86400
    for i in range(submissions):
        index = i % teams_count
        roll = rng.random()
        state = SubmissionState.SCORED if roll < 0.85 else SubmissionState.FAILED
        total = 8
        sub = Submission(
            id=new_submission_id(),
            team=f"team-{index:02d}",
            state=state,
            artifact_sha256=f"{rng.getrandbits(256):064x}",
            spec_name=spec.name,
            spec_hash=spec.hash,
            phase="feedback",
            created_at=started + i * 2000,
            score=90 + 10 * rng.random() if state == SubmissionState.SCORED else None,
            failure=Failure(cause=FailureCause.OPTIMIZER_CRASHED, message="suggest returned 3 points, not 4")
            if state == SubmissionState.FAILED
            else None,
            progress=Progress(
                studies_done=total, studies_total=total, evals_done=total * 32, evals_total=256
            ),
        )
        save_new_submission(r, sub)
        pairs.append((tokens[index], sub.id))
    return pairs


class _Connection:
    """One keep-alive HTTP/1.1 connection on raw asyncio streams.

    The load generator must cost far less than the server it measures: httpx spends more CPU per request
    (about 2 ms here) than the gateway does, and with dozens of concurrent requests its pool becomes the
    bottleneck, so on a 2-core box it would measure itself. httpx still checks the answers' content.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def get(self, path: str, token: str) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        request = f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\nAuthorization: Bearer {token}\r\n\r\n"
        self.writer.write(request.encode())
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        await self.reader.readexactly(length)
        return status

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()


async def _load(
    base: str, pairs: list[tuple[str, str]], clients: int, seconds: float, rate: float | None
) -> tuple[list[float], int, float]:
    """Status requests from `clients` keep-alive connections: back to back (rate None: the throughput the
    gateway can sustain), or Poisson arrivals at `rate` per second in all (the latency teams see at that
    load). An open-loop latency counts from the request's scheduled time, so a slow answer also delays
    (and charges) the requests queued behind it instead of hiding them. Returns latencies, errors, seconds.
    """
    host, port = base.removeprefix("http://").split(":")
    latencies: list[float] = []
    errors = 0

    async def one_client(connection: _Connection, seed: int, until: float, record: bool) -> None:
        nonlocal errors
        rng = random.Random(seed)
        due = time.perf_counter() + (rng.expovariate(rate / clients) if rate else 0.0)
        while due < until:
            if rate:
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
            else:
                due = time.perf_counter()
            token, sid = pairs[rng.randrange(len(pairs))]
            status = await connection.get(f"/v1/submissions/{sid}", token)
            if record:
                latencies.append(time.perf_counter() - due)
                errors += status != 200
            if rate:
                due += rng.expovariate(rate / clients)

    connections = [_Connection(host, int(port)) for _ in range(clients)]
    try:
        warm = time.perf_counter() + min(2.0, seconds / 4)
        await asyncio.gather(*(one_client(c, i, warm, False) for i, c in enumerate(connections)))
        started = time.perf_counter()
        until = started + seconds
        await asyncio.gather(*(one_client(c, 1000 + i, until, True) for i, c in enumerate(connections)))
        elapsed = time.perf_counter() - started
    finally:
        await asyncio.gather(*(c.close() for c in connections))
    return latencies, errors, elapsed


def _ms(latencies: list[float], q: float) -> float:
    return round(_percentile(latencies, q) * 1000, 2)


def _check_answers(base: str, pairs: list[tuple[str, str]]) -> None:
    """A few answers through httpx: the contract's submission object, and only for its own team."""
    with httpx.Client(base_url=base, timeout=10) as client:
        for token, sid in pairs[:: max(1, len(pairs) // 20)]:
            body = client.get(f"/v1/submissions/{sid}", headers={"Authorization": f"Bearer {token}"}).json()
            if body.get("id") != sid or "state" not in body:
                raise SystemExit(f"bench service: unexpected status answer {str(body)[:200]}")
        token, sid = pairs[0]
        other = next(t for t, _ in pairs if t != token)
        if (
            client.get(f"/v1/submissions/{sid}", headers={"Authorization": f"Bearer {other}"}).status_code
            != 404
        ):
            raise SystemExit("bench service: a team could read another team's submission")


def status_phase(fleet: Fleet, r: Any, args: argparse.Namespace) -> dict[str, Any]:
    pairs = populate(r, args.teams, args.submissions)
    _check_answers(fleet.base, pairs)
    _log(f"status: {len(pairs)} submissions of {args.teams} teams stored")
    closed, closed_errors, closed_s = asyncio.run(
        _load(fleet.base, pairs, args.saturate_clients, args.seconds, None)
    )
    rps = len(closed) / closed_s
    _log(
        f"status: {rps:.0f} req/s from {args.saturate_clients} clients back to back, p99 {_ms(closed, 99)} ms"
    )
    opened, open_errors, open_s = asyncio.run(_load(fleet.base, pairs, args.clients, args.seconds, args.rate))
    _log(f"status: at {args.rate:.0f} req/s offered by {args.clients} clients, p99 {_ms(opened, 99)} ms")
    return {
        "status_rps": round(rps, 1),
        "status_p99_ms": _ms(opened, 99),
        "status_p50_ms": _ms(opened, 50),
        "status_offered_rps": args.rate,
        "status_served_rps": round(len(opened) / open_s, 1),
        "status_clients": args.clients,
        "status_saturated_clients": args.saturate_clients,
        "status_saturated_p50_ms": _ms(closed, 50),
        "status_saturated_p99_ms": _ms(closed, 99),
        "status_requests": len(closed) + len(opened),
        "status_errors": closed_errors + open_errors,
        "status_seconds_each": args.seconds,
        "status_submissions_stored": len(pairs),
        "status_teams": args.teams,
        "status_gateway_processes": args.gateway_workers,
    }


# -- stop -------------------------------------------------------------------------------------------


def stop_phase(fleet: Fleet, r: Any, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    from artifacts import archive
    from competition import teams
    from competition.submit import create_submission
    from queue_schema.records import load_submission

    spec = _bench_spec(work, "bench-stop", "DT-iris-acc", studies=2, rounds=120, batch=2)
    data = archive.pack(SUBMISSIONS / "sleepy", spec.submission)  # one second of thought per round
    token = teams.add_team(r, "stopper")
    fleet.start_workers(1)
    latencies, api_s = [], []
    rng = random.Random(1)
    try:
        for trial in range(args.stops):
            sub = create_submission(
                r,
                team="stopper",
                data=data,
                spec=spec,
                phase="feedback",
                backend=fleet.backend,
                check_baselines=False,
            )
            deadline = time.monotonic() + 120
            while fleet.sandboxes_alive() == 0 or load_submission(r, sub.id).state.value != "running":
                if time.monotonic() > deadline:
                    raise SystemExit(f"bench service: stop trial {trial}: no sandbox started within 120 s")
                time.sleep(0.02)
            time.sleep(1.0 + rng.random() * 1.5)  # somewhere mid-study: in a suggest or an evaluation
            started = time.perf_counter()
            response = httpx.post(
                f"{fleet.base}/v1/submissions/{sub.id}/stop",
                headers={"Authorization": f"Bearer {token}"},
                timeout=30,
            )
            api_s.append(time.perf_counter() - started)
            if response.status_code != 200:
                raise SystemExit(
                    f"bench service: stop answered {response.status_code}: {response.text[:200]}"
                )
            while fleet.sandboxes_alive():
                if time.perf_counter() - started > 60:
                    raise SystemExit(
                        f"bench service: stop trial {trial}: the sandbox outlived the stop by 60 s"
                    )
                time.sleep(0.005)
            latencies.append(time.perf_counter() - started)
            _log(f"stop {trial + 1}/{args.stops}: sandbox dead {latencies[-1]:.3f} s after the request")
    finally:
        fleet.stop_workers()
    return {
        "stop_p95_s": round(_percentile(latencies, 95), 3),
        "stop_median_s": round(statistics.median(latencies), 3),
        "stop_max_s": round(max(latencies), 3),
        "stop_api_median_s": round(statistics.median(api_s), 4),
        "stops": len(latencies),
    }


# -- scaling ----------------------------------------------------------------------------------------


def _score_with(
    fleet: Fleet, r: Any, workers: int, spec: Any, data: bytes, *, pin: bool = False
) -> tuple[float, int]:
    """Seconds from enqueue to the last study written, and how many workers ran studies."""
    from rq import Worker

    from competition.submit import create_submission
    from queue_schema import keys
    from queue_schema.connection import rq_connection
    from queue_schema.records import load_submission

    names = fleet.start_workers(workers, pin=pin)
    try:
        started = time.perf_counter()
        sub = create_submission(
            r,
            team=f"scaling-{workers}",
            data=data,
            spec=spec,
            phase="feedback",
            backend=fleet.backend,
            check_baselines=False,
        )
        total = sub.progress.studies_total
        last_event = "0-0"
        while True:
            # Woken by the submission's own events rather than polling, so the waiting benchmark takes
            # no CPU from the workers it measures.
            for _, entries in r.xread({keys.submission_events(sub.id): last_event}, block=1000) or []:
                last_event = entries[-1][0]
            current = load_submission(r, sub.id)
            if current.progress.studies_done >= total:
                elapsed = time.perf_counter() - started
                # RQ runs each job in a forked child, so a study records the child's pid: ask RQ instead.
                used = sum(
                    1
                    for w in Worker.all(connection=rq_connection(fleet.url))
                    if w.name in names and w.successful_job_count
                )
                break
            if current.state.value in ("failed", "stopped"):
                raise SystemExit(
                    f"bench service: scaling submission ended {current.state.value}: {current.failure}"
                )
    finally:
        fleet.stop_workers()
    return elapsed, used


def scaling_phase(fleet: Fleet, r: Any, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    from artifacts import archive

    spec = _bench_spec(
        work, "bench-scaling", args.scaling_problem, args.scaling_studies, args.scaling_rounds, 4
    )
    data = archive.pack(SUBMISSIONS / "random_search", spec.submission)
    _log(
        f"scaling: {args.scaling_studies} studies of {args.scaling_problem}, "
        f"{args.scaling_rounds} rounds x 4, one study per job"
    )
    # Headline: one worker per core (as `bbo admin up` runs them), each pinned with its sandboxes.
    one, _ = _score_with(fleet, r, 1, spec, data, pin=True)
    _log(f"scaling: 1 pinned worker {one:.2f} s")
    two, used = _score_with(fleet, r, 2, spec, data, pin=True)
    _log(f"scaling: 2 pinned workers {two:.2f} s ({used} of them ran studies)")
    # Unpinned, a lone worker's sandbox prestarts run on the idle core for free, so it looks faster
    # than a core's worth: the ratio shows how much of a core the prestarts take.
    loose, _ = _score_with(fleet, r, 1, spec, data)
    _log(f"scaling: 1 unpinned worker {loose:.2f} s")
    return {
        "scaling_2_vs_1": round(one / two, 3),
        "scaling_2_vs_1_unpinned": round(loose / two, 3),
        "scaling_1_worker_unpinned_s": round(loose, 3),
        "scaling_1_worker_s": round(one, 3),
        "scaling_2_workers_s": round(two, 3),
        "scaling_1_worker_studies_per_s": round(args.scaling_studies / one, 4),
        "scaling_2_workers_studies_per_s": round(args.scaling_studies / two, 4),
        "scaling_2_workers_used": used,
        "scaling_studies": args.scaling_studies,
        "scaling_rounds": args.scaling_rounds,
        "scaling_problem": args.scaling_problem,
        "cpus": os.cpu_count(),
    }


# -- main -------------------------------------------------------------------------------------------


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench service", description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    parser.add_argument("--quick", action="store_true", help="shorter runs: fewer seconds, stops and studies")
    parser.add_argument("--backend", default="process", choices=("process", "docker", "bwrap"))
    parser.add_argument(
        "--skip", default="", help=f"comma-separated phases to leave out ({','.join(PHASES)})"
    )
    parser.add_argument("--teams", type=int, default=70)
    parser.add_argument(
        "--gateway-workers",
        type=int,
        default=os.cpu_count() or 1,
        help="gateway processes, as `bbo admin serve --workers` (default: one per core)",
    )
    parser.add_argument(
        "--submissions", type=int, default=3600, help="stored submissions for the status test"
    )
    parser.add_argument(
        "--clients", type=int, default=64, help="status clients (connections) sharing the offered --rate"
    )
    parser.add_argument("--rate", type=float, default=500.0, help="status requests per second offered")
    parser.add_argument(
        "--saturate-clients", type=int, default=16, help="connections asking back to back for status_rps"
    )
    parser.add_argument("--seconds", type=float, default=None, help="status measurement time (20; quick 5)")
    parser.add_argument("--stops", type=int, default=None, help="stop trials (10; quick 4)")
    parser.add_argument("--scaling-problem", default="RF-wine-acc")
    parser.add_argument("--scaling-studies", type=int, default=None, help="studies = jobs (24; quick 8)")
    parser.add_argument("--scaling-rounds", type=int, default=None, help="rounds of 4 per study (6; quick 4)")
    args = parser.parse_args(argv)
    quick = args.quick
    args.seconds = args.seconds or (5.0 if quick else 20.0)
    args.stops = args.stops or (4 if quick else 10)
    args.scaling_studies = args.scaling_studies or (8 if quick else 24)
    # Evaluations dominate a study (a sandbox's start-up is ~0.5 s of CPU): the workload is CPU-bound.
    args.scaling_rounds = args.scaling_rounds or (4 if quick else 6)
    skip = {s for s in args.skip.split(",") if s}
    if skip - set(PHASES):
        parser.error(f"--skip takes {','.join(PHASES)}")

    from queue_schema.connection import connect

    figures: dict[str, Any] = {
        "backend": args.backend,
        "unsafe_sandbox_for_workers": args.backend == "process",
        "quick": quick,
    }
    if args.backend == "process":
        _log("workers run studies with --backend process and BBO_ALLOW_UNSAFE_SANDBOX=1 (no isolation)")
    with scratch_state("bbo-bench-service-") as state, embedded_store() as server:
        fleet = Fleet(server.url, args.backend)
        try:
            r = connect(server.url)
            fleet.start_gateway("demo", backend=args.backend, processes=args.gateway_workers)
            if "status" not in skip:
                figures |= status_phase(fleet, r, args)
                r.flushall()
            if "stop" not in skip:
                figures |= stop_phase(fleet, r, state, args)
                r.flushall()
            if "scaling" not in skip:
                figures |= scaling_phase(fleet, r, state, args)
        finally:
            fleet.stop()
    print_figures(figures, args.json)
