"""The leaderboard's bootstrap over studies (baselines/ranking.py): intervals and rank stability."""

from __future__ import annotations

import numpy as np
import pytest

from baselines.ranking import bootstrap, point_score


def _team(rng: np.random.Generator, centre: float, spread: float, problems: int = 3, studies: int = 10):
    return {f"p{i}": list(np.clip(rng.normal(centre, spread, studies), -1, 1)) for i in range(problems)}


def test_the_point_estimate_is_the_leaderboard_formula():
    entry = {"a": [0.1, 0.3], "b": [0.5, 0.5, 0.8]}
    expected = 100 * (1 - (0.2 + 0.6) / 2)
    assert point_score(entry) == pytest.approx(expected, abs=1e-12)
    (stats,) = bootstrap([entry], draws=200)
    assert stats.score == pytest.approx(expected, abs=1e-12)
    assert stats.rank == 1 and stats.rank_stability == 1.0 and stats.studies == 5


def test_identical_teams_split_their_rank():
    team = _team(np.random.default_rng(1), 0.3, 0.2)
    first, second = bootstrap([team, dict(team)], draws=2000, seed=7)
    # Paired draws give the two the same score every time: a coin toss decides the order.
    assert (first.ci_low, first.ci_high) == (second.ci_low, second.ci_high)
    assert 0.45 < first.rank_stability < 0.55 and 0.45 < second.rank_stability < 0.55
    assert first.rank_stability == second.rank_stability  # one keeps its rank exactly when the other does


def test_far_apart_teams_keep_their_ranks_and_the_interval_holds_the_point():
    rng = np.random.default_rng(2)
    strong, weak = _team(rng, 0.05, 0.05), _team(rng, 0.8, 0.05)
    results = bootstrap([strong, weak], draws=1000)
    for stats in results:
        assert stats.rank_stability == 1.0
        assert stats.ci_low <= stats.score <= stats.ci_high
        assert stats.ci_high - stats.ci_low < 10
    assert results[0].ci_low > results[1].ci_high


def test_close_teams_are_unsure_and_a_seed_repeats_it():
    rng = np.random.default_rng(3)
    entries = [_team(rng, 0.30, 0.3), _team(rng, 0.31, 0.3), _team(rng, 0.9, 0.02)]
    once = bootstrap(entries, draws=500, seed=11)
    again = bootstrap(entries, draws=500, seed=11)
    assert once == again
    assert 0 < once[0].rank_stability < 1 and 0 < once[1].rank_stability < 1
    assert once[2].rank_stability == 1.0
    for stats in once:
        assert 0.0 <= stats.rank_stability <= 1.0 and stats.ci_low <= stats.ci_high


def test_more_studies_narrow_the_interval():
    rng = np.random.default_rng(4)
    few = bootstrap([_team(rng, 0.4, 0.3, studies=4)], draws=1000)[0]
    many = bootstrap([_team(rng, 0.4, 0.3, studies=100)], draws=1000)[0]
    assert many.ci_high - many.ci_low < few.ci_high - few.ci_low


def test_a_single_study_per_problem_gives_a_point_interval():
    (stats,) = bootstrap([{"a": [0.25], "b": [0.75]}], draws=50)
    assert stats.ci_low == stats.ci_high == stats.score == pytest.approx(50.0)


@pytest.mark.parametrize(
    ("entries", "message"),
    [([{}], "no problems"), ([{"a": []}], "no studies"), ([{"a": [float("nan")]}], "non-finite")],
)
def test_bad_input_is_refused(entries, message):
    with pytest.raises(ValueError, match=message):
        bootstrap(entries)


def test_no_entries_no_rows():
    assert bootstrap([]) == []
