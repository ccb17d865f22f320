"""Every Redis read and write of the organizer console, with no Textual in sight.

The console loads the submission rows once (pipelined HGETALLs), then follows the event stream from the
last id it saw and reloads only the submissions new events name: at competition scale (thousands of
submissions, 100k jobs) a refresh costs what changed, not what exists. Writes (stop, rescore) go through
the same service functions as the admin CLI, so they are checked and audited alike.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import redis

from autoscaler.daemon import read_status
from competition import audit, rescore, scores, service
from competition.live_events import moves_board
from queue_schema import keys, records
from queue_schema.payloads import Event, Heartbeat, Submission
from queue_schema.records import load_submission, submission_from_hash
from queue_schema.states import ACTIVE_STATES, TERMINAL_STATES, SubmissionState
from queue_schema.untrusted import safe_text
from runtime import dispatch, recovery, versions
from runtime.spec import LogSettings, stored_spec

LOAD_BATCH = 500  # submissions per round trip
# HGETALL of many submissions in one call, each hash sent back as one JSON string: the client then parses
# a few thousand strings (json in C) instead of ~15 protocol elements per submission (redis-py's pure
# Python parser), which was most of the console's start-up at competition scale.
_HASHES_AS_JSON = """
local out = {}
for i, key in ipairs(KEYS) do
  local flat = redis.call('HGETALL', key)
  if #flat == 0 then
    out[i] = ''
  else
    local fields = {}
    for j = 1, #flat, 2 do fields[flat[j]] = flat[j + 1] end
    out[i] = cjson.encode(fields)
  end
