"""A score version's study results: written once and counted once (`write_study`, one Lua script), read
back from Redis or, once archived, from the version's archive object (`read_studies`,
`finished_study_indices`); the keys that hold a version's study data (`version_data_keys`); and the kept
per-study scores of a scored version (`read_study_scores`, `write_study_scores`)."""

from __future__ import annotations

from typing import Any

import redis

from queue_schema import keys, study_codec
from queue_schema.payloads import Event, StudyResult
from queue_schema.records.archived import archive_mark, load_archive
from queue_schema.records.events import EVENTS_MAXLEN, SUBMISSION_EVENTS_MAXLEN

# Write the study once; count it and announce it (its `study` event) only if this call wrote it, all in one
# script: a worker killed between two separate commands would leave a stored study with no event, and the
# retried job skips stored studies, so the event would never come. The study's provenance (stored once
# per score version, under its id) and the version's problem index go with it. KEYS: results, submission,
# events, submission events, studies-done total, version provenance, version study problems. ARGV: index,
# record (study_codec), evals, normalized score (or "" when no baseline), score version, event json (or ""
# for none), events cap, submission events cap, provenance id, provenance json, problem.
_WRITE_STUDY = """
local cur = redis.call('HGET', KEYS[2], 'score_version')
if cur and cur ~= ARGV[5] then return -1 end
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('HSETNX', KEYS[6], ARGV[9], ARGV[10])
redis.call('SADD', KEYS[7], ARGV[11])
redis.call('HINCRBY', KEYS[2], 'studies_done', 1)
redis.call('INCRBY', KEYS[5], 1)
redis.call('HINCRBY', KEYS[2], 'evals_done', tonumber(ARGV[3]))
if ARGV[4] ~= '' then
  redis.call('HINCRBYFLOAT', KEYS[2], 'norm_sum', ARGV[4])
  redis.call('HINCRBY', KEYS[2], 'norm_count', 1)
end
if ARGV[6] ~= '' then
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[7], '*', 'json', ARGV[6])
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[8], '*', 'json', ARGV[6])
end
return 1
"""


def write_study(
    r: redis.Redis,
    sid: str,
    version: int,
    problem: str,
    result: StudyResult,
    normalized: float | None,
    *,
    announce: bool = True,
) -> int:
    """1 if written now (with its `study` event), 0 if it was already there (a retried job), -1 if the
    score version moved on. `normalized` (the study's normalized score, None without baselines) is counted
    into the running score and stored in the result, so readers need not recompute it. `announce=False`
    leaves the event out, for a writer that lays down its own timeline of events (bench/seed_data.py).

    Stored compactly (queue_schema/study_codec.py), its provenance once per score version under its id."""
    if normalized is not None and result.normalized is None:
        result = result.model_copy(update={"normalized": float(normalized)})
    evals = sum(len(round_) for round_ in result.losses)
    provenance = study_codec.provenance_json(result)
    provenance_id = study_codec.provenance_id(provenance)
    event = Event(
        kind="study",
        submission_id=sid,
        data={"problem": problem, "study": result.study, "state": result.state.value, "version": version},
    )
    return int(
        r.eval(
            _WRITE_STUDY,
            7,
            keys.study_results(sid, version, problem),
            keys.submission(sid),
            keys.events(),
            keys.submission_events(sid),
            keys.studies_done_total(),
            keys.version_provenance(sid, version),
            keys.version_study_problems(sid, version),
            str(result.study),
            study_codec.encode(result, provenance_ref=provenance_id),
            str(evals),
            "" if normalized is None else repr(float(normalized)),
            str(version),
            event.to_json() if announce else "",
            str(EVENTS_MAXLEN),
            str(SUBMISSION_EVENTS_MAXLEN),
            provenance_id,
            provenance,
            problem,
        )
    )


