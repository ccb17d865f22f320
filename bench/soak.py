"""Soak figures: many teams uploading steadily for minutes, and whether anything grows that should not.

Everything runs against real parts in a temporary state folder (an embedded Redis of its own, never the
user's): a uvicorn gateway started with `bbo admin serve` and 2 RQ workers started with `bbo admin worker`.
Each team is a client thread with a real token uploading a small starter-kit zip (random search, salted so
every upload is its own artifact) through HTTP once every --interval seconds (random phase per team), as
`bbo submit` does. The spec is the demo's with a large daily quota and the feedback phase cut to
--problems x --studies (same rounds, batch and baseline settings, so the demo's baselines apply), so that
the 2-core machine keeps up: the queue must stay bounded for a soak to mean anything.

Phases: a warm-up (--warmup minutes of the same load: imports, caches, the first jobs), then the measured
load (--minutes), then a bounded drain (--drain seconds, no new uploads) before the figures are taken.

- scored_per_hour: submissions that reached `scored` during the load phase, per hour of it.
- p50/p95_time_to_score_s: from the upload's 201 answer to the record's scored_at, for the uploads of the
  load phase that were scored by the end of the drain.
- max_rss_growth_mb: per long-lived process (gateway, each worker's main process, redis-server), the
  maximum RSS during the load phase minus the RSS at the end of the warm-up (sampled every --sample-s
  seconds with psutil); rss_slope_mb_per_min is the least-squares trend over the load phase, so a leak
  shows as a steady positive slope rather than one spike.
- redis_bytes_per_submission: growth of INFO memory used_memory over the load phase divided by the
  submissions stored in it (records, artifacts, events, results and RQ's bookkeeping together).
- left_queued / left_running: accepted submissions not finished at the end of the drain.

The workers (and the gateway, which checks it) run with BBO_ALLOW_UNSAFE_SANDBOX=1 and the process
backend: studies run without isolation (the output says so); this process does not set it.

    python -m bench soak --json [--minutes 3] [--warmup 1] [--teams 20] [--interval 90] [--drain 180]
"""

from __future__ import annotations

from queue_schema.settings import pin_threads

pin_threads()

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import psutil  # noqa: E402

from bench.common import (  # noqa: E402
    Stack,
    logger,
    percentile,
    print_figures,
    salted_zip,
    scratch_state,
    team_api,
    try_upload,
)

ROOT = Path(__file__).resolve().parent.parent
SUBMISSION = ROOT / "tests" / "submissions" / "random_search"
FINISHED = ("scored", "failed", "stopped")
WORKERS = 2


_log = logger("soak")


def _percentile(values: list[float], q: float) -> float | None:
    value = percentile(values, q)
    return None if value is None else round(value, 2)


