"""Web page figures (issue 17): the public leaderboard's latency, the pages' weight, how fast a stored
study shows on an open page, and the API's status latency while many pages are open.

A fresh embedded store is seeded in this process with the seed data (bench/seed_data.py: 3,608 submissions
of 70 teams by default), then a gateway runs in a process of its own, as `bbo admin serve` runs it
(uvicorn, httptools with the head limits, uvloop), so that this process's load generator does not share
its GIL.

- leaderboard_p95_ms: GET / (the public leaderboard page) at `--board-rate` requests a second from 8
  keep-alive connections (Poisson arrivals, counted from each request's due time). Target <= 50 ms.
- page_kb: the heaviest of the leaderboard page, the competition page, a team's page (the team with the
  most submissions, signed in) and a submission's page (its newest scored ones with study data), each
  with the stylesheet and scripts it loads, as sent (no compression). Target <= 150 KB.
- live_update_p95_s: a study stored through the workers' write path (records.write_study, event
  included) on a running submission, to the new progress arriving on an open /live/submissions/{id}
  stream read by httpx in this process, `--samples` times, while the `--streams` streams below are open.
  Target <= 2 s.
- status_p99_ms_with_200_streams: GET /v1/submissions/{id} as `bench service` measures it (`--rate`
  requests a second from 64 connections, open loop) while `--streams` server-sent event streams are open
  (half public boards, a quarter team pages, a quarter submission pages, of different sessions) and
  `--event-rate` study events a second wake them (each one a new progress). Target <= 50 ms.
  `status_p99_ms_without_streams` is the same load with no stream open, for comparison. The streams'
  clients read and drop what they get: no browser fetches a refreshed fragment here.

    python -m bench web --json [--submissions 3608] [--teams 70] [--streams 200] [--seconds 10]
        [--rate 500] [--board-rate 50] [--samples 30] [--event-rate 20]
"""

from __future__ import annotations

from queue_schema.settings import pin_threads

pin_threads()

import argparse  # noqa: E402
import asyncio  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from typing import Any  # noqa: E402

import httpx  # noqa: E402

from bench import seed_data  # noqa: E402
from bench.common import Stack, logger, percentile, print_figures, scratch_state, wait_until  # noqa: E402
from bench.service import _Connection, _load  # noqa: E402

TARGETS = {
    "leaderboard_p95_ms": 50.0,
    "page_kb": 150.0,
    "live_update_p95_s": 2.0,
    "status_p99_ms_with_200_streams": 50.0,
}
SPEC = "demo"  # the seed's competition is the demo one (same name, so the gateway reads its board)
STATUS_CLIENTS = 64

_log = logger("web")


# -- the store and the gateway ----------------------------------------------------------------------


@dataclass
class Competition:
    """What the seeded store holds that the measurements need."""

    tokens: dict[str, str]  # team -> bearer token
    owned: dict[str, list[str]]  # team -> submission ids, newest first
    active: list[str]  # queued or running submission ids
    seeded: dict[str, Any] = field(default_factory=dict)

    def pairs(self) -> list[tuple[str, str]]:
        return [(self.tokens[team], sid) for team, ids in self.owned.items() for sid in ids]


def seed(r: Any, args: argparse.Namespace) -> Competition:
    from queue_schema import keys
    from queue_schema.records import load_submissions
    from queue_schema.states import ACTIVE_STATES

    with seed_data.bulk_load(r):
        seeded = seed_data.seed(r, args.submissions, args.teams, args.seed, detailed=args.detailed)
    tokens = seeded.pop("tokens")
    owned = {team: list(r.zrevrange(keys.team_submissions(team), 0, -1)) for team in tokens}
    everything = [sid for ids in owned.values() for sid in ids]
    active = [sub.id for sub in load_submissions(r, everything) if sub.state in ACTIVE_STATES]
    return Competition(tokens, owned, active, seeded)