def read_studies(r: redis.Redis, sid: str, version: int, problem: str) -> dict[int, StudyResult]:
    if (archived := _archived_studies(r, sid, version, problem)) is not None:
        return archived
    raw = r.hgetall(keys.study_results(sid, version, problem))
    if not raw and (archived := _archived_studies(r, sid, version, problem)) is not None:
        return archived  # archived between the two reads
    # The provenance the studies name (records of the older form name none), read once.
    named = sorted({ref for value in raw.values() if (ref := study_codec.provenance_ref(value))})
    found = r.hmget(keys.version_provenance(sid, version), named) if named else []
    provenance = {ref: text for ref, text in zip(named, found, strict=True) if text}
    if len(provenance) < len(named) and (archived := _archived_studies(r, sid, version, problem)) is not None:
        return archived  # archived between the two reads
    return decode_study_hash(raw, provenance)


def finished_study_indices(r: redis.Redis, sid: str, version: int, problem: str) -> set[int]:
    if (archived := _archived_studies(r, sid, version, problem)) is not None:
        return set(archived)
    return {int(k) for k in r.hkeys(keys.study_results(sid, version, problem))}


def decode_study_hash(raw_fields: dict[str, str], provenance: dict[str, str]) -> dict[int, StudyResult]:
    """A study hash's fields (study index -> stored record, either form, as HGETALL gives them) as results
    by index, with the score version's provenance hash (id -> JSON; all of it, or the ids the records
    name): `read_studies`'s decoding, for a reader that fetched the values its own way (an archive)."""
    return study_codec.decode_many(raw_fields, provenance)


def _glob_escaped(text: str) -> str:
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in text)


def version_data_keys(r: redis.Redis, sid: str, version: int) -> list[str]:
    """Every key holding the score version's study data, as it is now: its study hashes (by problem), its
    provenance hash and its problem index. The problems come from that index (the study writer keeps it)
    and from the version's finished problems (which writers of the older form marked too); a version with
    neither (written before the index, or nothing written yet) is found by a SCAN of the keyspace."""
    problems = r.smembers(keys.version_study_problems(sid, version))
    problems |= r.smembers(keys.problems_done(sid, version))
    if problems:
        studies = [keys.study_results(sid, version, problem) for problem in sorted(problems)]
    else:
        pattern = _glob_escaped(keys.study_results(sid, version, "")) + "*"
        studies = sorted(set(r.scan_iter(match=pattern, count=1000)))
    candidates = [*studies, keys.version_provenance(sid, version), keys.version_study_problems(sid, version)]
    pipe = r.pipeline(transaction=False)
    for key in candidates:
        pipe.exists(key)
    return [key for key, exists in zip(candidates, pipe.execute(), strict=True) if exists]


def read_study_scores(r: redis.Redis, sid: str, version: int) -> dict[str, list[float]] | None:
    """{problem: [normalized score of each study, by study index]} of a scored version as kept
    (keys.study_scores: the compact form, or the JSON written before it), None when none is kept."""
    raw = r.get(keys.study_scores(sid, version))
    return None if raw is None else study_codec.decode_scores(raw)[1]


def write_study_scores(
    r: redis.Redis, sid: str, version: int, baseline_version: str | None, problems: dict[str, list[float]]
) -> None:
    """Keep a scored version's per-study normalized scores (they never change: its studies are final)."""
    r.set(keys.study_scores(sid, version), study_codec.encode_scores(baseline_version, problems))


def archived_studies_of(
    payload: dict[str, Any], sid: str, version: int, problem: str
) -> dict[int, StudyResult]:
    """One problem's studies from an archive object's snapshot, decoded as `read_studies` decodes Redis
    (`decode_study_hash`, with the version's provenance hash from the same snapshot)."""
    entry = payload["keys"].get(keys.study_results(sid, version, problem))
    provenance = payload["keys"].get(keys.version_provenance(sid, version))
    return decode_study_hash(entry["value"] if entry else {}, provenance["value"] if provenance else {})


def _archived_studies(r: redis.Redis, sid: str, version: int, problem: str) -> dict[int, StudyResult] | None:
    mark = archive_mark(r, sid, version)
    if mark is None:
        return None
    return archived_studies_of(load_archive(mark), sid, version, problem)
