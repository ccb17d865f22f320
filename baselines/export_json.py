"""Export scored studies as one documented JSON file, for suites that bayesmark's database cannot hold.

bayesmark's on-disk format describes its own scikit-learn problems (their signatures, its argument
parser's meta data); COCO's functions or an organizer's objective have none of that. This format carries
the same content: per problem its baseline (clip, opt, the random-search mean curve) and per study every
round's points and losses, the state, the seeds and the timings. docs/export.md documents every field.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from baselines.scoring import study_normalized_curve
from baselines.store import Baselines
from queue_schema.payloads import StudyResult

FORMAT = "bbo-arena-studies/1"


def _study(result: StudyResult, clip: float, opt: float, rounds: int) -> dict[str, Any]:
    return {
        "study": result.study,
        "state": str(result.state),
        "cut_off_reason": result.cut_off_reason,
        # Rounds x batch; null is +inf (a failed evaluation), as in the store.
        "losses": result.losses,
        "suggestions": result.suggestions,
        "normalized_curve": study_normalized_curve(result.losses, clip, opt, rounds),
        "suggest_time_s": result.suggest_time_s,
        "eval_time_s": result.eval_time_s,
        "suggest_fallbacks": result.suggest_fallbacks,
        "observe_errors": result.observe_errors,
        "seeds": result.seeds,
        "backend": result.backend,
    }


def export_json(
    problem_studies: Mapping[str, Sequence[StudyResult]],
    baselines: Baselines,
    out_dir: str | Path,
    optimizer_name: str = "submission",
    rounds: int | None = None,
    batch: int | None = None,
) -> Path:
    """Write `out_dir/studies.json`; returns its path."""
    rounds = rounds or baselines.rounds
    batch = batch or baselines.batch
    problems: dict[str, Any] = {}
    for problem, studies in problem_studies.items():
        base = baselines.problem(problem)
        problems[problem] = {
            "baseline": {"clip": base.clip, "opt": base.opt, "random_search_mean": list(base.mean)},
            "studies": [
                _study(s, base.clip, base.opt, rounds) for s in sorted(studies, key=lambda s: s.study)
            ],
        }
    data = {
        "format": FORMAT,
        "optimizer": optimizer_name,
        "spec": baselines.spec_name,
        "spec_hash": baselines.spec_hash,
        "baselines_version": baselines.version,
        "rounds": rounds,
        "batch": batch,
        "problems": problems,
    }
    target = Path(out_dir)
    target.mkdir(parents=True, exist_ok=True)
    path = target / "studies.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1, allow_nan=False) + "\n")
    tmp.replace(path)
    return path
