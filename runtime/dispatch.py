"""Fair share: which queue a job goes to, in which order workers take them, and what a problem costs.

- Every team has its own RQ queue (`bbo-team-<team>`), registered in a Redis set when first used, so
  a team's tenth submission waits behind its own nine, not behind everybody's. Organizer work (final
  phase, rescore) goes to `bbo-priority`, which every worker empties first.
- Workers take the next job round-robin over the team queues, fleet-wide: one atomic Redis script pops
  from the first non-empty team queue after the one any worker popped from last (a cursor key) and
  moves the cursor (`fair_pop`, used by workers/fair_worker.py).
- Within a submission, problems are enqueued longest first by the cost table that `bbo admin estimate`
  writes, so a submission's last job is a short one and its time to score is close to its longest job.

Every reader that lists queues (metrics, reaper, autoscaler) goes through `queue_names`/`queue_depths`.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from queue_schema import keys
from queue_schema.settings import state_dir
from runtime import rq_adapter
from runtime.spec import Phase, Spec
from suites import registry

log = logging.getLogger("bbo.dispatch")

COSTS_DIR = Path(__file__).parent / "costs"
COST_FORMAT = 1

# Organizer work before every team; the shared queue of older releases after them.
HEAD_QUEUES = (keys.PRIORITY_QUEUE,)
TAIL_QUEUES = (keys.SCORE_QUEUE,)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


# -- queues ------------------------------------------------------------------------------------------


def team_queue(r: redis.Redis, team: str) -> str:
    """The team's queue name, registered so that workers discover it (idempotent, one SADD). A new one
    also wakes an idle worker (keys.team_queues_changed), which otherwise would find it only at its next
    refresh, up to FairQueues.refresh_seconds later: a wait on every new team's first job (measured: 0
    to 3 s of bench overhead's platform time)."""
    name = keys.team_queue(team)
    if r.sadd(keys.team_queues(), name):
        with r.pipeline() as pipe:  # one token at most, whatever the number of new teams meanwhile
            pipe.lpush(keys.team_queues_changed(), "1")
            pipe.ltrim(keys.team_queues_changed(), 0, 0)
            pipe.execute()
    return name


def team_queue_names(r: redis.Redis) -> list[str]:
    """Every registered team queue, sorted: the ring workers go round."""
    return sorted(_text(name) for name in r.smembers(keys.team_queues()))


def queue_names(r: redis.Redis) -> list[str]:
    """Every queue a worker listens to, in the order it serves them (the ring from its start)."""
    return [*HEAD_QUEUES, *team_queue_names(r), *TAIL_QUEUES]


def queue_depths(r: redis.Redis) -> dict[str, Any]:
    """{"queued": n, "running": m, "per_queue": {name: {"depth", "running"}}}, in one round trip.

    Read-only: "running" counts RQ's started-job registry as it stands; noticing dead workers' jobs is
    the reaper's business, not a reader's.
    """
    names = queue_names(r)
    pipe = r.pipeline(transaction=False)
    for name in names:
        pipe.llen(rq_adapter.queue_key(name))
        pipe.zcard(rq_adapter.started_registry_key(name))
    counts = pipe.execute()
    per_queue = {
        name: {"depth": int(counts[2 * i]), "running": int(counts[2 * i + 1])} for i, name in enumerate(names)
    }
    return {
        "queued": sum(q["depth"] for q in per_queue.values()),
        "running": sum(q["running"] for q in per_queue.values()),
        "per_queue": per_queue,
    }


# KEYS[1] is the cursor, then the head, ring and tail queues' keys; ARGV: head count, ring count, ring names.
# The ring starts just after the cursor's queue; a cursor this caller does not know yet (a team queue
# newer than its list) starts the ring from the top.
_FAIR_POP = """
local n_head = tonumber(ARGV[1])
local n_ring = tonumber(ARGV[2])
local function take(i)
  local job = redis.call('LPOP', KEYS[i])
  if job then
    redis.call('ZADD', KEYS[2], ARGV[3], job)
    return {i - 3, job}
  end
  return nil
end
for i = 3, 2 + n_head do
  local got = take(i)
  if got then return got end
end
if n_ring > 0 then
  local cursor = redis.call('GET', KEYS[1])
  local start = 0
  if cursor then
    for i = 1, n_ring do
      if ARGV[3 + i] == cursor then start = i break end
    end
  end
  for step = 1, n_ring do
    local i = (start + step - 1) % n_ring + 1
    local got = take(2 + n_head + i)
    if got then
      redis.call('SET', KEYS[1], ARGV[3 + i])
      return got
    end
  end
end
for i = 3 + n_head + n_ring, #KEYS do
  local got = take(i)
  if got then return got end
end
return false
"""


def fair_pop(r: redis.Redis, head: list[str], ring: list[str], tail: list[str]) -> tuple[str, str] | None:
    """Pop the next job id fairly, without blocking: (queue name, job id), or None if all are empty.

    Head queues in order, then the ring (team queues) from just after the fleet-wide cursor, then the
    tail; popping from the ring moves the cursor, all in one atomic script.
    """
    names = [*head, *ring, *tail]
    queue_keys = [rq_adapter.queue_key(name) for name in names]
    script = r.register_script(_FAIR_POP)  # EVALSHA, loading the script once per server
    result = script(
        keys=[keys.dispatch_cursor(), keys.dispatch_inflight(), *queue_keys],
        args=[len(head), len(ring), repr(time.time()), *ring],
    )
    if not result:
        return None
    index, job_id = result
    return names[int(index)], _text(job_id)


