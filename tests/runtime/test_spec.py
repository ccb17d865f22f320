from __future__ import annotations

from pathlib import Path

import pytest

from runtime.spec import SpecError, available, load

GOOD = """
name = "t"
rounds = 4
batch = 2
[phases.feedback]
problems = ["DT-iris-acc"]
studies = 2
[limits]
suggest_budget_s = 10.0
call_timeout_s = 5.0
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "spec.toml"
    path.write_text(text)
    return path


def test_shipped_specs_load_by_name():
    assert {"demo", "neurips2020"} <= set(available())
    demo = load("demo")
    assert set(demo.phases) == {"feedback", "final"}
    assert demo.phases["feedback"].studies == 2


def test_neurips2020_draws_60_problems_split_30_30_by_a_fixed_seed():
    spec = load("neurips2020")
    feedback, final = spec.phases["feedback"], spec.phases["final"]
    assert len(feedback.problems) == len(final.problems) == 30
    assert not set(feedback.problems) & set(final.problems)
    assert (spec.rounds, spec.batch, feedback.studies, final.studies) == (16, 8, 10, 100)
    assert spec.limits.suggest_budget_s == 640 and spec.obfuscate_names
    assert load("neurips2020").phases == spec.phases  # the draw is reproducible
    # Jobs of at most 4 studies (3 for the heaviest problems), so none outlasts ~45 min at full budget.
    assert len(final.chunks()) == 25 and len(final.chunks("SVM-digits-acc")) == 34
    assert max(len(studies) for _, _, studies in feedback.jobs()) == 4


def test_spec_by_path_and_hash_changes_with_content(tmp_path):
    a = load(write(tmp_path, GOOD))
    b = load(write(tmp_path, GOOD.replace("rounds = 4", "rounds = 5")))
    assert a.hash != b.hash and len(a.hash) == 16
    assert load(write(tmp_path, GOOD)).hash == a.hash


def test_spec_survives_redis_round_trip():
    spec = load("neurips2020")
    again = type(spec).from_json(spec.to_json())
    assert again.hash == spec.hash and again.phases == spec.phases


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (('"DT-iris-acc"', '"DT-iris-accuracy"'), "unknown problem 'DT-iris-accuracy'"),
        (("rounds = 4", "rounds = 0"), "rounds must be at least 1"),
        (("studies = 2", "studies = -1"), "phases.feedback.studies must be at least 1"),
        (("call_timeout_s = 5.0", "call_timeout_s = 50.0"), "cannot exceed"),
        (("suggest_budget_s = 10.0", 'suggest_budget_s = "ten"'), "must be a number"),
        (("batch = 2", "batch = 2\ncolour = 1"), "unknown field(s): colour"),
        (("[phases.feedback]", "[phases.warmup]"), "unknown phase 'warmup'"),
        (('["DT-iris-acc"]', '["DT-iris-acc", "DT-iris-acc"]'), "twice"),
    ],
)
def test_bad_specs_get_one_line_errors(tmp_path, change, message):
    with pytest.raises(SpecError) as info:
        load(write(tmp_path, GOOD.replace(*change)))
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_held_out_problems_cannot_be_visible(tmp_path):
    text = GOOD + '[phases.final]\nproblems = ["DT-iris-acc"]\nstudies = 2\n'
    with pytest.raises(SpecError, match="held-out"):
        load(write(tmp_path, text))


def test_impossible_draw(tmp_path):
    text = GOOD.replace('problems = ["DT-iris-acc"]\n', "") + "[draw]\nseed = 1\ntotal = 200\nfeedback = 10\n"
    with pytest.raises(SpecError, match="only 108"):
        load(write(tmp_path, text))


def test_unknown_spec_name_lists_the_shipped_ones():
    with pytest.raises(SpecError, match="demo"):
        load("no-such-competition")
