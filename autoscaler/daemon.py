"""The autoscaler daemon: observe the queue and the fleet, decide with the policy, act through a provider.

One `step`:
1. observe: queue depths, the fleet's heartbeats and the provider's machines, joined by name into
   booting (created, never beat) / idle / busy / draining workers, with the time each entered its state;
2. sweep: delete machines that never joined within boot_timeout_s, and machines whose worker joined and
   then went silent (dead or frozen); run the reaper, which requeues the jobs such workers held;
3. decide: `policy.decide` with the PolicyState kept in Redis;
4. act: create / drain through the provider (not in dry-run); a ProviderError is recorded and passed to
   the policy as `provider_error` at the next step, so it holds instead of flapping;
5. record: an "autoscaler" event when the decision acts or its reason changes (not every tick), and a
   status hash (the metrics) the console and `bbo admin autoscaler` read.

Everything the daemon remembers lives in Redis and the provider's labels, so a restarted daemon carries on
with the same machines. A stop leaves the workers running (they are the fleet) unless asked to drain.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from autoscaler import policy
from autoscaler.daemon_lock import DaemonLock
from autoscaler.policy import Decision, Observation, PolicyConfig, PolicyState, WorkerView
from autoscaler.providers.base import CapacityExceeded, Machine, Provider, ProviderError
from queue_schema import keys
from queue_schema.records import add_event
from runtime import dispatch, recovery

log = logging.getLogger("bbo.autoscaler")

EVENT_KIND = "autoscaler"
# A draining worker that stopped beating has left the fleet; its process gets this long to exit by itself.
DRAIN_EXIT_GRACE_S = 60.0
# The daemon's lock lives this many intervals (plus 10 s): a crashed daemon's lock frees itself, or is
# taken over at once by a daemon on the same machine (autoscaler/daemon_lock.py).
LOCK_INTERVALS = 3


def lock_key(fleet: str) -> str:
    return keys.lock(f"autoscaler:{fleet}")


def read_status(r: redis.Redis, fleet: str = "local") -> dict[str, Any]:
    """The latest step's figures of a fleet's daemon ({} before its first step): the decision's fields,
    queued/running, workers per state, machine_hours, ts."""
    out = {}
    for name, raw in r.hgetall(keys.autoscaler_status(fleet)).items():
        try:
            out[name] = json.loads(raw)
        except ValueError:
            continue
    return out


@dataclass
class StepReport:
    """What one step saw and did."""

    observation: Observation
    decision: Decision
    created: list[str] = field(default_factory=list)
    drained: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    requeued: list[str] = field(default_factory=list)
    error: str | None = None
    recorded: bool = False  # an event was written

    def to_dict(self) -> dict[str, Any]:
        obs = self.observation
        counts = {state: 0 for state in ("booting", "idle", "busy", "draining")}
        for worker in obs.workers:
            counts[worker.state] += 1
        return {
            **self.decision.to_dict(),
            "queued": obs.queued,
            "running": obs.running,
            "workers": counts,
            "machine_hours": round(obs.machine_hours_used, 6),
            "created": self.created,
            "drained": self.drained,
            "deleted": self.deleted,
            "requeued": self.requeued,
            "error": self.error,
        }


class Daemon:
    def __init__(
        self,
        r: redis.Redis,
        provider: Provider,
        config: PolicyConfig,
        *,
        fleet: str = "local",
        dry_run: bool = False,
        interval_s: float = 5.0,
        on_event: Callable[[dict[str, Any]], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`r` is a str client. `on_event` sees every recorded decision (the CLI's --json-events)."""
        self.r = r
        self.provider = provider
        self.config = config
        self.fleet = fleet
        self.dry_run = dry_run
        self.interval_s = interval_s
        self.on_event = on_event
        self.clock = clock
        self._pending_error: str | None = None
        # Dry-run keeps its policy memory to itself, so it never disturbs a real daemon's.
        self._dry_state = PolicyState()
        self._last_kind: str | None = None
        self._lock = DaemonLock(
            r, lock_key(fleet), max(1, math.ceil(interval_s * LOCK_INTERVALS) + 10), f"fleet {fleet!r}"
        )

    # -- one step ------------------------------------------------------------------------------------

    def step(self) -> StepReport:
        now = self.clock()
        machines = self.provider.list()
        hours = self._account(now, len(machines))
        views, lost = self._join(now, machines)
        report_deleted: list[str] = []
        requeued: list[str] = []
        if not self.dry_run:
            report_deleted = self._sweep(lost)
            requeued = recovery.reap(self.r).requeued
            views = [v for v in views if v.name not in report_deleted]
        depths = dispatch.queue_depths(self.r)
        obs = Observation(
            now=now,
            queued=int(depths["queued"]),
            running=int(depths["running"]),
            workers=tuple(views),
            machine_hours_used=hours,
            provider_error=self._pending_error,
        )
        self._pending_error = None
        decision, state = policy.decide(obs, self.config, self._load_state())
        report = StepReport(obs, decision, deleted=report_deleted, requeued=requeued)
        if not self.dry_run:
            self._act(decision, report)
        self._save_state(state)
        self._record(report)
        return report

    # -- observe -------------------------------------------------------------------------------------

    def _join(self, now: float, machines: list[Machine]) -> tuple[list[WorkerView], list[str]]:
        """The provider's machines joined with the heartbeats into worker views, plus the machines to
        sweep. The time a worker entered its state is kept in Redis, so idleness survives a restart."""
        beats = {hb.worker: hb for hb in recovery.workers(self.r)}
        known = self._worker_states()
        views: list[WorkerView] = []
        lost: list[str] = []
        fresh: dict[str, dict[str, Any]] = {}
        for machine in machines:
            beat = beats.get(machine.name)
            record = known.get(machine.name, {})
            joined = bool(record.get("joined")) or beat is not None
            if beat is None and joined and machine.state != "draining":
                lost.append(machine.name)  # it joined, then went silent: dead or frozen
                continue
            if beat is None and not joined:
                if now - machine.created_at > self.config.boot_timeout_s:
                    lost.append(machine.name)  # never joined
                    continue
                state, since = "booting", machine.created_at
            else:
                draining = machine.state == "draining" or (beat is not None and beat.state == "draining")
                state = "draining" if draining else ("busy" if beat and beat.state == "busy" else "idle")
                since = float(record["since"]) if record.get("state") == state else now
                if beat is None and now - since > DRAIN_EXIT_GRACE_S:
                    lost.append(machine.name)  # it left the fleet but its process hangs on
                    continue
            fresh[machine.name] = {"state": state, "since": since, "joined": joined}
            views.append(WorkerView(name=machine.name, state=state, since=since))
        if not self.dry_run:
            pipe = self.r.pipeline()
            pipe.delete(keys.autoscaler_workers(self.fleet))
            if fresh:
                pipe.hset(
                    keys.autoscaler_workers(self.fleet),
                    mapping={name: json.dumps(record) for name, record in fresh.items()},
                )
            pipe.execute()
        return views, lost

    def _worker_states(self) -> dict[str, dict[str, Any]]:
        out = {}
        for name, raw in self.r.hgetall(keys.autoscaler_workers(self.fleet)).items():
            try:
                out[name] = json.loads(raw)
            except ValueError:
                continue
        return out

    def _account(self, now: float, machines: int) -> float:
        """Machine-hours spent so far: every machine the provider lists counts, whatever its state."""
        raw = self.r.hgetall(keys.autoscaler_hours(self.fleet))
        hours = float(raw.get("hours", 0.0))
        last = float(raw.get("at", now))
        if self.dry_run:
            return hours
        # A long gap (the daemon was down) is counted too: the machines ran meanwhile.
        hours += max(0.0, now - last) * machines / 3600.0
        self.r.hset(keys.autoscaler_hours(self.fleet), mapping={"hours": repr(hours), "at": repr(now)})
        return hours

    # -- sweep and act -------------------------------------------------------------------------------

    def _sweep(self, lost: list[str]) -> list[str]:
        deleted = []
        for name in lost:
            try:
                self.provider.delete(name)
            except ProviderError as exc:
                self._pending_error = str(exc)
                log.warning("could not delete %s: %s", name, exc)
                continue
            self.r.hdel(keys.autoscaler_workers(self.fleet), name)
            deleted.append(name)
        return deleted

    def _act(self, decision: Decision, report: StepReport) -> None:
        try:
            if decision.add:
                try:
                    report.created = self.provider.create(decision.add)
                except CapacityExceeded as exc:
                    report.created = exc.created
                    raise
            for name in decision.drain:
                self.provider.drain(name)
                report.drained.append(name)
        except ProviderError as exc:
            report.error = str(exc)
            self._pending_error = report.error
            log.warning("provider %s: %s", self.provider.name, exc)

    # -- memory --------------------------------------------------------------------------------------

    def _load_state(self) -> PolicyState:
        if self.dry_run:
            return self._dry_state
        raw = self.r.get(keys.autoscaler_policy(self.fleet))
        if not raw:
            return PolicyState()
        try:
            return PolicyState.from_dict(json.loads(raw))
        except (ValueError, TypeError):
            return PolicyState()

    def _save_state(self, state: PolicyState) -> None:
        if self.dry_run:
            self._dry_state = state
        else:
            self.r.set(keys.autoscaler_policy(self.fleet), json.dumps(state.to_dict()))

    def _record(self, report: StepReport) -> None:
        data = {**report.to_dict(), "dry_run": self.dry_run, "provider": self.provider.name}
        data["fleet"] = self.fleet
        data["cap"] = self.config.max_workers
        status = {name: json.dumps(value) for name, value in data.items()}
        status["ts"] = json.dumps(report.observation.now)
        if not self.dry_run:
            with self.r.pipeline() as pipe:
                pipe.hset(keys.autoscaler_status(self.fleet), mapping=status)
                pipe.sadd(keys.autoscaler_fleets(), self.fleet)
                pipe.execute()
        acted = bool(
            report.decision.add or report.decision.drain or report.deleted or report.requeued or report.error
        )
        # Counts change every tick; an event says something new only when the kind of answer changes.
        if not acted and report.decision.kind == self._last_kind:
            return
        self._last_kind = report.decision.kind
        add_event(self.r, EVENT_KIND, **data)
        report.recorded = True
        if self.on_event is not None:
            self.on_event(data)

    # -- the loop ------------------------------------------------------------------------------------

    def run(
        self, stop: threading.Event, *, drain_on_exit: bool = False, drain_timeout_s: float = 25.0
    ) -> None:
        """Step every interval until `stop` is set. The workers stay up afterwards (they are the fleet; a
        restarted daemon takes them over) unless `drain_on_exit`: then every worker is drained, given
        `drain_timeout_s` to finish its job and exit, and deleted after that."""
        if not self.dry_run:
            self._lock.take()
        try:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    self.step()
                except ProviderError as exc:  # listing failed (API down): nothing to act on this time
                    self._pending_error = str(exc)
                    log.warning("provider %s: %s", self.provider.name, exc)
                except (redis.RedisError, OSError) as exc:
                    log.warning("autoscaler step failed, retrying next interval: %s", exc)
                if not self.dry_run:
                    self._renew_lock()
                stop.wait(max(0.0, self.interval_s - (time.monotonic() - started)))
            if drain_on_exit and not self.dry_run:
                self.drain_all(drain_timeout_s)
        finally:
            if not self.dry_run:
                self._lock.release()

    def _renew_lock(self) -> None:
        """Renew the lock; a store that is away or refuses writes is waited out like a failed step (the
        lock may lapse meanwhile, and is taken again after, unless another daemon took it: then this one
        stops with AnotherDaemonRuns)."""
        try:
            self._lock.take()
        except (redis.RedisError, OSError) as exc:
            log.warning("autoscaler lock not renewed, retrying next interval: %s", exc)

    def drain_all(self, timeout_s: float) -> list[str]:
        """Drain every machine, wait for them to leave, delete the ones still there; return those."""
        drained = []
        for machine in self.provider.list():
            if machine.state != "draining":
                self.provider.drain(machine.name)
                drained.append(machine.name)
        deadline = time.monotonic() + timeout_s
        while self.provider.list() and time.monotonic() < deadline:
            time.sleep(0.5)
        left = [machine.name for machine in self.provider.list()]
        for name in left:
            self.provider.delete(name)
        reason = "drain on exit" + (f": {len(left)} did not stop in {timeout_s:g}s, deleted" if left else "")
        data = {"add": 0, "drain": drained, "reason": reason, "held": False, "drained": drained}
        data.update(deleted=left, dry_run=False, provider=self.provider.name, fleet=self.fleet)
        add_event(self.r, EVENT_KIND, **data)
        if self.on_event is not None:
            self.on_event(data)
        return left