def note_dequeued(r: redis.Redis, queue_name: str, job_id: str) -> None:
    """After a blocking pop (which bypasses the script): record the job in flight and, for a team queue,
    move the cursor."""
    with r.pipeline(transaction=False) as pipe:
        pipe.zadd(keys.dispatch_inflight(), {job_id: time.time()})
        if queue_name.startswith(keys.TEAM_QUEUE_PREFIX):
            pipe.set(keys.dispatch_cursor(), queue_name)
        pipe.execute()


def note_started(r: redis.Redis, job_id: str) -> None:
    """The job's run is registered with RQ: it is no longer only in a worker's hands."""
    r.zrem(keys.dispatch_inflight(), job_id)


# -- costs -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Costs:
    """Seconds per evaluation of each problem asked for, and where each figure came from."""

    seconds_per_eval: dict[str, float]
    sources: dict[str, str]


def measured_path(spec_name: str) -> Path:
    """Where `bbo admin estimate` writes this machine's table."""
    return state_dir() / "estimates" / f"{spec_name}.json"


def shipped_path(spec_name: str) -> Path:
    return COSTS_DIR / f"{spec_name}.json"


def save_table(data: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n")
    tmp.replace(path)
    return path


def load_table(path: Path) -> dict[str, float]:
    """A cost table's seconds per evaluation; {} for a missing or unreadable file (never fatal: costs
    only order jobs)."""
    try:
        data = json.loads(path.read_text())
        return {str(p): float(s) for p, s in data["seconds_per_eval"].items() if float(s) >= 0}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        log.warning("ignoring the cost table %s: %s", path, exc)
        return {}


def _candidate_tables(spec_name: str) -> list[Path]:
    """This spec's measured table, its shipped one, then any other table (a problem costs the same
    under any spec)."""
    own = [measured_path(spec_name), shipped_path(spec_name)]
    others = sorted(measured_path(spec_name).parent.glob("*.json")) + sorted(COSTS_DIR.glob("*.json"))
    return own + [p for p in others if p not in own]


def coarse_seconds(problem: str) -> float:
    return registry.coarse_seconds(problem)


def costs_for(spec_name: str, problems: list[str] | tuple[str, ...]) -> Costs:
    seconds: dict[str, float] = {}
    sources: dict[str, str] = {}
    for path in _candidate_tables(spec_name):
        missing = [p for p in problems if p not in seconds]
        if not missing:
            break
        table = load_table(path)
        for problem in missing:
            if problem in table:
                seconds[problem] = table[problem]
                sources[problem] = str(path)
    for problem in problems:
        if problem not in seconds:
            seconds[problem] = coarse_seconds(problem)
            sources[problem] = "coarse"
    return Costs(seconds, sources)


def order_problems(spec_name: str, problems: list[str] | tuple[str, ...]) -> list[str]:
    """Longest first (every problem of a phase runs the same studies x rounds x batch), ties by name."""
    seconds = costs_for(spec_name, problems).seconds_per_eval
    return sorted(problems, key=lambda p: (-seconds[p], p))


def study_seconds(spec: Spec, seconds_per_eval: float) -> float:
    """What one study of a problem is expected to take: its evaluations at `seconds_per_eval` (the cost
    table's figure), plus the optimizer's whole suggest budget. The one rule that both orders jobs
    (`order_jobs`) and sizes their time limit (`job_timeout`)."""
    return seconds_per_eval * spec.evals_per_study + spec.limits.suggest_budget_s


# A job's time limit (past it RQ kills the work horse, and the failure is ours, retried and refunded) is
# its expected length with generous room: each evaluation TIMEOUT_EVAL_MARGIN times the cost table's
# figure (a slower machine, a busy host, a table measured elsewhere), plus TIMEOUT_STUDY_SLACK_S a study
# (starting the optimizer, writing its results) and TIMEOUT_JOB_SLACK_S a job (extracting the archive,
# installing its wheels, starting the sandbox).
TIMEOUT_EVAL_MARGIN = 3.0
TIMEOUT_STUDY_SLACK_S = 60.0
TIMEOUT_JOB_SLACK_S = 300.0


def job_timeout(spec: Spec, seconds_per_eval: float, studies: int) -> int:
    """RQ's time limit, in seconds, for a job of `studies` studies of a problem costing `seconds_per_eval`
    (from `costs_for`, as `order_jobs` uses it)."""
    per_study = study_seconds(spec, TIMEOUT_EVAL_MARGIN * seconds_per_eval) + TIMEOUT_STUDY_SLACK_S
    return math.ceil(studies * per_study + TIMEOUT_JOB_SLACK_S)


def order_jobs(
    spec: Spec, phase: Phase, seconds_per_eval: dict[str, float] | None = None
) -> list[tuple[str, int, list[int]]]:
    """A score version's jobs (problem, chunk, studies), longest first, so that its last job is a short
    one. A job's length is its studies x `study_seconds` (objective + the optimizer's whole budget): jobs
    differ in studies (heavy problems get smaller ones) and the budget can outweigh the objective.
    `seconds_per_eval`: the phase's costs when the caller has read them already (`costs_for`)."""
    seconds = seconds_per_eval
    if seconds is None:
        seconds = costs_for(spec.name, phase.problems).seconds_per_eval  # one read of the cost tables
    per_study = {p: study_seconds(spec, seconds[p]) for p in phase.problems}
    # Ties as order_problems breaks them: the costlier problem first, then by name; chunks in order.
    return sorted(
        phase.jobs(),
        key=lambda job: (-len(job[2]) * per_study[job[0]], -seconds[job[0]], job[0], job[1]),
    )
