"""Asking the OS about a process: the reaper, the sandboxes' sweeps, the worker's start-up and the
autoscaler's lock all need to know whether a recorded PID still runs on this machine."""

from __future__ import annotations

import os


def process_alive(pid: int) -> bool:
    """Whether a process of this PID namespace runs under `pid` (someone else's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
