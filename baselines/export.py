"""Export scored studies in bayesmark's own on-disk format, so that bayesmark's analysis runs on them.

The result is a bayesmark database (`<out_dir>/<db>/`) as `bayesmark-launch` would leave it: per study
an `eval`, `time` and `suggest_log` record keyed by a UUID, with the meta data bayesmark's experiment main
writes (its parsed command-line arguments and the objective's signature), plus the derived `baseline`
(both objectives) that `bayesmark-anal` reads. From there, bayesmark's aggregate and analysis steps
(`load_experiments`, `concat_experiments`, `compute_aggregates`) reproduce the leaderboard score.

A cut-off study is padded to full length with +inf losses; the padded slots' suggestions hold a
placeholder point (bayesmark's first signature point), which no analysis reads since their loss is inf.
"""

from __future__ import annotations

import random
import re
import uuid
import warnings
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path

import numpy as np
from bayesmark import constants as cc
from bayesmark.cmd_parse import CmdArgs, joinable, load_rev_number, serializable_dict
from bayesmark.experiment import (
    OBJECTIVE_NAMES,
    _setup_seeds,
    build_eval_ds,
    build_suggest_ds,
    build_timing_ds,
    get_objective_signature,
)
from bayesmark.random_search import suggest_dict
from bayesmark.serialize import XRSerializer
from bayesmark.sklearn_funcs import SklearnModel
from bayesmark.xr_util import ds_concat

from baselines.store import Baselines
from queue_schema.payloads import StudyResult
from suites.bayesmark_catalogue import parse

# experiment_main seeds numpy with this before computing a signature, so every run agrees on it.
_SIGNATURE_SEED_HEX = "7e9f2cabb0dd4f44bc10cf18e440b427"  # pragma: allowlist secret
# A submission has no importable package behind it; bayesmark then records its version as "x.x.x".
OPT_REV = "x.x.x"
_UUID_NAMESPACE = uuid.UUID("5b1c9a52-3f0e-4d6b-9a7e-2f4c1d8e6a10")


@cache
def objective_signature(problem: str) -> tuple[list[dict], list[float]]:
    """bayesmark's signature of the problem's objective, computed as its experiment main computes it."""
    p = parse(problem)
    saved = np.random.get_state(), random.getstate()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the models' deprecation chatter
            _setup_seeds(_SIGNATURE_SEED_HEX)
            signature_x, signature_y = get_objective_signature(p.model, p.dataset, p.metric)
    finally:
        np.random.set_state(saved[0])
        random.setstate(saved[1])
    return signature_x, [float(v) for v in signature_y]


def method_name(name: str) -> str:
    """A usable bayesmark method name: its delimiter "_" and anything unsafe in a file name become "-"."""
    cleaned = re.sub(r"[^A-Za-z0-9.-]", "-", name).strip("-.") or "submission"
    joinable(cleaned)  # bayesmark's own check; cannot fail on what is left
    return cleaned


def study_uuid(optimizer_name: str, problem: str, study: int) -> uuid.UUID:
    # Deterministic, so exporting the same submission twice rewrites the same records.
    return uuid.uuid5(_UUID_NAMESPACE, f"{optimizer_name}/{problem}/{study}")


def _experiment_args(
    db_root: str, db: str, optimizer_name: str, problem: str, rounds: int, batch: int, uid: str
):
    """What bayesmark's experiment parser + experiment_main put in `meta["args"]` (its own key names)."""
    p = parse(problem)
    args = {
        CmdArgs.db_root: db_root,
        CmdArgs.optimizer_root: db_root,
        CmdArgs.verbose: False,
        CmdArgs.uuid: uid,
        CmdArgs.data_root: None,
        CmdArgs.db: db,
        CmdArgs.optimizer: optimizer_name,
        CmdArgs.data: p.dataset,
        CmdArgs.classifier: p.model,
        CmdArgs.metric: p.metric,
        CmdArgs.n_calls: rounds,
        CmdArgs.n_suggest: batch,
        CmdArgs.dry_run: False,
        CmdArgs.jobs_file: None,
        CmdArgs.rev: load_rev_number(),
        CmdArgs.opt_rev: OPT_REV,
    }
    return serializable_dict(args)


def _general_args(db_root: str, db: str):
    """What bayesmark's general parser puts in `meta["args"]` of a derived record."""
    args = {
        CmdArgs.db_root: db_root,
        CmdArgs.optimizer_root: db_root,
        CmdArgs.verbose: False,
        CmdArgs.db: db,
        CmdArgs.dry_run: False,
        CmdArgs.jobs_file: None,
        CmdArgs.rev: load_rev_number(),
        CmdArgs.opt_rev: None,
    }
    return serializable_dict(args)