def _slope_per_min(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) points, per minute."""
    if len(points) < 2:
        return 0.0
    mean_t = sum(t for t, _ in points) / len(points)
    mean_v = sum(v for _, v in points) / len(points)
    spread = sum((t - mean_t) ** 2 for t, _ in points)
    if spread == 0:
        return 0.0
    return sum((t - mean_t) * (v - mean_v) for t, v in points) / spread * 60


def soak_spec(work: Path, problems: list[str], studies: int, quota: int) -> Path:
    """The demo spec with its feedback phase cut down and a quota no soak reaches; its path."""
    from runtime.spec import SPECS_DIR, load

    text = (SPECS_DIR / "demo.toml").read_text()
    text, cut = re.subn(
        r"\[phases\.feedback\]\nproblems = .*\nstudies = \d+\n",
        f"[phases.feedback]\nproblems = {json.dumps(problems)}\nstudies = {studies}\n",
        text,
    )
    text, raised = re.subn(r"(?m)^daily_quota = \d+", f"daily_quota = {quota}", text)
    if cut != 1 or raised != 1:
        raise SystemExit("bench soak: runtime/specs/demo.toml changed shape; update soak_spec")
    path = work / "soak-spec.toml"
    path.write_text(text)
    load(path)  # a bad --problems fails here, with the spec's own message
    return path


# -- processes --------------------------------------------------------------------------------------


class Fleet(Stack):
    """The embedded Redis, the gateway and the workers of one soak, in a state folder of their own."""

    def __init__(self, state: Path) -> None:
        super().__init__(state, prefix="soak")

    def start(self, spec: Path, workers: int, backend: str = "process") -> Any:
        """The store, the gateway answering /health and `workers` registered workers; a store client."""
        r = self.start_store()
        self.start_gateway(spec, backend=backend, timeout=180)
        self.start_workers(workers, timeout=180)
        return r

    def processes(self) -> dict[str, int]:
        """The long-lived processes whose memory is watched, by a name for the figures."""
        named = {"gateway": self.gateway.pid if self.gateway else 0}
        named |= {f"worker-{i}": child.pid for i, child in enumerate(self.workers.values())}
        named["redis-server"] = self.store.process.pid if self.store.process else 0
        return named


# -- load -------------------------------------------------------------------------------------------


@dataclass
class Ledger:
    """What the clients saw: accepted uploads (id -> accept time) and refusals, under one lock."""

    accepted: dict[str, float] = field(default_factory=dict)
    refused: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def accepted_between(self, start: float, end: float) -> list[str]:
        with self.lock:
            return [sid for sid, at in self.accepted.items() if start <= at < end]


def team_client(
    base: str, team: str, token: str, interval: float, stop: threading.Event, ledger: Ledger, seed: int
) -> None:
    """One team: an upload every `interval` seconds on a fixed schedule from a random phase (a slow answer
    does not push the next upload back, so the offered rate stays what was asked)."""
    rng = random.Random(seed)
    due = time.monotonic() + rng.uniform(0, interval)
    count = 0
    with team_api(base, token) as api:
        while not stop.wait(max(0.0, due - time.monotonic())):
            due += interval
            data = salted_zip(SUBMISSION, f"{team}-{count}-{rng.getrandbits(64):x}")
            count += 1
            outcome = try_upload(api, data)
            with ledger.lock:
                if outcome.id is not None:
                    ledger.accepted[outcome.id] = time.time()
                else:
                    ledger.refused.append(outcome.why)


class Sampler:
    """RSS of the watched processes and Redis's used_memory every few seconds, on a thread."""

    def __init__(self, processes: dict[str, int], r: Any, every: float) -> None:
        self.handles = {name: psutil.Process(pid) for name, pid in processes.items()}
        self.r = r
        self.every = every
        self.rss: dict[str, list[tuple[float, float]]] = {name: [] for name in processes}
        self.used_memory: list[tuple[float, int]] = []
        self._lock = threading.Lock()  # samples taken by hand and by the thread stay in time order
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def sample(self) -> None:
        with self._lock:
            self._sample()

    def _sample(self) -> None:
        now = time.time()
        for name, handle in self.handles.items():
            with contextlib.suppress(psutil.Error):
                self.rss[name].append((now, handle.memory_info().rss / 2**20))
        with contextlib.suppress(Exception):  # a busy store must not end the soak; the next sample counts
            self.used_memory.append((now, int(self.r.info("memory")["used_memory"])))

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.every)

    def memory_figures(self, start: float, end: float) -> dict[str, Any]:
        growth, slope, baseline = {}, {}, {}
        for name, points in self.rss.items():
            before = [v for t, v in points if t <= start]
            during = [(t, v) for t, v in points if start <= t <= end]
            if not before or not during:
                continue
            baseline[name] = round(before[-1], 1)
            growth[name] = round(max(v for _, v in during) - before[-1], 1)
            slope[name] = round(_slope_per_min([(t - start, v) for t, v in during]), 2)
        return {
            "max_rss_growth_mb": growth,
            "rss_slope_mb_per_min": slope,
            "rss_mb_end_of_warmup": baseline,
        }

    def used_memory_at(self, moment: float) -> int | None:
        """The last used_memory sampled at or before `moment`."""
        before = [v for t, v in self.used_memory if t <= moment]
        return before[-1] if before else None


# -- figures ----------------------------------------------------------------------------------------