def archive_backlog(r: Any, timeout: float = 900.0) -> float:
    """Wait for the gateway to archive the seeded competition's ended score versions (they all ended
    before it started, so it archives them at once, a burst a running competition never has) and return
    how long that took: the figures are of a gateway serving pages, not catching up on a backlog."""
    from queue_schema.records import pending_versions

    started = time.monotonic()
    _log(f"the gateway archives {pending_versions(r)} ended score versions first")
    wait_until(lambda: pending_versions(r) == 0, timeout, "the archive backlog to drain", interval=0.5)
    took = round(time.monotonic() - started, 1)
    _log(f"archived in {took} s")
    return took


def start_gateway(stack: Stack) -> tuple[str, str]:
    """The gateway as `bbo admin serve` runs it, in its own process; (base URL, what serves it)."""
    return stack.start_gateway(SPEC), "bbo admin serve"


class Sessions:
    """Signed-in sessions, opened in the store as the sign-in form does, at most `per` streams each."""

    def __init__(self, r: Any, tokens: dict[str, str], per: int = 8) -> None:
        self.r, self.tokens, self.per = r, tokens, per
        self.open: dict[str, list[list[Any]]] = {}  # team -> [[cookie, streams], ...]

    def cookie(self, team: str) -> str:
        from competition import sessions

        mine = self.open.setdefault(team, [])
        if not mine or mine[-1][1] >= self.per:
            opened = sessions.open_session(self.r, self.tokens[team])
            assert opened is not None, f"team {team} could not sign in"
            mine.append([f"bbo_session={opened[0]}", 0])
        mine[-1][1] += 1
        return mine[-1][0]


# -- pages ------------------------------------------------------------------------------------------


ASSET = re.compile(rb'<(?:link[^>]*\bhref|script[^>]*\bsrc)="(/static/[^"]+)"')


def page_weights(base: str, cookie: str, submissions: list[str]) -> dict[str, float]:
    """KB of each page with the assets it loads (each asset counted on every page that loads it)."""
    weights: dict[str, float] = {}
    with httpx.Client(base_url=base, timeout=30, headers={"Cookie": cookie}) as client:

        def weigh(path: str) -> float:
            page = client.get(path)
            if page.status_code != 200:
                raise SystemExit(f"bench web: GET {path} answered {page.status_code}")
            total = len(page.content)
            for asset in sorted(set(ASSET.findall(page.content))):
                answer = client.get(asset.decode())
                if answer.status_code != 200:
                    raise SystemExit(f"bench web: GET {asset.decode()} answered {answer.status_code}")
                total += len(answer.content)
            return round(total / 1024, 1)

        weights["leaderboard"] = weigh("/")
        weights["competition"] = weigh("/competition")
        weights["team"] = weigh("/team")
        weights["submission"] = max(weigh(f"/team/submissions/{sid}") for sid in submissions)
    return weights


async def timed_gets(base: str, path: str, clients: int, seconds: float, rate: float) -> list[float]:
    """GET `path` at `rate` a second in all (Poisson arrivals) from `clients` keep-alive connections, for
    `seconds` after a short warm-up; each latency counted from the request's due time."""
    host, port = base.removeprefix("http://").split(":")
    latencies: list[float] = []

    async def client(connection: _Connection, rng: random.Random, until: float, record: bool) -> None:
        due = time.perf_counter() + rng.expovariate(rate / clients)
        while due < until:
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            status = await connection.get(path, "")
            if status != 200:
                raise SystemExit(f"bench web: GET {path} answered {status}")
            if record:
                latencies.append(time.perf_counter() - due)
            due += rng.expovariate(rate / clients)

    connections = [_Connection(host, int(port)) for _ in range(clients)]
    try:
        warm = time.perf_counter() + min(2.0, seconds / 4)
        await asyncio.gather(*(client(c, random.Random(i), warm, False) for i, c in enumerate(connections)))
        until = time.perf_counter() + seconds
        await asyncio.gather(
            *(client(c, random.Random(100 + i), until, True) for i, c in enumerate(connections))
        )
    finally:
        await asyncio.gather(*(c.close() for c in connections))
    return latencies


# -- streams ----------------------------------------------------------------------------------------


