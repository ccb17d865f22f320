"""python -m bench abuse [--json]: the worst team's uploads and optimizers through the full path.

A served gateway and one worker (docker where an engine runs, else bwrap) on a store of their own, with
the demo rules cut to two quick problems. First every hostile upload of `bench/hostile.py` (entry names
that crashed extraction, a source that took the gateway 1.3 GiB to parse, bombs, sdists...), then a 20
MiB upload by a team with no quota left; then every hostile optimizer (floods, suggestions outside the
space, replies that crashed the decoder, escape-laden output, a fork bomb) is submitted and scored, beside
a well-behaved one; last, `bench/terminal_scan.py` drives `bbo admin up` and the console in
pseudo-terminals while a hostile submission is on screen.

Figures (targets in issue 14):
- refunded_hostile: hostile submissions not charged to the team (0);
- gateway_5xx: 5xx answers to anything sent (0);
- gateway_peak_rss_mb, gateway_idle_rss_mb: the gateway process while the hostile uploads arrive
  (peak <= idle + 100);
- worker_peak_rss_ratio: the worker's peak RSS (the worker and its work horse) while a flooding optimizer
  is scored, over its peak while the well-behaved one is (<= 1.2);
- max_study_bytes: the largest study stored for any hostile submission (<= 64 KiB);
- osc_reaching_terminal: hostile escape sequences that reached the terminal of up or the console (0);
- unexpected: uploads not refused with a 4xx, submissions that did not end as bench/hostile.py says.
"""

from __future__ import annotations

import argparse
import contextlib
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench import hostile
from bench.common import logger, print_figures, scratch_state
from bench.soak import Fleet, soak_spec

log = logger("abuse")
PROBLEMS = ["DT-iris-acc", "lasso-diabetes-mae"]
SAMPLE_S = 0.05
SCORE_TIMEOUT_S = 600.0
OVER_QUOTA_BYTES = 20 * 1024 * 1024


class PeakRss:
    """The peak RSS (MiB) of a process tree, sampled on a thread: the root and its Python descendants,
    not a sandbox below them (a docker CLI, a bwrap namespace: the optimizer's own memory is its limit's
    business, not the worker's)."""

    def __init__(self, pid: int) -> None:
        self.root = psutil.Process(pid)
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _tree(self) -> list[psutil.Process]:
        found, todo = [], [self.root]
        while todo:
            process = todo.pop()
            with contextlib.suppress(psutil.Error):
                if process is not self.root and not process.name().startswith("python"):
                    continue
                found.append(process)
                todo.extend(process.children())
        return found

    def _run(self) -> None:
        while not self._stop.is_set():
            total = 0
            for process in self._tree():
                with contextlib.suppress(psutil.Error):
                    total += process.memory_info().rss
            self.peak = max(self.peak, total / 2**20)
            self._stop.wait(SAMPLE_S)


def _upload(client: httpx.Client, token: str, data: bytes, name: str) -> httpx.Response:
    return client.post(
        "/v1/submissions",
        headers={"Authorization": f"Bearer {token}"},
        files={"file": (f"{name}.zip", data, "application/zip")},
    )


def upload_phase(fleet: Fleet, r: Any, client: httpx.Client) -> dict[str, Any]:
    from competition import quotas, teams
    from queue_schema import keys

    token = teams.add_team(r, "intruder")
    broke = teams.add_team(r, "broke")
    quotas.set_override(r, "broke", 0)
    assert fleet.gateway is not None
    gateway = psutil.Process(fleet.gateway.pid)
    client.get("/health")
    idle = gateway.memory_info().rss / 2**20
    statuses: dict[str, int] = {}
    with PeakRss(fleet.gateway.pid) as peak:
        for upload in hostile.UPLOADS:
            data = upload.build()
            started = time.monotonic()
            response = _upload(client, token, data, upload.name)
            statuses[upload.name] = response.status_code
            log(
                f"upload {upload.name} ({len(data) / 2**20:.1f} MiB): {response.status_code} "
                f"in {time.monotonic() - started:.2f} s"
            )
        started = time.monotonic()
        response = _upload(client, broke, b"\0" * OVER_QUOTA_BYTES, "over_quota")
        over_quota_s = time.monotonic() - started
        statuses["over_quota"] = response.status_code
    log(f"over-quota upload of 20 MiB: {response.status_code} in {over_quota_s:.2f} s")
    return {
        "statuses": statuses,
        "gateway_idle_rss_mb": round(idle, 1),
        "gateway_peak_rss_mb": round(peak.peak, 1),
        "over_quota_upload_s": round(over_quota_s, 3),
        "stored_after_uploads": int(r.zcard(keys.submissions_index())),
    }


