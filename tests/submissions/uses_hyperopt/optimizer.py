"""Samples each round from a hyperopt search space over bayesmark's warped bounds (written for tests)."""

import numpy as np
from bayesmark.abstract_optimizer import AbstractOptimizer
from bayesmark.experiment import experiment_main
from bayesmark.space import JointSpace
from hyperopt import hp
from hyperopt.pyll.stochastic import sample


class HyperoptSampler(AbstractOptimizer):
    primary_import = "hyperopt"

    def __init__(self, api_config, **kwargs):
        AbstractOptimizer.__init__(self, api_config)
        self.space = JointSpace(api_config)
        bounds = self.space.get_bounds()
        self.search = [hp.uniform(f"x{i}", float(lo), float(hi)) for i, (lo, hi) in enumerate(bounds)]
        self.rng = np.random.default_rng(0)

    def suggest(self, n_suggestions=1):
        x = np.array([sample(self.search, rng=self.rng) for _ in range(n_suggestions)], dtype=float)
        return self.space.unwarp(x)

    def observe(self, X, y):
        pass


if __name__ == "__main__":
    experiment_main(HyperoptSampler)
