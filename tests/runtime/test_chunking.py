"""Jobs sized per problem: the plan, the spec field, and a real submission scored across uneven jobs."""

from __future__ import annotations

import dataclasses

import pytest

from queue_schema.states import SubmissionState
from runtime import chunking, spec
from runtime.spec import SpecError
from tests.scoring_helpers import score_tiny, tiny_spec


def test_heavy_problems_get_smaller_jobs_and_the_default_fits_the_rest() -> None:
    per_study = {"light": 60.0, "medium": 400.0, "heavy": 1000.0}
    plan = chunking.plan(per_study, studies=10, default=10, max_job_s=2400.0)
    # light fits all 10 (10 minutes); medium fits 6 -> 5+5; heavy fits 2 -> 2 x 5 jobs.
    assert plan == chunking.JobPlan(studies_per_job=10, by_problem={"medium": 5, "heavy": 2})
    # A study longer than the target still runs whole, alone.
    assert chunking.plan({"huge": 5000.0}, 10, 10, 2400.0) == chunking.JobPlan(1, {})
    # Nothing needs splitting: the default stays.
    assert chunking.plan({"a": 1.0}, 10, 4, 2400.0) == chunking.JobPlan(4, {})


def test_every_job_of_the_plan_fits_and_no_study_is_lost() -> None:
    per_study = {f"p{i}": 30.0 * (i + 1) for i in range(40)}
    plan = chunking.plan(per_study, studies=10, default=10, max_job_s=600.0)
    phase = spec.Phase(
        "feedback",
        tuple(per_study),
        10,
        plan.studies_per_job,
        studies_per_job_by_problem=tuple(sorted(plan.by_problem.items())),
    )
    for problem, seconds in per_study.items():
        chunks = phase.chunks(problem)
        assert sorted(i for _, studies in chunks for i in studies) == list(range(10))
        assert max(len(s) for _, s in chunks) * seconds <= max(600.0, seconds)
        assert max(len(s) for _, s in chunks) - min(len(s) for _, s in chunks) <= 1  # as even as can be


def test_the_spec_field_is_checked_hashed_and_round_trips(tmp_path) -> None:
    shipped = spec.load("neurips2020")
    feedback = shipped.phase("feedback")
    assert feedback.job_size("lasso-digits-nll") == 2 and feedback.job_size("SVM-iris-acc") == 4
    assert len(feedback.jobs()) == sum(len(feedback.chunks(p)) for p in feedback.problems)
    assert spec.Spec.from_json(shipped.to_json()).hash == shipped.hash
    # Specs without the field keep the hash they had (the demo's is pinned by stored scores).
    assert "studies_per_job_by_problem" not in spec.load("demo").to_dict()["phases"]["feedback"]

    text = (spec.SPECS_DIR / "demo.toml").read_text()
    problem = spec.load("demo").phase("feedback").problems[0]
    good = tmp_path / "good.toml"
    good.write_text(text + f'\n[phases.feedback.studies_per_job_by_problem]\n"{problem}" = 1\n')
    assert spec.load(str(good)).phase("feedback").job_size(problem) == 1
    bad = tmp_path / "bad.toml"
    bad.write_text(text + '\n[phases.feedback.studies_per_job_by_problem]\n"MLP-adam-digits-nll" = 1\n')
    with pytest.raises(SpecError, match="not a problem of this phase"):
        spec.load(str(bad))
    zero = tmp_path / "zero.toml"
    zero.write_text(text + f'\n[phases.feedback.studies_per_job_by_problem]\n"{problem}" = 0\n')
    with pytest.raises(SpecError, match="at least 1"):
        spec.load(str(zero))


def test_a_submission_scores_across_jobs_of_different_sizes(r, unsafe_ok) -> None:
    """Three studies: one problem in one job, the other in three; the version is scored once all four
    jobs are done, with every study once."""
    base = tiny_spec()
    feedback = dataclasses.replace(
        base.phases["feedback"],
        problems=("DT-iris-acc", "lasso-diabetes-mae"),
        studies=3,
        studies_per_job=3,
        studies_per_job_by_problem=(("lasso-diabetes-mae", 1),),
    )
    small = dataclasses.replace(base, phases={**base.phases, "feedback": feedback})
    assert len(feedback.jobs()) == 4
    sub = score_tiny(r, "ada", small)
    assert sub.state == SubmissionState.SCORED, sub
    assert sub.progress.studies_done == sub.progress.studies_total == 6
