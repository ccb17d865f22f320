"""The RQ job of a fleet baseline build: run one unit (a random-search study, or a problem's strong run)
of trusted reference code in the work horse, and store its losses once.

No sandbox: the optimizers are the project's own (baselines/optimizers/), not a team's. The losses are
the local build's (`baselines.build.run_unit`, the same seeds and objective), so the file aggregated from
the fleet's units equals the one a local build writes.
"""

from __future__ import annotations

import warnings
from typing import Any

from threadpoolctl import threadpool_limits

from baselines.build import Unit, run_unit
from queue_schema import records
from queue_schema.connection import connect
from queue_schema.payloads import BaselineUnitJob
from suites.base import SuiteDef


def run_baseline_unit(payload: dict[str, Any]) -> dict[str, Any]:
    """RQ entry point (enqueued by name: 'workers.baseline_unit.run_baseline_unit')."""
    job = BaselineUnitJob.model_validate(payload)
    suite = None if job.suite is None else SuiteDef.from_dict(str(job.suite["name"]), job.suite)
    unit = Unit(job.kind, job.problem, job.study, job.rounds, job.batch, job.salt, suite)
    if unit.key != job.unit:
        raise ValueError(f"unit {job.unit!r} does not match its fields ({unit.key!r})")
    r = connect()
    # A requeued job whose first run stored the unit before its worker died: nothing to run again.
    if records.unit_stored(r, job.build_id, job.unit):
        return {"unit": job.unit, "stored": False}
    # One thread per library, as in the local build's pool (the worker pinned them at start too).
    with threadpool_limits(1), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn convergence chatter, once per evaluation otherwise
        losses = run_unit(unit)
    return {"unit": job.unit, "stored": records.store_unit(r, job.build_id, job.unit, losses.tolist())}
