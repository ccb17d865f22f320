"""Sandbox start-up per backend, and the docker path's overhead against raw in-process bayesmark.

A start is timed from the backend's `launch` (for docker: the container's creation) to the optimizer's
`hello`, which the host sends once the submission's optimizer.py has been imported: the random-search
example of the tests, which imports bayesmark.random_search (numpy and scipy). Each start is split where
the sandbox's start marker lets us look in: `launch` (the backend's own work before any process runs),
`to_marker` (the runtime: container or namespaces, the interpreter and the host's import) and
`marker_to_hello` (the submission's import). The artifact is prepared (staged, bundled packages
installed) once before the clock, as a worker does once per artifact; one start per backend warms the
page cache and is reported apart (`first_start_s`). A backend that cannot run here is skipped with its
reason (`<backend>_skipped`).

A warm start (workers/warm_slot.py: the sandbox a worker's next horse starts before its job is known)
is timed from the harness's load line, once the warm host has had WARM_WAIT_S to get ready as it has
while the previous job runs, to hello: `<backend>_warm_load_to_hello_p50_s`, what is left of a start on
a job's path.

`overhead_ratio` is bench/overhead.py's comparison (the same problems, seeds and suggestions by raw
bayesmark in this process and by a submission scored by one worker; the median of `--repeat` pairs) with
the docker backend instead of the process one; `identical_losses` says the two sides agreed;
`--also-cold` scores them once more with the worker's warm sandboxes off (`overhead_ratio_cold`).

    python -m bench sandbox --json [--starts 20] [--warm-starts 5] [--backends docker,bwrap] [--no-overhead]
                                   [--repeat 3]
"""

from __future__ import annotations

from queue_schema.settings import pin_threads

pin_threads()

import argparse  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from bench import overhead  # noqa: E402
from bench.common import logger, percentile, print_figures, scratch_state  # noqa: E402

log = logger("sandbox")

BACKENDS = ("docker", "bwrap")
START_TARGET_S = 0.5  # p50, per backend (issue 18)
RATIO_TARGET = 1.10  # docker path against raw bayesmark
HELLO_TIMEOUT_S = 60.0
WARM_WAIT_S = 1.0
MARKER_POLL_S = 0.001


@dataclass
class Starts:
    """The seconds of each measured start, and of its parts."""

    total: list[float] = field(default_factory=list)
    launch: list[float] = field(default_factory=list)
    to_marker: list[float] = field(default_factory=list)
    marker_to_hello: list[float] = field(default_factory=list)


def backend_named(name: str) -> Any:
    """The backend itself (never `auto`): SandboxUnavailable says why it cannot run here."""
    from workers.sandbox import select

    return select(name)


def one_start(backend: Any, submission: Path, limits: Any) -> tuple[float, float, float | None]:
    """Launch, wait for hello, close: (seconds to hello, seconds in launch, seconds to the start marker or
    None where the backend has none). The marker is polled from this thread, so its time is exact to
    about a millisecond and the hello's is not delayed by it (the host sends hello on its own)."""
    from workers.optimizer_process import OptimizerProcess

    started = time.perf_counter()
    launched = backend.launch(submission, limits)
    launch_s = time.perf_counter() - started
    proc = OptimizerProcess(launched).start()
    marker_s = None
    try:
        if launched.started is not None:
            deadline = started + HELLO_TIMEOUT_S
            while not launched.started() and time.perf_counter() < deadline and proc.returncode is None:
                time.sleep(MARKER_POLL_S)
            marker_s = time.perf_counter() - started
        hello = proc.wait_hello(HELLO_TIMEOUT_S)
        total = time.perf_counter() - started
    finally:
        proc.close()
    if hello.failure is not None:
        raise SystemExit(f"bench sandbox: the optimizer did not load under {backend.name}: {hello.failure}")
    return total, launch_s, marker_s


def measure(backend: Any, starts: int, submission: Path, limits: Any) -> tuple[float, Starts]:
    """One warm-up start (its seconds), then `starts` measured ones."""
    backend.prepare(submission, limits)
    first, _, _ = one_start(backend, submission, limits)
    measured = Starts()
    for _ in range(starts):
        total, launch_s, marker_s = one_start(backend, submission, limits)
        measured.total.append(total)
        measured.launch.append(launch_s)
        if marker_s is not None:
            measured.to_marker.append(marker_s - launch_s)
            measured.marker_to_hello.append(total - marker_s)
    return first, measured


def warm_starts(backend: Any, count: int, submission: Path, limits: Any) -> list[float]:
    """Seconds from the load line to hello, for `count` warm sandboxes given WARM_WAIT_S to get ready."""
    from workers.optimizer_process import OptimizerProcess

    seconds = []
    for _ in range(count):
        proc = OptimizerProcess(backend.launch_warm(limits)).start()
        try:
            time.sleep(WARM_WAIT_S)
            started = time.perf_counter()
            if not proc.load(submission):
                raise SystemExit(f"bench sandbox: a warm {backend.name} sandbox refused the submission")
            hello = proc.wait_hello(HELLO_TIMEOUT_S)
            seconds.append(time.perf_counter() - started)
        finally:
            proc.close()
        if hello.failure is not None:
            raise SystemExit(f"bench sandbox: the optimizer did not load warm under {backend.name}")
    return seconds


