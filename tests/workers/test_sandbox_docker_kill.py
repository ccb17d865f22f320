"""Killing a container's processes from the host (workers/sandbox/docker.py's kill_on_host), without an
engine: a process outside the container's cgroup is never signalled, even under a pid the cgroup listed,
and a container whose cgroup is not on this host is left to the engine's kill. The kill of a real
container is in test_sandbox_docker.py (system tier)."""

from __future__ import annotations

import subprocess
import time

from workers.sandbox.docker import _kill_member, kill_on_host


def test_a_process_outside_the_container_is_never_signalled():
    bystander = subprocess.Popen(["sleep", "30"])
    try:
        _kill_member(bystander.pid, "0" * 64)  # as if its pid had been listed, then reused by this process
        time.sleep(0.2)
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


def test_a_container_not_on_this_host_is_the_engine_s_to_kill():
    assert kill_on_host("f" * 64) is False
