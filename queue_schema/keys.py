"""Every Redis key name bbo-arena uses, in one place.

Keys are grouped by the entity they describe; nothing else in the project builds a key string by hand.
"""

from __future__ import annotations

PREFIX = "bbo"

# Queues (RQ queue names, not raw keys): organizer work has its own queue so that it runs first; each
# team has its own, served round-robin (runtime/dispatch.py). SCORE_QUEUE is the shared queue of
# older releases, still listened to so that jobs enqueued before an upgrade run.
SCORE_QUEUE = "bbo-score"
PRIORITY_QUEUE = "bbo-priority"
TEAM_QUEUE_PREFIX = "bbo-team-"


def team_queue(team: str) -> str:
    """RQ queue name of one team's jobs (team names are [a-z0-9_-], so the name needs no escaping)."""
    return f"{TEAM_QUEUE_PREFIX}{team}"


def team_queues() -> str:
    """Set: names of every team queue ever used, so workers discover a new team's queue."""
    return f"{PREFIX}:queues:teams"


def team_queues_changed() -> str:
    """List: at most one token, pushed when a team queue is registered; an idle worker blocks on it beside
    the queues it knows, so it looks again at once instead of at its next periodic refresh."""
    return f"{PREFIX}:queues:teams:changed"


def dispatch_inflight() -> str:
    """Sorted set: job id -> time a worker popped it, until its run is registered as started; the reaper
    requeues a job a worker took and then died before starting (RQ's multi-queue pop has that gap)."""
    return f"{PREFIX}:dispatch:inflight"


def dispatch_cursor() -> str:
    """String: the team queue some worker dequeued from last: the fleet-wide round-robin position."""
    return f"{PREFIX}:dispatch:cursor"


def submission(sid: str) -> str:
    """Hash: the submission record (payload fields) and its live counters."""
    return f"{PREFIX}:sub:{sid}"


def submissions_index() -> str:
    """Sorted set: every submission id scored by creation time."""
    return f"{PREFIX}:subs"


# -- the store's indexes (queue_schema/records/indexes.py, written in the records' transactions) ------


def state_index(state: str) -> str:
    """Set: the ids of the submissions in `state` (a SubmissionState value)."""
    return f"{PREFIX}:idx:state:{state}"


def failure_index(cause: str) -> str:
    """Set: the ids of the failed submissions whose failure has `cause` (a FailureCause value)."""
    return f"{PREFIX}:idx:failed:{cause}"


def scored_index(spec_name: str, phase: str) -> str:
    """Sorted set: the submissions of a competition's phase with a scored version (as last scored,
    disqualified ones included), each scored by that version's leaderboard score."""
    return f"{PREFIX}:idx:scored:{spec_name}:{phase}"


def scored_indexes() -> str:
    """Set: the names of every `scored_index` key, so that a rebuild can clear them."""
    return f"{PREFIX}:idx:scored-keys"


def studies_done_total() -> str:
    """String: the sum of every submission's `studies_done` counter."""
    return f"{PREFIX}:idx:studies-done"


def index_built() -> str:
    """String: the index layout version the indexes were built with; missing, readers rebuild them."""
    return f"{PREFIX}:idx:built"


def team_submissions(team: str) -> str:
    """Sorted set: one team's submission ids by creation time."""
    return f"{PREFIX}:team:{team}:subs"


def artifact(sha256: str) -> str:
    """String: the uploaded zip's bytes, addressed by content."""
    return f"{PREFIX}:artifact:{sha256}"


def artifact_meta(sha256: str) -> str:
    """Hash: size, file count, first upload time of an artifact."""
    return f"{PREFIX}:artifact:{sha256}:meta"


def spec(spec_hash: str) -> str:
    """String: the resolved competition spec (JSON) a score was computed under, by its hash."""
    return f"{PREFIX}:spec:{spec_hash}"


def warm_hint() -> str:
    """String: the backend and sandbox limits the next scoring job most likely asks for (JSON), which an
    idle worker warms a sandbox for (runtime/warm_hint.py)."""
    return f"{PREFIX}:warm-hint"


def study_results(sid: str, version: int, problem: str) -> str:
    """Hash: study index -> the study's stored record (queue_schema/study_codec.py: the compact form, or
    the StudyResult JSON of older writers), written once per study (HSETNX)."""
    return f"{PREFIX}:studies:{sid}:v{version}:{problem}"