end
return out
"""
POLL_COUNT = 5_000  # events read per poll at most; a burst larger than this is read over several polls
AUTOSCALER_EVENTS_KEPT = 50
PIPELINES_SHOWN_S = 24 * 3600  # a written baseline build stays in the fleet view this long


@dataclass(frozen=True)
class SubmissionRow:
    """What the submissions view shows of one submission (a flat, cheap copy of its record)."""

    id: str
    team: str
    state: str
    phase: str
    spec_name: str
    created_at: float
    score_version: int
    studies_done: int
    studies_total: int
    evals_done: int
    evals_total: int
    score: float | None  # the final score once scored, else the running score (None before any study)
    running_score: bool  # True when `score` is the running score
    failure_cause: str | None
    failure_message: str | None
    disqualified: bool
    refund: str | None = None  # RefundState's value: "held" waits for an organizer (bbo admin refund)

    @classmethod
    def of(cls, sub: Submission) -> SubmissionRow:
        """The team's name and failure message are a team's text: made safe here, once, for every view
        (controls visible; a failure message keeps its lines)."""
        final = sub.score is not None
        return cls(
            id=safe_text(sub.id),
            team=safe_text(sub.team),
            state=sub.state.value,
            phase=sub.phase,
            spec_name=sub.spec_name,
            created_at=sub.created_at,
            score_version=sub.score_version,
            studies_done=sub.progress.studies_done,
            studies_total=sub.progress.studies_total,
            evals_done=sub.progress.evals_done,
            evals_total=sub.progress.evals_total,
            score=sub.score if final else sub.partial_score,
            running_score=not final and sub.partial_score is not None,
            failure_cause=sub.failure.cause.value if sub.failure else None,
            failure_message=safe_text(sub.failure.message, multiline=True) if sub.failure else None,
            disqualified=sub.disqualified is not None,
            refund=sub.refund.value if sub.refund else None,
        )

    @property
    def active(self) -> bool:
        return SubmissionState(self.state) in ACTIVE_STATES

    @property
    def terminal(self) -> bool:
        return SubmissionState(self.state) in TERMINAL_STATES

    def matches(self, query: str) -> bool:
        """The `/` filter: `team:NAME`, `state:STATE`, `cause:CAUSE`, `refund:held` (prefixes), or plain
        text anywhere; several words must all match."""
        for word in query.lower().split():
            name, _, value = word.partition(":")
            if value and name == "team":
                ok = self.team.lower().startswith(value)
            elif value and name == "state":
                ok = self.state.startswith(value)
            elif value and name == "cause":
                ok = (self.failure_cause or "").startswith(value)
            elif value and name == "refund":
                ok = (self.refund or "").startswith(value)
            else:
                ok = any(word in text for text in (self.id, self.team.lower(), self.state, self.phase)) or (
                    word in (self.failure_cause or "")
                )
            if not ok:
                return False
        return True


@dataclass
class Changes:
    """What one poll found: rows to update or add, and what else needs a refresh."""

    rows: list[SubmissionRow] = field(default_factory=list)
    gone: list[str] = field(default_factory=list)  # submissions named by events that no longer exist
    events: int = 0
    board_dirty: bool = False  # something was scored, rescored, disqualified...: recompute the leaderboard
    autoscaler: list[Event] = field(default_factory=list)


def _parse_row(raw: dict[str, str]) -> SubmissionRow | None:
    if not raw:
        return None
    try:
        return SubmissionRow.of(submission_from_hash(raw))
    except ValueError:
        return None  # a newer schema's record: not for this console to show


class ConsoleData:
    """The console's view of the store. `load()` once, then `poll()` every refresh."""

    def __init__(self, r: redis.Redis, *, clock: Callable[[], float] = time.time) -> None:
        self.r = r
        self.clock = clock
        self._hashes = r.register_script(_HASHES_AS_JSON)
        self._last_event = "0-0"
        self.autoscaler_events: list[Event] = []

    # -- submissions ----------------------------------------------------------------------------------

    def load(self) -> list[SubmissionRow]:
        """Every submission, newest first. The event stream's position is taken first, so nothing that
        happens during the load is missed (at worst a row is read twice)."""
        newest = self.r.xrevrange(keys.events(), count=1)
        self._last_event = newest[0][0] if newest else "0-0"
        self.autoscaler_events = self._recent_autoscaler_events()
        ids = self.r.zrevrange(keys.submissions_index(), 0, -1)
        return [row for row in self._rows(ids) if row is not None]

    def _rows(self, ids: Iterable[str]) -> list[SubmissionRow | None]:
        ids = list(ids)
        out: list[SubmissionRow | None] = []
        for start in range(0, len(ids), LOAD_BATCH):
            batch = [keys.submission(sid) for sid in ids[start : start + LOAD_BATCH]]
            found = self._hashes(keys=batch)
            out.extend(_parse_row(json.loads(raw) if raw else {}) for raw in found)
        return out

    def poll(self) -> Changes:
        """What changed since the last call: the submissions named by new events, reloaded."""
        changes = Changes()
        found = self.r.xread({keys.events(): self._last_event}, count=POLL_COUNT)
        if not found:
            return changes
        named: dict[str, None] = {}  # ordered set
        for entry_id, fields in found[0][1]:
            self._last_event = entry_id
            changes.events += 1
            try:
                event = Event.from_json(fields["json"])
            except (KeyError, ValueError):
                continue
            if event.submission_id:
                named[event.submission_id] = None
            if event.kind == "autoscaler":
                changes.autoscaler.append(event)
            elif moves_board(event):
                changes.board_dirty = True
        if changes.autoscaler:
            self.autoscaler_events = (self.autoscaler_events + changes.autoscaler)[-AUTOSCALER_EVENTS_KEPT:]
        ids = list(named)
        for sid, row in zip(ids, self._rows(ids), strict=True):
            if row is None:
                changes.gone.append(sid)
            else:
                changes.rows.append(row)
        return changes

    def row(self, sid: str) -> SubmissionRow | None:
        sub = load_submission(self.r, sid)
        return SubmissionRow.of(sub) if sub else None

    # -- one submission ---------------------------------------------------------------------------------

    def detail(self, sid: str) -> dict[str, Any]:
        """The organizer report of a submission (problems, studies, provenance) plus its convergence:
        `curve` (mean normalized best-so-far per iteration over the finished studies) and `random` (the
        random-search baseline's mean normalized curve over the same problems), as competition.scores computes
        them for the teams' pages too."""
        sub = load_submission(self.r, sid)
        if sub is None:
            raise service.NotFound(f"no submission {sid}")
        out: dict[str, Any] = {"row": SubmissionRow.of(sub), "problems": [], "provenance": {}}
        out["curve"], out["random"] = [], []
        try:
            report = scores.report(self.r, sid)
        except (versions.BaselineError, versions.ScoreError) as exc:
            out["error"] = safe_text(exc)
            return out
        out["problems"] = report["problems"]
        out["provenance"] = report.get("provenance") or {}
        out["spec"] = report.get("spec")
        out["curve"], out["random"] = scores.convergence(self.r, sub, report["problems"])
        return out

    def versions(self, sid: str) -> list[dict[str, Any]]:
        return rescore.versions(self.r, sid)

    # -- logs -------------------------------------------------------------------------------------------

    def job_ids(self, sid: str) -> list[str]:
        sub = load_submission(self.r, sid)
        if sub is None:
            return []
        return records.version_jobs(self.r, sid, sub.score_version)

    def log_notice(self, sid: str, job_id: str) -> str | None:
        """What to say about a job's log beside (or instead of) its lines: archived with its score version
        (shown from the archive), expired after the spec's retention (logs.retention_days after its last
        line), or never written; None for a live log in Redis."""
        if self.r.exists(keys.job_log(job_id)):
            return None
        archived = records.archived_job_log(self.r, job_id)
        if archived is not None:
            when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(archived.archived_at))
            if not archived.expired(self.clock()):
                return f"this job's log was archived on {when}: shown from the archive"
            days = self._retention_days(load_submission(self.r, sid))
            return f"this job's log is gone: archived on {when}, kept {days:g} days after its last line"
        sub = load_submission(self.r, sid)
        if sub is None or sub.state in ACTIVE_STATES:
            return None  # not started yet: its lines will come
        days = self._retention_days(sub)
        if self.clock() - sub.updated_at >= days * 86_400 - 60:
            return f"this job's log is gone: logs are kept {days:g} days after their last line"
        return "this job wrote no log (it did not run: the submission ended before it started)"

    def _retention_days(self, sub: Submission | None) -> float:
        spec = stored_spec(self.r, sub.spec_hash) if sub is not None else None
        return (spec.logs if spec is not None else LogSettings()).retention_days

    def log_lines(self, job_id: str, after: str = "-", count: int = 10_000) -> tuple[list[str], str]:
        """Lines of a job's log after stream id `after` ("-": from the start), and the last id read: from
        Redis, or from its score version's archive (records.read_job_log_entries). The optimizer's stderr
        is in them: each line made safe (an escape sequence shown, never sent)."""
        entries = records.read_job_log_entries(self.r, job_id, after, count, now=self.clock())
        if not entries:
            return [], after
        return [safe_text(line) for _, line in entries], entries[-1][0]

    # -- leaderboard ------------------------------------------------------------------------------------

    def leaderboard(self, phase: str, spec_name: str) -> list[dict[str, Any]]:
        """The organizers' live board (never frozen): the feedback phase's per-team best, or the final
        phase's entries with their 95% intervals."""
        return service.leaderboard(self.r, phase, spec_name)

    # -- fleet ------------------------------------------------------------------------------------------

    def fleet(self) -> dict[str, Any]:
        """Workers (last heartbeats, current job), queue depths, and each autoscaler fleet's status."""
        workers: list[Heartbeat] = recovery.workers(self.r)
        depths = dispatch.queue_depths(self.r)
        fleets = {
            name: read_status(self.r, name) for name in sorted(self.r.smembers(keys.autoscaler_fleets()))
        }
        return {
            "workers": workers,
            "queued": depths["queued"],
            "running": depths["running"],
            "fleets": fleets,
            # Baseline builds on the fleet (bbo admin baselines build --fleet): running, or of the last day.
            "pipelines": records.recent_builds(self.r, since=self.clock() - PIPELINES_SHOWN_S),
        }

    def _recent_autoscaler_events(self, scan: int = 5_000) -> list[Event]:
        found = []
        for _, fields in self.r.xrevrange(keys.events(), count=scan):
            if '"autoscaler"' not in fields.get("json", ""):
                continue  # cheap pre-check before parsing
            try:
                event = Event.from_json(fields["json"])
            except ValueError:
                continue
            if event.kind == "autoscaler":
                found.append(event)
                if len(found) >= AUTOSCALER_EVENTS_KEPT:
                    break
        return found[::-1]

    # -- actions (the CLI's service functions, audited under the organizer's name) -------------------

    @staticmethod
    def actor() -> str:
        return audit.default_actor()

    def stop(self, sid: str) -> Submission:
        return service.stop(self.r, sid, actor=self.actor())

    def rescore_plan(self, sid: str) -> dict[str, Any]:
        """What a rescore would create (the next version, under the current spec), for the confirmation."""
        sub = service.status(self.r, None, sid)
        spec = rescore.current_spec(self.r, sub)
        return {
            "team": sub.team,
            "state": sub.state.value,
            "version": sub.score_version + 1,
            "spec": spec.name,
            "spec_hash": spec.hash,
        }

    def rescore(self, sid: str, reason: str = "from the organizer console") -> Submission:
        return rescore.rescore(self.r, sid, actor=self.actor(), reason=reason)
