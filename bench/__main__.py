"""python -m bench NAME [options]: run one benchmark."""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = {
    "abuse": "bench.abuse",
    "analysis": "bench.analysis",
    "autoscaler": "bench.autoscaler",
    "chaos": "bench.chaos",
    "console": "bench.console",
    "overhead": "bench.overhead",
    "sandbox": "bench.sandbox",
    "seed-data": "bench.seed_data",
    "service": "bench.service",
    "soak": "bench.soak",
    "store": "bench.store",
    "web": "bench.web",
}


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] in {"-h", "--help"} or sys.argv[1] not in BENCHMARKS:
        print(f"usage: python -m bench {{{','.join(BENCHMARKS)}}} [--json] [options]", file=sys.stderr)
        raise SystemExit(0 if len(sys.argv) > 1 and sys.argv[1] in {"-h", "--help"} else 2)
    module = importlib.import_module(BENCHMARKS[sys.argv[1]])
    module.main(sys.argv[2:])


if __name__ == "__main__":
    main()