def version_provenance(sid: str, version: int) -> str:
    """Hash: provenance id -> provenance JSON (study_codec.provenance_json: backend, image, sandbox,
    packages, seed schemes), once per score version for all the studies that name it (the worker of each
    job is in its studies' records); written with the study."""
    return f"{PREFIX}:provenance:{sid}:v{version}"


def version_study_problems(sid: str, version: int) -> str:
    """Set: the problems of a score version with a study written by the compact writer (with the study),
    so that its study data is found without a scan (records.version_data_keys)."""
    return f"{PREFIX}:studyproblems:{sid}:v{version}"


def problems_done(sid: str, version: int) -> str:
    """Set: problems of a score version whose job has finished all its studies."""
    return f"{PREFIX}:done:{sid}:v{version}"


def score_version(sid: str, version: int) -> str:
    """Hash: a score version's record (spec hash, baseline version, state, score, created_at)."""
    return f"{PREFIX}:version:{sid}:v{version}"


def submission_jobs(sid: str, version: int) -> str:
    """Set: RQ job ids of one score version, so stop and fail can cancel them. It moves to the version's
    archive object with its study data: read it through records.version_jobs."""
    return f"{PREFIX}:jobs:{sid}:v{version}"


def events() -> str:
    """Stream: every state transition and notable happening, capped."""
    return f"{PREFIX}:events"


def submission_events(sid: str) -> str:
    """Stream: one submission's events, for live status without scanning the global stream. An archived
    score version's `study` events leave it for the version's archive object: records.read_events merges
    them back."""
    return f"{PREFIX}:events:{sid}"


def job_log(job_id: str) -> str:
    """Stream: organizer-only log lines of one job (sandbox stderr, harness events), capped."""
    return f"{PREFIX}:log:{job_id}"


def log_budget(sid: str, version: int) -> str:
    """String: bytes of job log written by one score version, against the spec's `logs.submission_mb`."""
    return f"{PREFIX}:logbytes:{sid}:v{version}"


def heartbeat(worker: str) -> str:
    """Hash with a TTL: a worker's last heartbeat (`json`: the Heartbeat payload; `job`: the job it runs)."""
    return f"{PREFIX}:hb:{worker}"


def heartbeats_index() -> str:
    """Sorted set: worker name -> last heartbeat time, for the reaper and the fleet view."""
    return f"{PREFIX}:hbs"


def job_heartbeat(job_id: str) -> str:
    """String with a TTL: a running job's own heartbeat (JobHeartbeat JSON), refreshed by its work horse;
    its absence is how the reaper (runtime/recovery.py) tells a job nobody runs any more."""
    return f"{PREFIX}:jobhb:{job_id}"


def teams_index() -> str:
    """Sorted set: every team name scored by creation time."""
    return f"{PREFIX}:teams"


def team_record(team: str) -> str:
    """Hash: a team's record (name, token hash, created_at, token_created_at, disabled)."""
    return f"{PREFIX}:team:{team}:record"


def token(token_hash: str) -> str:
    """String: the sha256 of a live token -> its team name (tokens themselves are never stored)."""
    return f"{PREFIX}:token:{token_hash}"


def web_session(session_hash: str) -> str:
    """Hash: a signed-in web page's session (team, the token hash it was opened with, CSRF secret, times),
    under the sha256 of its cookie; it expires by itself (competition/sessions.py)."""
    return f"{PREFIX}:websession:{session_hash}"


def team_web_sessions(team: str) -> str:
    """Sorted set: the hashes of a team's open web sessions -> last seen, so they are bounded (oldest out)."""
    return f"{PREFIX}:team:{team}:websessions"


def quota_holds(team: str) -> str:
    """Sorted set: upload reservations in flight (hold id -> time), so two concurrent uploads at the quota
    edge cannot both pass; a hold is released as soon as the submission exists or is refused."""
    return f"{PREFIX}:team:{team}:holds"


def team_refunds(team: str) -> str:
    """Sorted set: the team's submissions refunded automatically (id -> the upload's time), so the refunds
    of one UTC day are counted exactly (runtime/lifecycle.py: at most `submission.refunds_per_day`)."""
    return f"{PREFIX}:team:{team}:refunds"


def refunds_held() -> str:
    """Set: submissions whose refund waits for an organizer's decision (competition/moderation.py)."""
    return f"{PREFIX}:refunds:held"


