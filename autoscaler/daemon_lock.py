"""One autoscaler daemon per fleet: a Redis lock with a TTL, taken over at once from a holder known dead.

A crashed daemon's lock frees itself when its TTL runs out (a few intervals). That wait is needless when the
new daemon runs on the same machine as the dead one, as under a supervisor restarting it: the holder
names its host, its PID namespace and its PID, and a process that finds all three its own but the PID
gone takes the lock over in one transaction. A holder elsewhere, or alive, is never second-guessed.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket

import redis

from autoscaler.errors import AnotherDaemonRuns  # noqa: F401 - re-exported for callers
from runtime.processes import process_alive

log = logging.getLogger("bbo.autoscaler")


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return "?"


class DaemonLock:
    def __init__(self, r: redis.Redis, key: str, ttl_s: int, what: str) -> None:
        self.r = r
        self.key = key
        self.ttl_s = ttl_s
        self.what = what  # for the error: "fleet 'local'"
        self.token = f"{socket.gethostname()}|{_pid_namespace()}|{os.getpid()}|{secrets.token_hex(4)}"

    def take(self) -> None:
        """Take or renew the lock; AnotherDaemonRuns if a live daemon (or one on another machine) holds it."""
        if self.r.set(self.key, self.token, nx=True, ex=self.ttl_s):
            return
        holder = self.r.get(self.key)
        if holder == self.token:
            self.r.expire(self.key, self.ttl_s)
            return
        if holder is not None and self._dead_here(holder) and self._replace(holder):
            log.warning("took over the lock of %s from a dead daemon (%s)", self.what, holder)
            return
        raise AnotherDaemonRuns(
            f"another autoscaler runs for {self.what} (lock {self.key}, held by {holder})"
        )

    def release(self) -> None:
        if self.r.get(self.key) == self.token:
            self.r.delete(self.key)

    def _dead_here(self, holder: str) -> bool:
        host, namespace, pid, *_ = [*holder.split("|"), "", "", ""]
        if host != socket.gethostname() or namespace != _pid_namespace() or not pid.isdigit():
            return False
        return int(pid) != os.getpid() and not process_alive(int(pid))

    def _replace(self, holder: str) -> bool:
        """Swap the dead holder's token for ours, unless the lock changed hands meanwhile."""
        with self.r.pipeline() as pipe:
            try:
                pipe.watch(self.key)
                if pipe.get(self.key) != holder:
                    return False
                pipe.multi()
                pipe.set(self.key, self.token, ex=self.ttl_s)
                pipe.execute()
                return True
            except redis.WatchError:
                return False