def start_figures(name: str, first: float, measured: Starts) -> dict[str, Any]:
    def p(values: list[float], q: float) -> float | None:
        value = percentile(values, q)
        return None if value is None else round(value, 3)

    figures = {
        f"{name}_start_p50_s": p(measured.total, 50),
        f"{name}_start_p95_s": p(measured.total, 95),
        f"{name}_first_start_s": round(first, 3),
        f"{name}_launch_p50_s": p(measured.launch, 50),
    }
    if measured.to_marker:
        figures[f"{name}_to_marker_p50_s"] = p(measured.to_marker, 50)
        figures[f"{name}_marker_to_hello_p50_s"] = p(measured.marker_to_hello, 50)
    return figures


def starts_of(names: list[str], starts: int, warm_count: int) -> dict[str, Any]:
    from runtime.spec import Limits
    from workers.sandbox.base import SandboxUnavailable

    # The spec's default limits; the time limits only bound the wait for hello here.
    limits = Limits(suggest_budget_s=600.0, call_timeout_s=HELLO_TIMEOUT_S)
    figures: dict[str, Any] = {"starts": starts, "warm_starts": warm_count}
    for name in names:
        try:
            backend = backend_named(name)
        except SandboxUnavailable as exc:
            log(f"{name}: skipped: {exc}")
            figures[f"{name}_skipped"] = str(exc)
            continue
        log(f"{name}: {starts} starts")
        first, measured = measure(backend, starts, overhead.OPTIMIZER, limits)
        figures.update(start_figures(name, first, measured))
        warm = warm_starts(backend, warm_count, overhead.OPTIMIZER, limits)
        figures[f"{name}_warm_load_to_hello_p50_s"] = round(percentile(warm, 50) or 0.0, 4)
        log(f"{name}: p50 {figures[f'{name}_start_p50_s']} s, p95 {figures[f'{name}_start_p95_s']} s")
    return figures


def overhead_of(state: Path, args: argparse.Namespace) -> dict[str, Any]:
    """bench/overhead.py's comparison (`--repeat` pairs of raw and platform runs), the platform on docker."""
    shape = (args.problems.split(","), args.studies, args.rounds, args.batch)
    found = overhead.compare(state, *shape, repeat=args.repeat, backend="docker")
    log(f"docker overhead ratios: {found.ratios}")
    cold: dict[str, Any] = {}
    if args.also_cold:
        cold_found = overhead.compare(state, *shape, repeat=args.repeat, backend="docker", warm=False)
        cold = {
            "overhead_ratio_cold": round(cold_found.ratio, 4),
            "overhead_platform_cold_s": cold_found.figures()["platform_s"],
            "identical_losses_cold": cold_found.identical_losses,
        }
    return {
        **found.figures("overhead_"),
        "overhead_repeat": args.repeat,
        **cold,
        "identical_losses": found.identical_losses,
        "mix": args.problems,
        "studies_per_problem": args.studies,
        "rounds": args.rounds,
        "batch": args.batch,
    }


def unavailable_reason(name: str) -> str | None:
    """Why the backend `name` cannot run here, or None."""
    from workers.sandbox.base import SandboxUnavailable

    try:
        backend_named(name)
    except SandboxUnavailable as exc:
        return str(exc)
    return None


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench sandbox", description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    parser.add_argument("--starts", type=int, default=20, help="measured starts per backend")
    parser.add_argument("--warm-starts", type=int, default=5, help="warm starts per backend")
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--no-overhead", action="store_true", help="starts only (no overhead_ratio)")
    parser.add_argument(
        "--also-cold",
        action="store_true",
        help="the docker path again without warm sandboxes (_cold figures)",
    )
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--studies", type=int, default=1)
    parser.add_argument("--problems", default=",".join(overhead.DEFAULT_MIX))
    parser.add_argument("--repeat", type=int, default=3, help="pairs of raw and docker runs (median ratio)")
    args = parser.parse_args(argv)

    with scratch_state("bbo-bench-sbx-") as state:
        figures = starts_of([b for b in args.backends.split(",") if b], args.starts, args.warm_starts)
        if not args.no_overhead:
            why_not = unavailable_reason("docker")
            if why_not is None:
                figures.update(overhead_of(state, args))
            else:
                figures["overhead_skipped"] = why_not
                log(f"overhead: skipped: {why_not}")
    figures["target_start_p50_s"] = START_TARGET_S
    figures["target_overhead_ratio"] = RATIO_TARGET
    # The machine may be shared: a start is mostly CPU, so its figures mean little under load.
    figures["load_average_1m"] = round(os.getloadavg()[0], 2)
    print_figures(figures, args.json)