class Drain:
    """One open event stream on a raw connection whose client reads and drops what arrives (cheaper
    than httpx: 200 of these cost this process little next to the load it generates)."""

    def __init__(self) -> None:
        self.writer: asyncio.StreamWriter | None = None
        self.task: asyncio.Task[None] | None = None
        self.received = 0

    async def open(self, base: str, path: str, cookie: str | None) -> None:
        host, port = base.removeprefix("http://").split(":")
        reader, self.writer = await asyncio.open_connection(host, int(port))
        head = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n"
        head += f"Cookie: {cookie}\r\n" if cookie else ""
        self.writer.write(f"{head}\r\n".encode())
        status_line = (await reader.readuntil(b"\r\n\r\n")).split(b"\r\n", 1)[0].decode()
        if " 200 " not in status_line:
            raise SystemExit(f"bench web: {path} answered {status_line}")
        self.task = asyncio.ensure_future(self._drain(reader))

    async def _drain(self, reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(OSError):
            while chunk := await reader.read(65536):
                self.received += len(chunk)

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()


async def open_streams(base: str, count: int, comp: Competition, sessions: Sessions) -> list[Drain]:
    """`count` streams: half public boards, a quarter team pages and a quarter submission pages, the
    signed-in ones spread over the teams (one session per team and per 8 streams)."""
    teams = sorted(comp.tokens)
    active = comp.active or [ids[0] for ids in comp.owned.values() if ids]
    team_of = {sid: team for team, ids in comp.owned.items() for sid in ids}
    plan: list[tuple[str, str | None]] = []
    for i in range(count):
        if i % 4 in (0, 1):
            plan.append(("/live/leaderboard?phase=feedback", None))
        elif i % 4 == 2:
            team = teams[(i // 4) % len(teams)]
            plan.append(("/live/team", sessions.cookie(team)))
        else:
            sid = active[(i // 4) % len(active)]
            plan.append((f"/live/submissions/{sid}", sessions.cookie(team_of[sid])))
    drains = [Drain() for _ in plan]
    for start in range(0, len(plan), 50):  # not all at once: a burst of connects is not what we measure
        await asyncio.gather(
            *(
                d.open(base, p, c)
                for d, (p, c) in zip(drains[start : start + 50], plan[start : start + 50], strict=True)
            )
        )
    return drains


@dataclass
class Running:
    """A running submission of the bench's own, whose studies it stores one by one."""

    sid: str
    team: str
    studies: list[tuple[str, int]]


def running_submission(r: Any, comp: Competition) -> Running:
    from queue_schema.ids import new_submission_id
    from queue_schema.payloads import Submission
    from queue_schema.records import save_new_submission
    from queue_schema.states import SubmissionState

    spec = seed_data.seed_spec()
    team = max(comp.owned, key=lambda t: len(comp.owned[t]))
    studies = [(problem, study) for problem, _, indices in seed_data.job_order(spec) for study in indices]
    sub = Submission(
        id=new_submission_id(),
        team=team,
        state=SubmissionState.RUNNING,
        artifact_sha256="0" * 64,
        spec_name=spec.name,
        spec_hash=spec.hash,
        phase="feedback",
    )
    sub.progress.studies_total = len(studies)
    sub.progress.evals_total = len(studies) * spec.evals_per_study
    save_new_submission(r, sub)
    return Running(sub.id, team, studies)


async def live_updates(base: str, r: Any, run: Running, cookie: str, samples: int) -> list[float]:
    """Seconds from storing a study (records.write_study, the workers' write) to the stream's client
    reading the submission's new progress, `samples` times at random intervals."""
    from queue_schema.records import write_study
    from runtime import versions

    spec = seed_data.seed_spec()
    baselines = versions.baselines_for(spec)
    rng = random.Random(1)
    arrivals: asyncio.Queue[tuple[float, int]] = asyncio.Queue()

    async def read(response: httpx.Response) -> None:
        kind, data = "", ""
        async for line in response.aiter_lines():
            if line.startswith("event:"):
                kind = line[6:].strip()
            elif line.startswith("data:"):
                data = line[5:].strip()
            elif not line and kind == "submission":
                arrivals.put_nowait((time.perf_counter(), json.loads(data)["progress"]["studies_done"]))
                kind = ""

    latencies: list[float] = []
    url = f"{base}/live/submissions/{run.sid}"
    async with (
        httpx.AsyncClient(timeout=httpx.Timeout(30, connect=5)) as client,
        client.stream("GET", url, headers={"Cookie": cookie, "Accept": "text/event-stream"}) as response,
    ):
        if response.status_code != 200:
            raise SystemExit(f"bench web: the measured stream answered {response.status_code}")
        reader = asyncio.ensure_future(read(response))
        try:
            await asyncio.wait_for(arrivals.get(), 10)  # the stream's first view
            for done, (problem, study) in enumerate(run.studies[:samples], start=1):
                await asyncio.sleep(rng.uniform(0.2, 0.6))
                result = seed_data.study_result(rng, spec, baselines, problem, study, 0.3, time.time())
                started = time.perf_counter()
                await asyncio.to_thread(write_study, r, run.sid, 1, problem, result, 0.3)
                while True:
                    arrived, studies_done = await asyncio.wait_for(arrivals.get(), 30)
                    if studies_done >= done:
                        latencies.append(arrived - started)
                        break
        finally:
            reader.cancel()
    return latencies


async def events_at(r: Any, sids: list[str], rate: float, stop: asyncio.Event) -> int:
    """Study-like events on `sids` at `rate` a second (a progress counter moved and its event), until
    `stop`; how many."""
    from queue_schema import keys
    from queue_schema.records import add_event

    rng = random.Random(2)
    sent = 0
    while not stop.is_set() and sids:
        await asyncio.sleep(rng.expovariate(rate))
        sid = rng.choice(sids)

        def write(sid: str = sid) -> None:
            with r.pipeline() as pipe:
                pipe.hincrby(keys.submission(sid), "studies_done", 1)
                add_event(pipe, "study", sid, problem="bench", study=0, state="complete", version=1)
                pipe.execute()

        await asyncio.to_thread(write)
        sent += 1
    return sent


# -- the run ----------------------------------------------------------------------------------------


def _ms(values: list[float], q: float) -> float:
    value = percentile(values, q)
    return float("nan") if value is None else round(value * 1000, 2)


def measure(base: str, r: Any, comp: Competition, args: argparse.Namespace) -> dict[str, Any]:
    from queue_schema.records import load_submissions
    from queue_schema.states import SubmissionState

    sessions = Sessions(r, comp.tokens)
    team = max(comp.owned, key=lambda t: len(comp.owned[t]))
    scored = [s.id for s in load_submissions(r, comp.owned[team]) if s.state == SubmissionState.SCORED][:3]
    weights = page_weights(base, sessions.cookie(team), scored or comp.owned[team][:1])
    _log(f"pages (KB with their assets): {weights}")

    board = asyncio.run(timed_gets(base, "/", 8, args.seconds, args.board_rate))
    _log(f"leaderboard page: p95 {_ms(board, 95)} ms at {args.board_rate:g} req/s")

    pairs = comp.pairs()
    quiet, quiet_errors, _ = asyncio.run(_load(base, pairs, STATUS_CLIENTS, args.seconds, args.rate))
    _log(f"status without streams: p99 {_ms(quiet, 99)} ms at {args.rate:g} req/s")

    async def with_streams() -> dict[str, Any]:
        drains = await open_streams(base, args.streams, comp, sessions)
        _log(f"{len(drains)} streams open")
        try:
            run = running_submission(r, comp)
            live = await live_updates(base, r, run, sessions.cookie(run.team), args.samples)
            _log(f"live updates: p95 {round(percentile(live, 95) or 0, 3)} s over {len(live)} studies")
            stop = asyncio.Event()
            followed = [sid for sid in comp.active] or [run.sid]
            writer = asyncio.ensure_future(events_at(r, followed, args.event_rate, stop))
            busy, busy_errors, busy_s = await _load(base, pairs, STATUS_CLIENTS, args.seconds, args.rate)
            stop.set()
            events = await writer
            _log(f"status with {len(drains)} streams: p99 {_ms(busy, 99)} ms at {args.rate:g} req/s")
            return {
                "live": live,
                "busy": busy,
                "busy_errors": busy_errors,
                "busy_s": busy_s,
                "events": events,
                "streams_open": sum(d.task is not None and not d.task.done() for d in drains),
                "stream_bytes": sum(d.received for d in drains),
            }
        finally:
            await asyncio.gather(*(d.close() for d in drains))

    streamed = asyncio.run(with_streams())
    live = streamed["live"]
    return {
        "leaderboard_p95_ms": _ms(board, 95),
        "page_kb": max(weights.values()),
        "live_update_p95_s": round(percentile(live, 95) or float("nan"), 3),
        "status_p99_ms_with_200_streams": _ms(streamed["busy"], 99),
        "leaderboard_p50_ms": _ms(board, 50),
        "leaderboard_p99_ms": _ms(board, 99),
        "leaderboard_requests": len(board),
        "leaderboard_rate": args.board_rate,
        "page_kb_each": weights,
        "live_update_p50_s": round(percentile(live, 50) or float("nan"), 3),
        "live_update_max_s": round(max(live, default=float("nan")), 3),
        "live_update_samples": len(live),
        "status_p99_ms_without_streams": _ms(quiet, 99),
        "status_p50_ms_with_200_streams": _ms(streamed["busy"], 50),
        "status_rate": args.rate,
        "status_clients": STATUS_CLIENTS,
        "status_requests": len(quiet) + len(streamed["busy"]),
        "status_errors": quiet_errors + streamed["busy_errors"],
        "streams": args.streams,
        "streams_open_at_end": streamed["streams_open"],
        "stream_events_sent": streamed["events"],
        "stream_bytes_received": streamed["stream_bytes"],
    }


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench web", description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    parser.add_argument("--submissions", type=int, default=seed_data.DEFAULT_SUBMISSIONS)
    parser.add_argument("--teams", type=int, default=seed_data.DEFAULT_TEAMS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--detailed", type=int, default=seed_data.DEFAULT_DETAILED)
    parser.add_argument("--streams", type=int, default=200, help="event streams open while measuring status")
    parser.add_argument("--seconds", type=float, default=10.0, help="each latency measurement's length")
    parser.add_argument("--rate", type=float, default=500.0, help="status requests a second offered")
    parser.add_argument("--board-rate", type=float, default=50.0, help="leaderboard pages a second offered")
    parser.add_argument("--samples", type=int, default=30, help="studies stored for the live update figure")
    parser.add_argument("--event-rate", type=float, default=20.0, help="study events a second on the streams")
    args = parser.parse_args(argv)
    if args.submissions < 1 or args.teams < 1 or args.streams < 0 or not 1 <= args.samples <= 60:
        parser.error("--submissions and --teams must be positive, --streams >= 0, --samples 1 to 60")

    with scratch_state("bbo-bench-web-") as state:
        stack = Stack(state)
        r = stack.start_store()
        try:
            _log(f"seeding {args.submissions} submissions of {args.teams} teams")
            comp = seed(r, args)
            _log(f"seeded in {comp.seeded['seconds']} s; {len(comp.active)} queued or running")
            base, served_by = start_gateway(stack)
            _log(f"gateway: {served_by} at {base}")
            backlog = archive_backlog(r)
            figures = measure(base, r, comp, args)
        finally:
            stack.stop(30)
        # The gateway's log (with the store's) is in the state folder, which goes with the run.
        log_text = stack.log.read_text(errors="replace") if stack.log and stack.log.exists() else ""
        figures["gateway_tracebacks"] = log_text.count("Traceback")
        if figures["gateway_tracebacks"]:
            _log(f"the gateway logged tracebacks; the last lines:\n{log_text[-3000:]}")
    figures |= {
        "archive_backlog_s": backlog,
        "gateway": served_by,
        "submissions": comp.seeded["submissions"],
        "teams": comp.seeded["teams"],
        "targets": TARGETS,
        "within_targets": {name: figures[name] <= limit for name, limit in TARGETS.items()},
    }
    print_figures(figures, args.json, width=32)
