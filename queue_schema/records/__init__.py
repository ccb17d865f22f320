"""The store's one owner: every read and write of submissions, transitions, study results, events, job
logs, and the indexes that spare readers a scan of every submission.

Every writer goes through these, so the invariants live in one place: a transition follows the state
machine and is atomic (WATCH/MULTI); a study result is written once and counted once (one Lua script);
streams are capped.

The indexes (keys.state_index, failure_index, scored_index, studies_done_total) are written in the same
transaction as the record they describe: every change of a submission goes through `_atomic_update` or
`save_new_submission`, which work out the record's index entries before and after the change and write the
difference. So the leaderboard, the final board, `rescore_all` and the metrics read a phase's scored
submissions or a few counts, never every submission. A store written before the indexes (or by a writer
that bypassed these functions, such as bench/seed_data.py's bulk load) has no `keys.index_built()` marker:
the first reader rebuilds them in one Lua script (`rebuild_indexes`), atomic with every writer.

The index has a module of its own (indexes.py), but its writes still share the record's transaction:
`_atomic_update` (submissions.py) works out the entries and runs indexes.py's `_index_writes` inside its
MULTI, so no other module reaches into the transaction.

The package, one job a module (this module re-exports their names, so callers import from
`queue_schema.records`); each imports only those above it in this list, never the reverse:
- archived.py: an archived score version read back: its mark, the archive object (checked, LRU-cached),
  a job's archived log, the version's archived job ids;
- events.py: the event streams written (capped) and read, an archived version's events merged back in;
- job_logs.py: a job's organizer log appended within its byte budget (Lua) and read, from Redis or the
  archive;
- indexes.py: the indexes' entries and writes, their rebuild, the counts read from them, the boards'
  order (`ranking_key`, `best_of_team`, `scored_time`);
- studies.py: study results written once (Lua) and read (from Redis or the archive), a version's study
  keys, the kept per-study scores;
- submissions.py: the records saved, loaded, and changed atomically (`transition`, refunds,
  `start_score_version`, `update_record`), with their events and index writes; the scored submissions;
- archiving.py: a complete version's data moved out of Redis (snapshot, mark, drop) and the archiver's
  queue of versions that ended;
- baseline_units.py: a fleet baseline build's description and progress, its units' losses written once.
"""

from __future__ import annotations

from queue_schema.records.archived import (
    ARCHIVED_FIELD,
    ARCHIVES_CACHED,
    ArchivedLog,
    ArchiveMark,
    _load_archive,
    _stream_id,
    archive_mark,
    archive_marks,
    archived_job_log,
    load_archive,
    version_jobs,
)
from queue_schema.records.archiving import (
    archive_version_data,
    due_versions,
    note_ended_versions,
    pending_versions,
    queue_ended_versions,
    retry_version_at,
    version_archived_or_dropped,
)
from queue_schema.records.baseline_units import (
    BuildProgress,
    build_progress,
    mark_written,
    read_units,
    recent_builds,
    register_build,
    store_unit,
    stored_units,
    unit_stored,
)
from queue_schema.records.events import (
    EVENTS_MAXLEN,
    SUBMISSION_EVENTS_MAXLEN,
    _event_into,
    add_event,
    read_events,
)
from queue_schema.records.indexes import (
    INDEX_LAYOUT,
    best_by_team,
    best_of_team,
    ensure_indexes,
    failure_counts,
    ranking_key,
    rebuild_indexes,
    scored_ids,
    scored_time,
    state_counts,
    studies_done_total,
)
from queue_schema.records.job_logs import (
    JOB_LOG_LINE_CHARS,
    JOB_LOG_MAXLEN,
    append_job_log,
    read_job_log,
    read_job_log_entries,
)
from queue_schema.records.studies import (
    archived_studies_of,
    decode_study_hash,
    finished_study_indices,
    read_studies,
    read_study_scores,
    version_data_keys,
    write_study,
    write_study_scores,
)
from queue_schema.records.submissions import (
    REFUND_HELD_NOTE,
    REFUNDED_NOTE,
    load_submission,
    load_submissions,
    save_new_submission,
    scored_submissions,
    start_score_version,
    submission_from_hash,
    transition,
    update_record,
)

__all__ = [
    "BuildProgress",
    "build_progress",
    "mark_written",
    "read_units",
    "recent_builds",
    "register_build",
    "store_unit",
    "stored_units",
    "unit_stored",
    "_event_into",
    "_load_archive",
    "_stream_id",
    "add_event",
    "append_job_log",
    "archive_mark",
    "archive_marks",
    "archive_version_data",
    "ARCHIVED_FIELD",
    "archived_job_log",
    "archived_studies_of",
    "ArchivedLog",
    "ArchiveMark",
    "ARCHIVES_CACHED",
    "best_by_team",
    "best_of_team",
    "decode_study_hash",
    "due_versions",
    "ensure_indexes",
    "EVENTS_MAXLEN",
    "failure_counts",
    "finished_study_indices",
    "INDEX_LAYOUT",
    "JOB_LOG_LINE_CHARS",
    "JOB_LOG_MAXLEN",
    "load_archive",
    "load_submission",
    "load_submissions",
    "note_ended_versions",
    "pending_versions",
    "queue_ended_versions",
    "ranking_key",
    "read_events",
    "read_job_log",
    "read_job_log_entries",
    "read_studies",
    "read_study_scores",
    "rebuild_indexes",
    "REFUND_HELD_NOTE",
    "REFUNDED_NOTE",
    "retry_version_at",
    "save_new_submission",
    "scored_ids",
    "scored_submissions",
    "scored_time",
    "start_score_version",
    "state_counts",
    "studies_done_total",
    "SUBMISSION_EVENTS_MAXLEN",
    "submission_from_hash",
    "transition",
    "update_record",
    "version_archived_or_dropped",
    "version_data_keys",
    "version_jobs",
    "write_study",
    "write_study_scores",
]
