"""Seeds derived from what is being evaluated, never from who submitted it.

bayesmark's models leave `random_state` unset, so the same point can score differently twice. Seeding
numpy's global random state before every evaluation from (problem, study, round, suggestion) makes every
evaluation repeatable and gives every team the same noise stream (common random numbers).
"""

from __future__ import annotations

import hashlib


def _seed(*parts: object) -> int:
    digest = hashlib.sha256("|".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:4], "little")  # np.random.seed takes [0, 2**32)


def eval_seed(problem: str, study: int, round_: int, index: int) -> int:
    return _seed("eval", problem, study, round_, index)


def optimizer_seed(problem: str, study: int, salt: str = "") -> int:
    """Seeds the optimizer's global random streams in its sandbox, as bayesmark's experiment_main does."""
    return _seed("optimizer", problem, study, salt)
