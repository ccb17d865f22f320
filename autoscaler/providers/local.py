"""The `local` provider: scoring workers as detached processes on this host.

Each machine is `python -m cli admin worker --name <fleet>-<n>` in a session of its own, so it outlives
the daemon (the workers are the fleet; a restarted daemon takes them over) and `delete` can kill its
whole process group. Two records say which processes are ours, and `list` reads both:
- Redis (a hash per fleet: name -> pid, process start time, created_at, drain time), for what only we
  know: when it was created, when it was asked to drain;
- the process table, the source of truth: each worker carries its fleet and name in its environment
  (BBO_AUTOSCALER_FLEET / BBO_AUTOSCALER_MACHINE, beside the BBO_REDIS_URL of the store it serves) and
  its name on its command line, so a process whose record was lost is still found, and a record whose
  process is gone is dropped.
Pids are matched with their start time, so a recycled pid is never taken for one of ours.
"""

from __future__ import annotations

import builtins
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import redis

from autoscaler.providers.base import CapacityExceeded, Machine, MachineRecords, ProviderError, counter_key
from queue_schema.settings import state_dir

FLEET_ENV = "BBO_AUTOSCALER_FLEET"
MACHINE_ENV = "BBO_AUTOSCALER_MACHINE"
WORKER_ARGV = [sys.executable, "-m", "cli", "admin", "worker", "--name", "{name}"]
# Start times from psutil and from our record may differ by clock rounding.
_START_TIME_SLACK_S = 1.0


class LocalProvider:
    name = "local"

    def __init__(
        self,
        r: redis.Redis,
        *,
        fleet: str = "local",
        cap: int | None = None,
        env: dict[str, str] | None = None,
        argv: builtins.list[str] | None = None,
        log_dir: Path | None = None,
    ) -> None:
        """`r` is a str client. `cap` bounds the live workers (default: the core count); `env` is what
        the workers run with (default: ours); `argv` the command, with "{name}" for the machine's name."""
        self.r = r
        self.fleet = fleet
        self.records = MachineRecords(r, self.name, fleet)
        self.cap = cap if cap is not None else (os.cpu_count() or 1)
        self.env = dict(env if env is not None else os.environ)
        self.argv = list(argv or WORKER_ARGV)
        # Another bbo-arena on this host may run a fleet of the same name against another store.
        self.store = self.env.get("BBO_REDIS_URL", "")
        self.log_dir = log_dir or state_dir() / "autoscaler" / fleet
        # Our own children, so their exit statuses are collected (no zombies while the daemon lives).
        self._children: dict[int, subprocess.Popen[bytes]] = {}

    # -- the protocol ---------------------------------------------------------------------------------

    def create(self, n: int) -> builtins.list[str]:
        existing = {machine.name for machine in self.list()}
        room = max(0, self.cap - len(existing))
        created = [self._spawn(existing) for _ in range(min(n, room))]
        if n > room:
            raise CapacityExceeded(
                f"local cap of {self.cap} worker(s) reached: started {len(created)} of {n}", created
            )
        return created

    def list(self) -> builtins.list[Machine]:
        self._collect_exited()
        records = self.records.all()
        found = self._scan()
        machines = []
        stale = [name for name in records if name not in found]
        for name, proc in sorted(found.items()):
            record = records.get(name)
            if record is None or abs(record.get("started", 0.0) - proc.create_time()) > _START_TIME_SLACK_S:
                # Ours by its labels but not by our record (lost, or a record of a recycled pid): adopt it.
                record = {"pid": proc.pid, "started": proc.create_time(), "created_at": proc.create_time()}
                self.records.put(name, record)
            draining = record.get("draining_since") is not None
            machines.append(
                Machine(
                    name=name,
                    created_at=float(record["created_at"]),
                    state="draining" if draining else "running",
                    labels={"fleet": self.fleet, "pid": str(proc.pid)},
                )
            )
        if stale:
            self.records.drop(*stale)
        return machines

    def drain(self, name: str) -> None:
        proc = self._process(name)
        if proc is None:
            return
        record = self.records.get(name)
        record["draining_since"] = time.time()
        self.records.put(name, record)
        # SIGTERM to the worker's main process only: RQ's warm shutdown lets the running job finish.
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.send_signal(signal.SIGTERM)

    def delete(self, name: str) -> None:
        proc = self._process(name)
        if proc is not None:
            try:
                # RQ puts each work horse in a session of its own: its tree is not in the worker's group.
                tree = proc.children(recursive=True)
            except psutil.Error:
                tree = []
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # the worker started its own session: this is its group
            for child in tree:
                with contextlib.suppress(psutil.Error):
                    child.kill()
            with contextlib.suppress(psutil.Error):
                proc.wait(5)
        self._collect_exited()
        self.records.drop(name)

    # -- processes -----------------------------------------------------------------------------------

    def _spawn(self, taken: set[str]) -> str:
        name = f"{self.fleet}-{self.r.incr(counter_key(self.name, self.fleet))}"
        while name in taken:  # the counter was lost (a flushed store) while its workers live on
            name = f"{self.fleet}-{self.r.incr(counter_key(self.name, self.fleet))}"
        taken.add(name)
        env = {**self.env, FLEET_ENV: self.fleet, MACHINE_ENV: name}
        argv = [arg.replace("{name}", name) for arg in self.argv]
        self.log_dir.mkdir(parents=True, exist_ok=True)
        try:
            with open(self.log_dir / f"{name}.log", "ab") as log:
                proc = subprocess.Popen(
                    argv,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    start_new_session=True,  # outlives the daemon; one killpg takes its tree
                )
        except OSError as exc:
            raise ProviderError(f"could not start a local worker: {exc}") from exc
        self._children[proc.pid] = proc
        try:
            started = psutil.Process(proc.pid).create_time()
        except psutil.NoSuchProcess:
            started = time.time()
        record = {"pid": proc.pid, "started": started, "created_at": time.time()}
        self.records.put(name, record)
        return name

    def _scan(self) -> dict[str, psutil.Process]:
        """Our fleet's live processes by machine name, from the process table: the name on the command
        line narrows the scan, the environment label confirms it."""
        prefix = f"{self.fleet}-"
        candidates: dict[str, list[psutil.Process]] = {}
        for proc in psutil.process_iter(["cmdline"]):
            cmdline = proc.info.get("cmdline") or []
            if not any(arg.startswith(prefix) for arg in cmdline):
                continue
            try:
                if proc.status() == psutil.STATUS_ZOMBIE:
                    continue
                env = proc.environ()
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            name = env.get(MACHINE_ENV)
            if env.get(FLEET_ENV) != self.fleet or not name or name not in cmdline:
                continue
            if env.get("BBO_REDIS_URL", "") != self.store:
                continue
            candidates.setdefault(name, []).append(proc)
        # A worker's work horse is a fork of it (same command line, same environment, a session of its
        # own): the machine is the one whose parent is not another of the same name.
        found = {}
        for name, procs in candidates.items():
            pids = {proc.pid for proc in procs}
            roots = [proc for proc in procs if _parent_pid(proc) not in pids]
            found[name] = min(roots or procs, key=_start_time)
        return found

    def _process(self, name: str) -> psutil.Process | None:
        return self._scan().get(name)

    def _collect_exited(self) -> None:
        for pid, proc in builtins.list(self._children.items()):
            if proc.poll() is not None:
                del self._children[pid]


def _parent_pid(proc: psutil.Process) -> int:
    try:
        return proc.ppid()
    except psutil.Error:
        return -1


def _start_time(proc: psutil.Process) -> float:
    try:
        return proc.create_time()
    except psutil.Error:
        return float("inf")
