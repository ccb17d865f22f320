"""A small Gaussian-process optimizer on scikit-optimize, in bayesmark's warped space (written for tests)."""

import numpy as np
from bayesmark.abstract_optimizer import AbstractOptimizer
from bayesmark.experiment import experiment_main
from bayesmark.space import JointSpace
from skopt import Optimizer
from skopt.space import Real


class SkoptGP(AbstractOptimizer):
    primary_import = "scikit-optimize"

    def __init__(self, api_config, **kwargs):
        AbstractOptimizer.__init__(self, api_config)
        self.space = JointSpace(api_config)
        bounds = self.space.get_bounds()
        dims = [Real(float(lo), float(hi)) for lo, hi in bounds]
        self.opt = Optimizer(dims, base_estimator="GP", n_initial_points=4, acq_optimizer="sampling")

    def suggest(self, n_suggestions=1):
        x = np.array(self.opt.ask(n_points=n_suggestions))
        return self.space.unwarp(x)

    def observe(self, X, y):
        warped = self.space.warp(X).tolist()
        worst = max([v for v in y if np.isfinite(v)], default=0.0)
        self.opt.tell(warped, [float(v) if np.isfinite(v) else worst for v in y])


if __name__ == "__main__":
    experiment_main(SkoptGP)
