"""How sure a leaderboard is: a bootstrap over studies, giving each entry a confidence interval of its
score and the probability that it keeps its rank.

A score is 100 x (1 - the mean over problems of the mean over studies of the study's normalized score).
The studies are the noisy part (each starts from its own seed), so a bootstrap draw resamples, within each
problem, the studies with replacement and recomputes every entry's score; the 2.5 and 97.5 percentiles
of the draws are the 95% interval, and the share of draws in which an entry lands on its observed rank is
its rank stability.

Study i of every team ran under the same seeds (common random numbers: the harness seeds every
evaluation from problem, study, round and suggestion), so one draw uses the same resampled study indices
for every entry: the comparison is paired, as the scores are. Entries tied within a draw (the same data)
are ordered at random, since a tie says nothing about who is ahead. Pure numpy; a seed makes it repeat.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from baselines.scoring import leaderboard_score

# problem -> normalized score of each of its studies at the last iteration
StudyScores = Mapping[str, Sequence[float]]

DRAWS = 1000
LEVEL = 0.95
SEED = 2020


@dataclass(frozen=True)
class RankUncertainty:
    rank: int  # the observed rank: the entry's position in the order given, from 1
    score: float  # the point estimate from the study scores
    ci_low: float
    ci_high: float
    rank_stability: float  # share of draws in which the entry keeps `rank`
    studies: int  # studies behind the score, all problems together

    def to_dict(self) -> dict[str, float | int]:
        return {
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
            "rank_stability": self.rank_stability,
            "studies": self.studies,
        }


def point_score(entry: StudyScores) -> float:
    """The leaderboard score of one entry's study scores (what the bootstrap varies around)."""
    _check(entry, 0)
    return leaderboard_score(float(np.mean([np.mean(np.asarray(v, float)) for v in entry.values()])))


def bootstrap(
    entries: Sequence[StudyScores], *, draws: int = DRAWS, level: float = LEVEL, seed: int = SEED
) -> list[RankUncertainty]:
    """Per entry, in the order given (leaderboard order: the first is rank 1), its interval and stability."""
    if draws < 1:
        raise ValueError(f"draws must be at least 1, got {draws}")
    if not 0 < level < 1:
        raise ValueError(f"level must lie strictly between 0 and 1, got {level}")
    for position, entry in enumerate(entries):
        _check(entry, position)
    if not entries:
        return []
    rng = np.random.default_rng(seed)
    values = [{p: np.asarray(v, dtype=float) for p, v in entry.items()} for entry in entries]
    totals = np.zeros((len(entries), draws))  # per entry and draw: the sum over problems of study means
    for problem in sorted({p for entry in values for p in entry}):
        # One index draw per study count, shared by every entry with that many studies (paired draws).
        sizes = sorted({entry[problem].size for entry in values if problem in entry})
        picks = {n: rng.integers(0, n, size=(draws, n)) for n in sizes}
        for t, entry in enumerate(values):
            if problem in entry:
                scores = entry[problem]
                totals[t] += scores[picks[scores.size]].mean(axis=1)
    problems = np.array([len(entry) for entry in values], dtype=float)
    boot = leaderboard_score(totals / problems[:, None])  # the same scale, over every draw at once
    stability = _rank_stability(boot, rng)
    tail = 100.0 * (1.0 - level) / 2.0
    lows, highs = np.percentile(boot, [tail, 100.0 - tail], axis=1)
    return [
        RankUncertainty(
            rank=t + 1,
            score=point_score(entries[t]),
            ci_low=float(lows[t]),
            ci_high=float(highs[t]),
            rank_stability=float(stability[t]),
            studies=int(sum(v.size for v in values[t].values())),
        )
        for t in range(len(entries))
    ]


def _rank_stability(boot: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """boot: (entries, draws) scores. Share of draws in which entry t ranks t + 1 (higher score first,
    ties in random order)."""
    n_entries, draws = boot.shape
    tie_break = rng.random((draws, n_entries))
    # lexsort sorts by the last key first: the score (descending), then the random tie-break.
    order = np.lexsort((tie_break, -boot.T), axis=-1)  # (draws, entries): entry index at each position
    ranks = np.empty_like(order)
    positions = np.broadcast_to(np.arange(1, n_entries + 1), order.shape)
    np.put_along_axis(ranks, order, positions, axis=1)  # (draws, entries): rank of each entry
    return (ranks == np.arange(1, n_entries + 1)).mean(axis=0)


def _check(entry: StudyScores, position: int) -> None:
    if not entry:
        raise ValueError(f"entry {position} has no problems")
    for problem, scores in entry.items():
        if len(scores) == 0:
            raise ValueError(f"entry {position} has no studies of {problem}")
        if not np.all(np.isfinite(np.asarray(scores, dtype=float))):
            raise ValueError(f"entry {position} has a non-finite study score on {problem}")
