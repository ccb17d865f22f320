"""Exported studies, read back by bayesmark's own code, give exactly our scores.

Real baselines (a tiny real build) and real studies (random search on the seeded objectives, some cut
off, one never started) go out through `export_bayesmark`; bayesmark's `load_experiments`,
`concat_experiments`, `XRSerializer.load_derived` and `compute_aggregates` bring them back.
"""

from __future__ import annotations

import enum
import sys
import warnings

import numpy as np
import pytest
from bayesmark import constants as cc
from bayesmark.experiment_aggregate import concat_experiments, load_experiments
from bayesmark.experiment_analysis import compute_aggregates
from bayesmark.serialize import XRSerializer

from baselines.build import build_baselines, write_baseline_file
from baselines.export import export_bayesmark
from baselines.scoring import score_problems, score_problems_formula
from baselines.store import load_baselines
from queue_schema.payloads import StudyResult
from tests.baseline_helpers import FAST, real_study, tiny_spec

ROUNDS, BATCH = 3, 2


@pytest.fixture(scope="module")
def baselines(tmp_path_factory):
    spec = tiny_spec(rounds=ROUNDS, batch=BATCH)
    path = write_baseline_file(
        build_baselines(spec.baseline_plan(), workers=1), tmp_path_factory.mktemp("bl") / "tiny.json"
    )
    return load_baselines(spec.baseline_plan(), path)


@pytest.fixture(scope="module")
def studies():
    """Three studies per problem: complete, cut off, and (for one problem) never started."""
    empty = StudyResult(study=2, state="cut_off", losses=[], cut_off_reason="time_limit")
    return {
        FAST[0]: [
            real_study(FAST[0], 0, ROUNDS, BATCH),
            real_study(FAST[0], 1, ROUNDS, BATCH, keep_rounds=1),
            empty,
        ],
        FAST[1]: [
            real_study(FAST[1], 0, ROUNDS, BATCH),
            real_study(FAST[1], 1, ROUNDS, BATCH),
            real_study(FAST[1], 2, ROUNDS, BATCH, keep_rounds=2),
        ],
    }


def _ours(studies, baselines):
    losses = {problem: [s.losses for s in results] for problem, results in studies.items()}
    return score_problems(losses, baselines, ROUNDS), score_problems_formula(losses, baselines, ROUNDS)


