"""Quasi-random search in the 2020 starter-kit format: a scrambled Sobol sequence.

Random search with independent draws leaves gaps and clumps; a low-discrepancy sequence covers the box
evenly, which helps on short budgets. Points are drawn in bayesmark's warped space (a plain box) and
mapped back to the problem's parameters. The scrambling seed comes from numpy's global state, which the
scorer seeds once per study, so a study repeats exactly.
"""

import numpy as np
from bayesmark.abstract_optimizer import AbstractOptimizer
from bayesmark.experiment import experiment_main
from bayesmark.space import JointSpace
from scipy.stats import qmc


class QuasiRandomOptimizer(AbstractOptimizer):
    primary_import = None

    def __init__(self, api_config, **kwargs):
        AbstractOptimizer.__init__(self, api_config)
        self.space = JointSpace(api_config)
        bounds = self.space.get_bounds()
        self.lower, self.upper = bounds[:, 0], bounds[:, 1]
        seed = np.random.randint(0, 2**31 - 1)
        self.sequence = qmc.Sobol(d=len(self.lower), scramble=True, seed=seed)

    def suggest(self, n_suggestions=1):
        unit = self.sequence.random(n_suggestions)
        return self.space.unwarp(qmc.scale(unit, self.lower, self.upper))

    def observe(self, X, y):
        pass  # the sequence does not depend on what it finds


if __name__ == "__main__":
    experiment_main(QuasiRandomOptimizer)
