"""A (1+λ) evolution strategy in the 2020 starter-kit format.

It works in bayesmark's warped space (logs taken, categories one-hot), where every dimension is a plain
interval: the first batch is uniform, then each batch is Gaussian steps around the best point seen. The
step size follows the one-fifth rule: it grows when a batch improves on the best and shrinks otherwise.
Randomness comes from numpy's global state, which the scorer seeds once per study.
"""

import numpy as np
from bayesmark.abstract_optimizer import AbstractOptimizer
from bayesmark.experiment import experiment_main
from bayesmark.space import JointSpace

INITIAL_STEP = 0.25  # as a fraction of each dimension's width
MIN_STEP, MAX_STEP = 0.01, 0.5
GROW, SHRINK = 1.5, 0.8


class LocalSearchOptimizer(AbstractOptimizer):
    primary_import = None

    def __init__(self, api_config, **kwargs):
        AbstractOptimizer.__init__(self, api_config)
        self.space = JointSpace(api_config)
        bounds = self.space.get_bounds()
        self.lower, self.upper = bounds[:, 0], bounds[:, 1]
        self.step = INITIAL_STEP
        self.best_x = None
        self.best_y = np.inf

    def suggest(self, n_suggestions=1):
        width = self.upper - self.lower
        if self.best_x is None:
            points = self.lower + np.random.rand(n_suggestions, len(width)) * width
        else:
            noise = np.random.randn(n_suggestions, len(width)) * self.step * width
            points = np.clip(self.best_x + noise, self.lower, self.upper)
        return self.space.unwarp(points)

    def observe(self, X, y):
        losses = np.asarray(y, dtype=float)
        finite = np.isfinite(losses)
        if not finite.any():
            self.step = max(MIN_STEP, self.step * SHRINK)
            return
        candidate = int(np.argmin(np.where(finite, losses, np.inf)))
        improved = losses[candidate] < self.best_y
        if improved:
            self.best_y = float(losses[candidate])
            self.best_x = self.space.warp([X[candidate]])[0]
        if self.best_x is not None:  # the uniform first batch does not count for the step size
            self.step = min(MAX_STEP, self.step * GROW) if improved else max(MIN_STEP, self.step * SHRINK)


if __name__ == "__main__":
    experiment_main(LocalSearchOptimizer)