def outcome_figures(r: Any, ledger: Ledger, load_start: float, load_end: float) -> dict[str, Any]:
    from queue_schema.records import load_submissions

    with ledger.lock:
        accepted = dict(ledger.accepted)
        refused = list(ledger.refused)
    subs = {sub.id: sub for sub in load_submissions(r, list(accepted))}
    states = {sid: (subs[sid].state.value if sid in subs else "missing") for sid in accepted}
    scored_in_load = sum(
        1 for sub in subs.values() if sub.scored_at is not None and load_start <= sub.scored_at < load_end
    )
    waits = [
        subs[sid].scored_at - at
        for sid, at in accepted.items()
        if load_start <= at < load_end and states[sid] == "scored" and subs[sid].scored_at is not None
    ]
    for sid, state in states.items():
        if state in ("failed", "stopped", "missing"):
            failure = subs[sid].failure if sid in subs else None
            _log(f"{sid} ended {state}: {failure}")
    for why in sorted(set(refused))[:5]:
        _log(f"an upload was refused: {why}")
    load_hours = (load_end - load_start) / 3600
    return {
        "scored_per_hour": round(scored_in_load / load_hours, 1) if load_hours > 0 else 0.0,
        "p50_time_to_score_s": _percentile(waits, 50),
        "p95_time_to_score_s": _percentile(waits, 95),
        "time_to_score_samples": len(waits),
        "submissions": len(accepted),
        "submissions_in_load": sum(load_start <= at < load_end for at in accepted.values()),
        "scored_in_load": scored_in_load,
        "refused": len(refused),
        "scored": sum(s == "scored" for s in states.values()),
        "failed": sum(s == "failed" for s in states.values()),
        "stopped": sum(s == "stopped" for s in states.values()),
        "missing": sum(s == "missing" for s in states.values()),
        "left_queued": sum(s == "queued" for s in states.values()),
        "left_running": sum(s == "running" for s in states.values()),
    }


def _key_family(key: str) -> str:
    """`bbo:sub:ID` -> `bbo:sub`, `bbo:artifact:SHA:meta` -> `bbo:artifact:meta`, a team's queue ->
    `bbo-team-*`."""
    if key.startswith("bbo-team-"):
        return "bbo-team-*"
    parts = key.split(":")
    family = ":".join(parts[:2])
    return f"{family}:meta" if len(parts) > 2 and parts[-1] == "meta" else family


def redis_breakdown(r: Any, top: int = 10) -> dict[str, int]:
    """Bytes (MEMORY USAGE) of the store's keys by family, largest first: where the per-submission
    cost goes."""
    keys = list(r.scan_iter(count=1000))
    pipe = r.pipeline(transaction=False)
    for key in keys:
        pipe.memory_usage(key, samples=0)
    totals: dict[str, int] = {}
    for key, size in zip(keys, pipe.execute(), strict=True):
        family = _key_family(key if isinstance(key, str) else key.decode())
        totals[family] = totals.get(family, 0) + int(size or 0)
    return dict(sorted(totals.items(), key=lambda item: -item[1])[:top])


def _unfinished(r: Any, ledger: Ledger) -> int:
    from queue_schema.records import load_submissions

    with ledger.lock:
        ids = list(ledger.accepted)
    return sum(sub.state.value not in FINISHED for sub in load_submissions(r, ids))


# -- main -------------------------------------------------------------------------------------------


