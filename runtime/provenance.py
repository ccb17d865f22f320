"""Provenance: what a score was computed with, so that a dispute can be answered and a study rerun.

Each study records the scoring stack's package versions in the worker, its sandbox (backend, image
digest) and its seeds; each score version records the artifact, the spec, the baselines and what its
studies ran on. `reproduce` compares a rerun against these.
"""

from __future__ import annotations

import hashlib
import platform
from functools import cache
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

from queue_schema.payloads import StudyResult, Submission
from queue_schema.seeds import eval_seed, optimizer_seed
from runtime.spec import Spec

# The harness's side of a study: bayesmark's loop and the objective (models and data) run with these.
SCORING_PACKAGES = ("bayesmark", "numpy", "scipy", "scikit-learn")

OPTIMIZER_SEED_SCHEME = "queue_schema.seeds.optimizer_seed(problem, study)"
EVAL_SEED_SCHEME = "queue_schema.seeds.eval_seed(problem, study, round, index), before every evaluation"


@cache
def scoring_packages() -> dict[str, str]:
    """Python and the scoring stack's versions in this process (they cannot change while it runs)."""
    found = {"python": platform.python_version()}
    for name in SCORING_PACKAGES:
        try:
            found[name] = package_version(name)
        except PackageNotFoundError:
            found[name] = "missing"
    return found


def study_seeds(problem: str, study: int) -> dict[str, Any]:
    """The seeds a study runs with: derived from what is evaluated, the same for every team."""
    return {
        "optimizer": optimizer_seed(problem, study),
        "optimizer_scheme": OPTIMIZER_SEED_SCHEME,
        "evaluation_scheme": EVAL_SEED_SCHEME,
        "first_evaluation": eval_seed(problem, study, 0, 0),
    }


def file_sha256(path: str | Path | None) -> str | None:
    if path is None:
        return None
    file = Path(path)
    try:
        stat = file.stat()
    except OSError:
        return None
    return _sha256_of(str(file.resolve()), stat.st_mtime_ns, stat.st_size)


@cache
def _sha256_of(path: str, mtime_ns: int, size: int) -> str:
    # Keyed by modification time and size too: a rebuilt baseline file is hashed again.
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def score_provenance(
    sub: Submission, spec: Spec, baselines: Any, studies: dict[str, list[StudyResult]]
) -> dict[str, Any]:
    """The score version's record of what it was computed with (stored when it is scored)."""
    results = [s for found in studies.values() for s in found]
    sandboxes = sorted(
        {(s.backend or "unknown", s.image_digest or "") for s in results},
    )
    versions: dict[str, set[str]] = {}
    for s in results:
        for name, value in s.packages.items():
            versions.setdefault(name, set()).add(value)
    out: dict[str, Any] = {
        "artifact_sha256": sub.artifact_sha256,
        "spec": spec.name,
        "spec_hash": spec.hash,
        "baseline_version": getattr(baselines, "version", None) or sub.baseline_version,
        "baseline_sha256": file_sha256(getattr(baselines, "path", None)),
        "sandboxes": [{"backend": b, "image_digest": d or None} for b, d in sandboxes],
        # One version each when every study ran on the same stack; `mixed_packages` says otherwise.
        "packages": {name: sorted(found)[0] for name, found in sorted(versions.items())},
        "scorer_packages": scoring_packages(),
        "seeds": {"optimizer": OPTIMIZER_SEED_SCHEME, "evaluation": EVAL_SEED_SCHEME},
        "studies": len(results),
    }
    mixed = {name: sorted(found) for name, found in versions.items() if len(found) > 1}
    if mixed:
        out["mixed_packages"] = mixed
    return out
