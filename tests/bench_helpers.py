"""A benchmark run as people run it: `python -m <module> ...` in a subprocess from the project root, with
a state folder of its own; its JSON figures are the last line of its stdout."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def run_bench(args: list[str], timeout: float = 300) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
    # pytest shows this only for a failing test: the benchmark's log says why a figure is off.
    print(done.stderr[-20_000:])
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])