def _grid(rows: Sequence[Sequence[float | None]], rounds: int, batch: int) -> np.ndarray:
    out = np.full((rounds, batch), np.inf)
    for t, row in enumerate(rows[:rounds]):
        out[t, : len(row)] = [StudyResult.decode_loss(v) for v in row]
    return np.where(np.isnan(out), np.inf, out)


def study_datasets(result: StudyResult, problem: str, rounds: int, batch: int):
    """bayesmark's (eval, time, suggest_log) Datasets of one study, padded to rounds x batch."""
    done = min(len(result.losses), rounds)
    visible = _grid(result.losses, rounds, batch)
    # A payload without generalization losses exports them as +inf (scores 1 on that objective).
    general = _grid(result.generalization, rounds, batch)
    eval_ds = build_eval_ds(np.stack([visible, general], axis=-1), OBJECTIVE_NAMES)

    # The payload keeps only totals; spread them evenly over the rounds that ran.
    suggest_time = np.zeros(rounds)
    eval_time = np.zeros((rounds, batch))
    if done:
        suggest_time[:done] = result.suggest_time_s / done
        eval_time[:done] = result.eval_time_s / (done * batch)
    time_ds = build_timing_ds(suggest_time, eval_time, np.zeros(rounds))

    placeholder = _placeholder_point(problem)
    log = [[dict(placeholder) for _ in range(batch)] for _ in range(rounds)]
    for t, row in enumerate(result.suggestions[:rounds]):
        for j, point in enumerate(row[:batch]):
            # Points under other names (obfuscated, or malformed) cannot go in bayesmark's log.
            if set(point) == set(placeholder):
                log[t][j] = dict(point)
    suggest_ds = build_suggest_ds(log)
    return eval_ds, time_ds, suggest_ds


@cache
def _placeholder_point(problem: str) -> dict:
    p = parse(problem)
    api_config = SklearnModel(p.model, p.dataset, p.metric).get_api_config()
    # The first signature point: a deterministic, valid point of the problem's space.
    return suggest_dict([], [], api_config, n_suggestions=1, random=np.random.RandomState(0))[0]


def export_bayesmark(
    problem_studies: Mapping[str, Sequence[StudyResult]],
    baselines: Baselines,
    out_dir: str | Path,
    optimizer_name: str = "submission",
    db: str = "bbo_export",
    rounds: int | None = None,
    batch: int | None = None,
) -> Path:
    """Write the studies (problem -> StudyResults) and the baseline as bayesmark database `out_dir/db`.

    `optimizer_name` becomes bayesmark's method name, with "_" (bayesmark's delimiter) and characters
    unsafe in file names replaced by "-". Returns the database folder.
    """
    optimizer_name = method_name(optimizer_name)
    rounds = rounds or baselines.rounds
    batch = batch or baselines.batch
    db_root = str(Path(out_dir).resolve())
    Path(db_root).mkdir(parents=True, exist_ok=True)
    XRSerializer.init_db(db_root, keys=cc.EXP_VARS, db=db, exist_ok=True)

    for problem, studies in problem_studies.items():
        signature = objective_signature(problem)
        for result in studies:
            uid = study_uuid(optimizer_name, problem, result.study)
            meta = {
                "args": _experiment_args(db_root, db, optimizer_name, problem, rounds, batch, uid.hex),
                "signature": signature,
            }
            eval_ds, time_ds, suggest_ds = study_datasets(result, problem, rounds, batch)
            XRSerializer.save(eval_ds, meta, db_root, db=db, key=cc.EVAL, uuid_=uid)
            XRSerializer.save(time_ds, meta, db_root, db=db, key=cc.TIME, uuid_=uid)
            XRSerializer.save(suggest_ds, meta, db_root, db=db, key=cc.SUGGEST_LOG, uuid_=uid)

    write_baseline(baselines, list(problem_studies), db_root, db)
    return Path(db_root) / db


def write_baseline(baselines: Baselines, problems: list[str], db_root: str, db: str) -> None:
    """The derived `baseline` record, with an OBJECTIVE dimension, as bayesmark's do_baseline saves it."""
    per_objective = {
        (objective,): baselines.dataset(problems, objective=objective) for objective in OBJECTIVE_NAMES
    }
    baseline_ds = ds_concat(per_objective, dims=(cc.OBJECTIVE,))
    signatures = {parse(p).test_case: objective_signature(p)[1] for p in problems}
    meta = {
        "args": _general_args(db_root, db),
        "signature": signatures,
        "bbo_arena": {"baselines_version": baselines.version, "spec": baselines.spec_name},
    }
    XRSerializer.save_derived(baseline_ds, meta, db_root, db=db, key=cc.BASELINE)
