"""Rerun one stored study and say whether its losses match: the check behind a disputed score.

The rerun uses what the study was scored with: the stored spec (by hash), the stored artifact (by
sha256), the same seeds (they derive from problem and study only) and, unless told otherwise, the same
sandbox backend, in a fresh sandbox in this process (no queue, nothing written but an audit entry).
Every evaluation is seeded, so an honest rerun on the same stack repeats every loss exactly; when it does
not, the first differing loss, whether the optimizer's suggestions differed too, and which package
versions or image changed since tell where to look.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from artifacts import archive
from competition import audit
from competition.errors import ReproduceError
from queue_schema import keys
from queue_schema.payloads import StudyResult
from queue_schema.records import load_submission, read_studies
from queue_schema.settings import state_dir
from runtime.spec import Spec, stored_spec

Log = Callable[[str], None]


def reproduce(
    r: redis.Redis,
    sid: str,
    problem: str,
    study: int,
    version: int | None = None,
    backend: str | None = None,
    *,
    log: Log | None = None,
    actor: str | None = None,
) -> dict[str, Any]:
    """Rerun study `study` of `problem` of submission `sid` (score version `version`, default the current
    one) and compare it with the stored result. `backend` None means the backend the study ran on.

    Raises ReproduceError for what does not exist, SandboxRefused/SandboxUnavailable when the backend
    cannot run here; an optimizer that fails on the rerun is a mismatch, reported with its error."""
    # The harness imports bayesmark and scikit-learn (about a second): loaded when a study is rerun, not
    # by everything that imports the competition's rules.
    from workers.harness import FatalOptimizerError, SandboxInfrastructureError, run_one_study
    from workers.optimizer_process import OptimizerProcess
    from workers.sandbox import select

    log = log or (lambda line: None)
    sub = load_submission(r, sid) if isinstance(sid, str) and 0 < len(sid) <= 64 else None
    if sub is None:
        raise ReproduceError(f"no submission {str(sid)[:64]!r}")
    version = version or sub.score_version
    if not 1 <= version <= sub.score_version:
        raise ReproduceError(f"submission {sid} has no score version {version} (latest: {sub.score_version})")
    spec = _stored_spec(r, sid, version, sub.spec_hash)
    problems = spec.phase(sub.phase).problems
    if problem not in problems:
        raise ReproduceError(
            f"submission {sid} has no problem {problem!r} (its {sub.phase} phase has: {', '.join(problems)})"
        )
    stored_studies = read_studies(r, sid, version, problem)
    if study not in stored_studies:
        have = ", ".join(str(i) for i in sorted(stored_studies)) or "none yet"
        raise ReproduceError(
            f"study {study} of {problem} has no stored result in version {version} (stored: {have})"
        )
    stored = stored_studies[study]

    sandbox = select(backend or stored.backend or "auto")
    data = _fetch_artifact(r, sub.artifact_sha256)
    work_root = state_dir() / "work"
    work_root.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    error: str | None = None
    rerun: StudyResult | None = None
    with tempfile.TemporaryDirectory(prefix="reproduce-", dir=work_root) as work:
        submission_dir = archive.extract(data, Path(work) / "submission", spec.submission)
        sandbox.prepare(submission_dir, spec.limits)
        describe = sandbox.describe()
        log(f"rerunning {sid} v{version} {problem} study {study} on {describe.get('backend')}")
        proc = OptimizerProcess(sandbox.launch(submission_dir, spec.limits), log=log).start()
        try:
            rerun = run_one_study(proc, problem, study, spec, describe, log)
        except FatalOptimizerError as fatal:
            error = f"{fatal.cause.value}: {fatal.message}"
        except SandboxInfrastructureError as lost:
            raise RuntimeError(f"the sandbox was lost during the rerun: {lost}") from None
        finally:
            proc.kill()
    seconds = time.monotonic() - started

    new_losses = rerun.losses if rerun is not None else []
    mismatch, compared = first_mismatch(stored.losses, new_losses)
    outcome = {
        "submission": sid,
        "team": sub.team,
        "problem": problem,
        "study": study,
        "score_version": version,
        "match": mismatch is None and error is None,
        "rounds_compared": compared,
        "first_mismatch": mismatch,
        "error": error,
        "stored_state": stored.state.value,
        "state": rerun.state.value if rerun is not None else None,
        "suggestions_match": _suggestions_match(stored, rerun),
        "environment_differences": _environment_differences(stored, rerun, describe),
        "backend": describe.get("backend"),
        "image_digest": describe.get("image_digest"),
        "stored_backend": stored.backend or None,
        "stored_image_digest": stored.image_digest,
        "seconds": round(seconds, 3),
        "stored_losses": stored.losses,
        "new_losses": new_losses,
    }
    audit.record(
        r,
        "reproduce",
        sid,
        actor=actor,
        problem=problem,
        study=study,
        version=version,
        backend=outcome["backend"],
        match=outcome["match"],
        first_mismatch=mismatch,
    )
    return outcome


def first_mismatch(
    stored: list[list[float | None]], now: list[list[float | None]]
) -> tuple[dict[str, Any] | None, int]:
    """The first differing loss, round by round (exact: evaluations are seeded), and how many rounds
    were compared. A study that ran a different number of rounds differs at the first missing round."""
    compared = 0
    for round_, (old, new) in enumerate(zip(stored, now, strict=False)):
        compared += 1
        for index in range(max(len(old), len(new))):
            a = old[index] if index < len(old) else "absent"
            b = new[index] if index < len(new) else "absent"
            if a != b:
                return {"round": round_, "index": index, "stored": a, "now": b}, compared
    if len(stored) != len(now):
        return {
            "round": compared,
            "index": None,
            "stored": f"{len(stored)} rounds",
            "now": f"{len(now)} rounds",
        }, compared
    return None, compared


def _stored_spec(r: redis.Redis, sid: str, version: int, fallback_hash: str) -> Spec:
    # A rescore may run under a newer spec: the version's own record says which.
    spec_hash = r.hget(keys.score_version(sid, version), "spec_hash") or fallback_hash
    spec = stored_spec(r, spec_hash)
    if spec is None:
        raise ReproduceError(f"spec {spec_hash} of submission {sid} is not in the store")
    return spec


def _fetch_artifact(r: redis.Redis, sha256: str) -> bytes:
    """Artifacts are bytes: read through a client on the same server that does not decode."""
    kwargs = {**r.connection_pool.connection_kwargs, "decode_responses": False}
    pool = redis.ConnectionPool(connection_class=r.connection_pool.connection_class, **kwargs)
    try:
        return archive.fetch(redis.Redis(connection_pool=pool), sha256)
    except (FileNotFoundError, OSError) as exc:
        raise ReproduceError(str(exc)) from None
    finally:
        pool.disconnect()


def _suggestions_match(stored: StudyResult, rerun: StudyResult | None) -> bool | None:
    """Whether the optimizer proposed the same points (None when the stored study did not keep them):
    same points with different losses means the objective's side changed, not the optimizer."""
    if rerun is None or not stored.suggestions:
        return None
    rounds = min(len(stored.suggestions), len(rerun.suggestions))
    normalized = json.loads(json.dumps(rerun.suggestions[:rounds], default=str))
    return stored.suggestions[:rounds] == normalized


def _environment_differences(
    stored: StudyResult, rerun: StudyResult | None, describe: dict[str, Any]
) -> dict[str, dict[str, Any]]:
    """What differs between the stored study's stack and the rerun's (empty when nothing known does)."""
    before = {"backend": stored.backend or None, "image_digest": stored.image_digest, **stored.packages}
    after = {"backend": describe.get("backend"), "image_digest": describe.get("image_digest")}
    after |= rerun.packages if rerun is not None else {}
    return {
        name: {"stored": before.get(name), "now": after.get(name)}
        for name in sorted(set(before) | set(after))
        if name in before and name in after and before[name] != after[name]
    }