def scoring_phase(fleet: Fleet, r: Any, client: httpx.Client) -> dict[str, Any]:
    from competition import teams
    from queue_schema import keys
    from queue_schema.records import load_submission
    from queue_schema.states import TERMINAL_STATES

    token = teams.add_team(r, "attacker")
    worker = next(iter(fleet.workers.values())).pid
    outcomes: dict[str, dict[str, Any]] = {}
    statuses: dict[str, int] = {}
    for name in hostile.OPTIMIZERS:
        response = _upload(client, token, hostile.optimizer_zip(name), name)
        statuses[name] = response.status_code
        if response.status_code != 201:
            log(f"{name}: upload refused, {response.status_code} {response.text[:200]}")
            continue
        sid = response.json()["id"]
        started = time.monotonic()
        with PeakRss(worker) as peak:
            while True:
                sub = load_submission(r, sid)
                if sub is not None and sub.state in TERMINAL_STATES:
                    break
                if time.monotonic() - started > SCORE_TIMEOUT_S:
                    raise SystemExit(f"bench abuse: {name} not scored within {SCORE_TIMEOUT_S:g} s")
                time.sleep(0.1)
        study_bytes = [
            len(raw)
            for problem in PROBLEMS
            for raw in r.hvals(keys.study_results(sid, sub.score_version, problem))
        ]
        outcomes[name] = {
            "state": sub.state.value,
            "cause": sub.failure.cause.value if sub.failure else None,
            "charged": sub.charged,
            "seconds": round(time.monotonic() - started, 1),
            "worker_peak_rss_mb": round(peak.peak, 1),
            "max_study_bytes": max(study_bytes, default=0),
        }
        log(f"{name}: {outcomes[name]}")
    return {"statuses": statuses, "outcomes": outcomes}


def run(state: Path, args: argparse.Namespace) -> dict[str, Any]:
    from bench import terminal_scan
    from bench.common import embedded_store

    spec = soak_spec(state, PROBLEMS, studies=2, quota=1000)
    backend = args.backend if args.backend != "auto" else _isolating_backend()
    log(f"backend {backend}, spec {spec}")
    fleet = Fleet(state)
    r = fleet.start(spec, workers=1, backend=backend)
    try:
        with httpx.Client(base_url=fleet.base, timeout=120) as client:
            uploads = upload_phase(fleet, r, client)
            scoring = scoring_phase(fleet, r, client)
    finally:
        fleet.stop()
    osc = None
    if not args.skip_terminal:
        with embedded_store() as server:
            osc = terminal_scan.osc_reaching_terminal(server.url, backend=backend)

    outcomes = scoring["outcomes"]
    hostile_names = [name for name in outcomes if name != "well_behaved"]
    unexpected = [f"upload {n}: {s}" for n, s in uploads["statuses"].items() if not 400 <= s < 500]
    for name, outcome in outcomes.items():
        if (outcome["state"], outcome["cause"]) != hostile.EXPECTED_OUTCOME[name]:
            unexpected.append(f"{name}: {outcome['state']} {outcome['cause']}")
    reference = outcomes.get("well_behaved", {}).get("worker_peak_rss_mb") or None
    floods = [outcomes[n]["worker_peak_rss_mb"] for n in hostile.FLOODS if n in outcomes]
    every_status = [*uploads["statuses"].values(), *scoring["statuses"].values()]
    return {
        "backend": backend,
        "refunded_hostile": sum(not outcomes[n]["charged"] for n in hostile_names),
        "gateway_5xx": sum(s >= 500 for s in every_status),
        "gateway_idle_rss_mb": uploads["gateway_idle_rss_mb"],
        "gateway_peak_rss_mb": uploads["gateway_peak_rss_mb"],
        "stored_after_hostile_uploads": uploads["stored_after_uploads"],
        "gateway_rss_over_idle_mb": round(uploads["gateway_peak_rss_mb"] - uploads["gateway_idle_rss_mb"], 1),
        "over_quota_upload_s": uploads["over_quota_upload_s"],
        "worker_peak_rss_mb_well_behaved": reference,
        "worker_peak_rss_ratio": round(max(floods) / reference, 3) if floods and reference else None,
        "max_study_bytes": max((outcomes[n]["max_study_bytes"] for n in hostile_names), default=0),
        "osc_reaching_terminal": osc,
        "hostile_uploads": len(hostile.UPLOADS) + 1,
        "hostile_submissions": len(hostile_names),
        "unexpected": unexpected,
        "outcomes": {
            n: f"{o['state']}/{o['cause'] or '-'}/{'charged' if o['charged'] else 'refunded'}"
            for n, o in outcomes.items()
        },
    }


def _isolating_backend() -> str:
    from workers.sandbox import docker

    return "docker" if docker.available() else "bwrap"


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench abuse", description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    parser.add_argument(
        "--backend",
        default="auto",
        choices=("auto", "docker", "bwrap", "process"),
        help="the sandbox (auto: docker where an engine runs and the image is built, else bwrap)",
    )
    parser.add_argument("--skip-terminal", action="store_true", help="leave out osc_reaching_terminal")
    parser.add_argument("--keep-state", action="store_true", help="keep the scratch state folder")
    args = parser.parse_args(argv)
    with scratch_state("bbo-abuse-", keep=args.keep_state) as state:
        if args.keep_state:
            log(f"state folder kept: {state}")
        figures = run(state, args)
    print_figures(figures, args.json)