def quota_overrides() -> str:
    """Hash: team -> daily submission limit an organizer set for it (instead of the spec's)."""
    return f"{PREFIX}:quota:overrides"


def audit_log() -> str:
    """Stream: every organizer action (who, what, on what, why), append-only and never trimmed."""
    return f"{PREFIX}:audit"


# -- rescore and the final phase (competition/rescore.py, competition/final.py) ----------------------


def study_scores(sid: str, version: int) -> str:
    """String: {problem: [normalized score of each study]} of a scored version, computed once and kept
    after the version is archived; compact (study_codec.encode_scores): read and write it through
    records.read_study_scores / write_study_scores."""
    return f"{PREFIX}:studyscores:{sid}:v{version}"


def team_selection(team: str) -> str:
    """String: the feedback submission id a team chose for the final phase (unset: its best)."""
    return f"{PREFIX}:team:{team}:selection"


def final_entries(spec_name: str) -> str:
    """Hash: team -> its final-phase submission id (the one the final leaderboard shows)."""
    return f"{PREFIX}:final:{spec_name}:entries"


def final_released(spec_name: str) -> str:
    """String: when the organizers released the final leaderboard to teams (unset: not yet)."""
    return f"{PREFIX}:final:{spec_name}:released"


def final_launches(spec_name: str) -> str:
    """Hash: "team:spec hash:artifact sha256" -> final-phase submission id, so a second run reuses it."""
    return f"{PREFIX}:final:{spec_name}:launches"


# -- the archive (runtime/archiver.py moves a complete score version's data to queue_schema/archive_store) -


def archive_pending() -> str:
    """Sorted set: "sid:version" of score versions that ended -> when they ended; the archiver takes them
    once their grace period is over."""
    return f"{PREFIX}:archive:pending"


def archive_cursor() -> str:
    """String: the id of the last event of `events()` the archiver looked at for versions that ended."""
    return f"{PREFIX}:archive:cursor"


def lock(name: str) -> str:
    return f"{PREFIX}:lock:{name}"


# -- baseline builds on the fleet (runtime/baseline_fleet.py, queue_schema/records/baseline_units.py) ----


def baseline_builds() -> str:
    """Sorted set: fleet baseline build id -> when it was first enqueued (the console's pipeline rows)."""
    return f"{PREFIX}:blbuilds"


def baseline_build(build_id: str) -> str:
    """Hash: a fleet baseline build's description and progress marks: spec, units total, started_at,
    resumed_at / done_at_resume (for its ETA), and once its file is written: written_at, path, version."""
    return f"{PREFIX}:blbuild:{build_id}"


def baseline_units(build_id: str) -> str:
    """Hash: unit key ("random:PROBLEM:STUDY", "strong:PROBLEM:-1") -> the unit's losses (JSON), each
    written once (HSETNX): a unit run twice is stored once."""
    return f"{PREFIX}:blunits:{build_id}"


# -- the autoscaler (autoscaler/daemon.py, autoscaler/providers/) -------------------------------------


def autoscaler_policy(fleet: str) -> str:
    """String: the fleet's PolicyState as JSON (what the policy remembers between steps)."""
    return f"{PREFIX}:autoscaler:{fleet}:policy"


def autoscaler_workers(fleet: str) -> str:
    """Hash: machine name -> JSON {state, since, joined}: when each worker entered its current state."""
    return f"{PREFIX}:autoscaler:{fleet}:workers"


def autoscaler_hours(fleet: str) -> str:
    """Hash: "hours" (machine-hours spent, a float), "at" (the last accounting time)."""
    return f"{PREFIX}:autoscaler:{fleet}:hours"


def autoscaler_status(fleet: str) -> str:
    """Hash: the daemon's latest step's figures (its metrics), each value JSON."""
    return f"{PREFIX}:autoscaler:{fleet}:status"


def autoscaler_fleets() -> str:
    """Set: the fleets a daemon has run for (so a reader finds their status without scanning keys)."""
    return f"{PREFIX}:autoscaler:fleets"


def autoscaler_machines(provider: str, fleet: str) -> str:
    """Hash: machine name -> JSON record a provider keeps beside its own labels (pid, created_at, ...)."""
    return f"{PREFIX}:autoscaler:{provider}:{fleet}:machines"


def autoscaler_seq(provider: str, fleet: str) -> str:
    """String: the last machine number a provider handed out in a fleet (names are never reused)."""
    return f"{PREFIX}:autoscaler:{provider}:{fleet}:seq"