def run(state: Path, args: argparse.Namespace) -> dict[str, Any]:
    from competition import teams

    spec = soak_spec(state, args.problems.split(","), args.studies, quota=1_000_000)
    fleet = Fleet(state)
    ledger = Ledger()
    stop = threading.Event()
    threads: list[threading.Thread] = []
    sampler: Sampler | None = None
    try:
        r = fleet.start(spec, WORKERS)
        tokens = {f"soak-{i:02d}": teams.add_team(r, f"soak-{i:02d}") for i in range(args.teams)}
        sampler = Sampler(fleet.processes(), r, args.sample_s)
        sampler.start()
        started = time.time()
        _log(
            f"{args.teams} teams, one upload each every {args.interval:g} s "
            f"({args.teams / args.interval * 3600:.0f}/h offered); warm-up {args.warmup:g} min"
        )
        for index, (team, token) in enumerate(tokens.items()):
            thread = threading.Thread(
                target=team_client,
                args=(fleet.base, team, token, args.interval, stop, ledger, index),
                daemon=True,
            )
            thread.start()
            threads.append(thread)
        time.sleep(args.warmup * 60)
        sampler.sample()  # the baseline: the end of the warm-up, exactly
        load_start = time.time()
        submissions_before = len(ledger.accepted)
        _log(f"warm-up done: {submissions_before} accepted, {_unfinished(r, ledger)} unfinished; load begins")
        until = load_start + args.minutes * 60
        while time.time() < until:
            time.sleep(min(30.0, max(0.0, until - time.time())))
            _log(
                f"load: {time.time() - load_start:.0f} s, {len(ledger.accepted)} accepted, "
                f"{_unfinished(r, ledger)} unfinished"
            )
        sampler.sample()
        load_end = time.time()
        stop.set()
        for thread in threads:
            thread.join(90)
        stored_in_load = len(ledger.accepted_between(load_start, load_end))
        used_before, used_after = sampler.used_memory_at(load_start), sampler.used_memory_at(load_end)
        breakdown = redis_breakdown(r)
        deadline = time.monotonic() + args.drain
        while (left := _unfinished(r, ledger)) and time.monotonic() < deadline:
            time.sleep(1.0)
        _log(f"drain: {left} unfinished after {args.drain - max(0.0, deadline - time.monotonic()):.0f} s")
        sampler.stop()
        figures = outcome_figures(r, ledger, load_start, load_end)
        figures |= sampler.memory_figures(load_start, load_end)
        growth = (used_after - used_before) if used_before is not None and used_after is not None else None
        figures["redis_used_memory_growth_bytes"] = growth
        figures["redis_bytes_per_submission"] = (
            round(growth / stored_in_load) if growth is not None and stored_in_load else None
        )
        figures["redis_used_memory_end_mb"] = round((used_after or 0) / 2**20, 2)
        figures["redis_bytes_by_key_family_end"] = breakdown
        figures["offered_per_hour"] = round(args.teams / args.interval * 3600, 1)
        figures["warmup_s"] = round(load_start - started, 1)
        figures["load_s"] = round(load_end - load_start, 1)
        figures["run_s"] = round(time.time() - started, 1)
        return figures
    finally:
        stop.set()
        if sampler is not None:
            sampler.stop()
        fleet.stop()


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench soak", description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    parser.add_argument("--minutes", type=float, default=3.0, help="measured load phase (minutes)")
    parser.add_argument("--warmup", type=float, default=1.0, help="warm-up under the same load (minutes)")
    parser.add_argument("--teams", type=int, default=20, help="teams, each a client thread")
    # 20 teams every 90 s offer 800 submissions/h: well under the ~2,000/h two workers scored of the
    # default spec on a busy 2-core machine, so the queue stays short and the figures are steady-state.
    parser.add_argument(
        "--interval", type=float, default=90.0, help="seconds between two uploads of one team"
    )
    parser.add_argument(
        "--drain", type=float, default=180.0, help="seconds to let the queue empty after the load"
    )
    parser.add_argument(
        "--problems",
        default="DT-iris-acc,lasso-diabetes-mae",
        help="feedback problems of the soak's spec (comma-separated; one job each)",
    )
    parser.add_argument("--studies", type=int, default=1, help="studies per problem")
    parser.add_argument("--sample-s", type=float, default=3.0, help="seconds between memory samples")
    args = parser.parse_args(argv)
    if args.teams < 1 or args.interval <= 0 or args.minutes <= 0 or args.warmup < 0:
        parser.error("--teams, --interval and --minutes must be positive, --warmup not negative")

    _log("workers run studies with --backend process and BBO_ALLOW_UNSAFE_SANDBOX=1 (no isolation)")
    figures: dict[str, Any] = {"backend": "process", "unsafe_sandbox_for_workers": True}
    figures |= {
        "teams": args.teams,
        "interval_s": args.interval,
        "workers": WORKERS,
        "problems": args.problems.split(","),
        "studies": args.studies,
    }
    with scratch_state("bbo-soak-") as state:
        figures |= run(state, args)
    print_figures(figures, args.json)


if __name__ == "__main__":
    main(sys.argv[1:])
