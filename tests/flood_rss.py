"""Peak RSS growth of a worker-like process while an optimizer floods the protocol channel.

    BBO_ALLOW_UNSAFE_SANDBOX=1 python -m tests.flood_rss --backend process --seconds 4

Warms up with one well-behaved study (imports, the objective, thread stacks), then records the peak RSS
(ru_maxrss), then: the flooder pre-started and left idle after its hello for --seconds (as workers/job.py
leaves study k+1's sandbox while study k runs), then one study of the flooder through the harness. Prints
one JSON object: the growth of the peak in MiB and what the harness said.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import time

from queue_schema.settings import pin_threads

pin_threads()

from runtime.spec import load  # noqa: E402
from tests.conftest import SUBMISSIONS  # noqa: E402
from workers.harness import FatalOptimizerError, run_one_study  # noqa: E402
from workers.optimizer_process import OptimizerProcess, ProtocolViolation  # noqa: E402
from workers.sandbox import select  # noqa: E402


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", default="process")
    parser.add_argument("--seconds", type=float, default=4.0)
    args = parser.parse_args()

    spec = load("demo")
    limits = dataclasses.replace(spec.limits, call_timeout_s=10.0, suggest_budget_s=30.0)
    spec = dataclasses.replace(spec, rounds=3, batch=3, limits=limits)
    backend = select(args.backend)

    def launch(name: str):
        folder = SUBMISSIONS / name
        backend.prepare(folder, spec.limits)
        return backend.launch(folder, spec.limits)

    proc = OptimizerProcess(launch("random_search")).start()
    run_one_study(proc, "DT-iris-acc", 0, spec, backend.describe(), lambda line: None)
    before = peak_mib()

    idle = OptimizerProcess(launch("flood")).start()
    idle.wait_hello(spec.limits.call_timeout_s)
    time.sleep(args.seconds)
    idle_killed = idle.returncode is not None
    try:
        idle.call({"op": "suggest", "n": 1}, 5)
        idle_violation = ""
    except ProtocolViolation as exc:
        idle_violation = str(exc)
    except Exception as exc:  # noqa: BLE001 - reported, not hidden
        idle_violation = f"{type(exc).__name__}: {exc}"[:300]
    idle.kill()

    flooding = OptimizerProcess(launch("flood")).start()
    try:
        run_one_study(
            flooding,
            "DT-iris-acc",
            0,
            dataclasses.replace(spec, rounds=20),
            backend.describe(),
            lambda line: None,
        )
        study_cause = None
    except FatalOptimizerError as fatal:
        study_cause = fatal.cause.value
    finally:
        flooding.kill()
    after = peak_mib()
    print(
        json.dumps(
            {
                "backend": args.backend,
                "peak_rss_before_mib": round(before, 1),
                "peak_rss_after_mib": round(after, 1),
                "rss_growth_mib": round(after - before, 1),
                "idle_killed": idle_killed,
                "idle_violation": idle_violation,
                "study_cause": study_cause,
            }
        )
    )


if __name__ == "__main__":
    main()