def _read_back(db_path):
    db_root, db = str(db_path.parent), db_path.name
    uuids = XRSerializer.get_uuids(db_root, db, cc.EVAL)
    assert (
        uuids
        == XRSerializer.get_uuids(db_root, db, cc.TIME)
        == XRSerializer.get_uuids(db_root, db, cc.SUGGEST_LOG)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pandas deprecation chatter inside bayesmark
        perf_ds, _time, _suggest, _sigs = concat_experiments(load_experiments(uuids, db_root, db))
    baseline_ds, meta = XRSerializer.load_derived(db_root, db, cc.BASELINE)
    return perf_ds, baseline_ds, meta


def test_bayesmark_reads_back_our_scores(tmp_path, baselines, studies):
    db_path = export_bayesmark(studies, baselines, tmp_path, optimizer_name="teamx")
    perf_ds, baseline_ds, meta = _read_back(db_path)

    visible = perf_ds[cc.VISIBLE_TO_OPT]
    assert visible.sizes[cc.ITER] == ROUNDS and visible.sizes[cc.TRIAL] == 3
    assert list(visible.coords[cc.METHOD].values) == ["teamx_x.x.x_" + meta["args"]["rev"]]
    # Cut-off and never-started studies are padded with +inf to full length.
    assert np.isinf(visible.values).sum() > 0

    # The way bayesmark's analysis main calls it: subset the baseline, score the visible objective.
    test_cases = visible.coords[cc.TEST_CASE].values
    base = baseline_ds.sel({cc.OBJECTIVE: cc.VISIBLE_TO_OPT}, drop=True).sel({cc.TEST_CASE: test_cases})
    agg, summary = compute_aggregates(visible, base, visible)
    bayesmark_final = agg[cc.NORMED_MEAN].isel({cc.ITER: -1, cc.METHOD: 0})
    bayesmark_score = 100 * (1 - float(summary[cc.PERF_MEAN].isel({cc.ITER: -1, cc.METHOD: 0})))

    via_bayesmark, formula = _ours(studies, baselines)
    for problem in studies:
        test_case = baselines.problem(problem).test_case
        theirs = float(bayesmark_final.sel({cc.TEST_CASE: test_case}))
        assert abs(theirs - via_bayesmark.problems[problem]) < 1e-9
        assert abs(theirs - formula.problems[problem]) < 1e-9
    assert abs(bayesmark_score - via_bayesmark.score) < 1e-9
    assert abs(bayesmark_score - formula.score) < 1e-9
    # The empty study scores 1: DT's problem mean includes it.
    assert formula.problems[FAST[0]] > -1


def test_exported_data_round_trips(tmp_path, baselines, studies):
    db_path = export_bayesmark(studies, baselines, tmp_path, optimizer_name="teamx")
    perf_ds, baseline_ds, meta = _read_back(db_path)
    # Baseline: both objectives, the visible one exactly what we ship.
    assert set(baseline_ds.coords[cc.OBJECTIVE].values) == {cc.VISIBLE_TO_OPT, "generalization"}
    ours = baselines.dataset(list(studies))
    theirs = baseline_ds.sel({cc.OBJECTIVE: cc.VISIBLE_TO_OPT}, drop=True).sel(
        {cc.TEST_CASE: ours[cc.TEST_CASE]}
    )
    for var in (cc.PERF_MED, cc.PERF_MEAN, cc.PERF_CLIP, cc.PERF_BEST):
        np.testing.assert_array_equal(theirs[var].values, ours[var].values)
    assert set(meta["signature"]) == {baselines.problem(p).test_case for p in studies}

    # Every study's losses, in bayesmark's trial order (uuid order within a problem), match a payload's.
    for problem, results in studies.items():
        test_case = baselines.problem(problem).test_case
        exported = perf_ds[cc.VISIBLE_TO_OPT].sel({cc.TEST_CASE: test_case}).isel({cc.METHOD: 0})
        expected = []
        for r in results:
            grid = np.full((ROUNDS, BATCH), np.inf)
            for t, row in enumerate(r.losses):
                grid[t] = [StudyResult.decode_loss(v) for v in row]
            expected.append(grid)
        got = [exported.isel({cc.TRIAL: i}).values for i in range(len(results))]
        assert sorted(g.tobytes() for g in got) == sorted(e.tobytes() for e in expected)


def test_bayesmark_mains_run_on_the_export(tmp_path, baselines, studies, monkeypatch):
    """bayesmark-agg then bayesmark-anal, bayesmark's own entry points, score the export like we do.

    Their argument parsing breaks on Python 3.11 only because str() of an IntEnum changed; restoring the
    old str() for bayesmark's CmdArgs is enough to run them unchanged.
    """
    from bayesmark import experiment_aggregate, experiment_analysis
    from bayesmark.cmd_parse import CmdArgs

    db_path = export_bayesmark(studies, baselines, tmp_path, optimizer_name="teamx")
    monkeypatch.setattr(CmdArgs, "__str__", enum.Enum.__str__)
    argv = ["-dir", str(db_path.parent), "-b", db_path.name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        monkeypatch.setattr(sys, "argv", ["bayesmark-agg", *argv])
        experiment_aggregate.main()
        monkeypatch.setattr(sys, "argv", ["bayesmark-anal", *argv])
        experiment_analysis.main()
    summary, _ = XRSerializer.load_derived(str(db_path.parent), db_path.name, cc.MEAN_SCORE)
    final = float(
        summary[cc.PERF_MEAN].sel({cc.OBJECTIVE: cc.VISIBLE_TO_OPT}).isel({cc.ITER: -1, cc.METHOD: 0})
    )
    via_bayesmark, formula = _ours(studies, baselines)
    assert abs(100 * (1 - final) - formula.score) < 1e-9
    assert abs(100 * (1 - final) - via_bayesmark.score) < 1e-9


def test_optimizer_name_made_safe_for_bayesmark(tmp_path, baselines, studies):
    # "_" is bayesmark's delimiter inside method names; "/" would escape the folder.
    db_path = export_bayesmark(studies, baselines, tmp_path, optimizer_name="team_x/s1")
    perf_ds, _, meta = _read_back(db_path)
    assert list(perf_ds.coords[cc.METHOD].values) == ["team-x-s1_x.x.x_" + meta["args"]["rev"]]
