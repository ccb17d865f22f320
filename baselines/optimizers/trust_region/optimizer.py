"""A TuRBO-style trust-region Bayesian optimizer in the 2020 starter-kit format: the "strong" baseline.

The 2020 organizers estimated each problem's best-known loss with TuRBO (Eriksson et al., 2019); this is
a self-contained rendition of TuRBO-1 on numpy, scipy, scikit-learn and bayesmark only:

- work in bayesmark's warped space (log-scaled reals, one-hot categoricals), rescaled to the unit cube;
- an initial Latin-hypercube design, then batches chosen by Thompson sampling from a Gaussian process
  (Matern 5/2 with one length scale per dimension, fitted on standardized losses) over candidates inside
  a box around the best point, shaped by the GP's length scales;
- the box doubles after a run of improving batches, halves after a run of failing ones, and when it
  collapses the search restarts from a fresh design.

It never raises: whatever goes wrong inside a suggest yields random points, an unusable observation is
dropped. All randomness comes from a stream drawn from numpy's global random state at construction, so the
per-study seed the host sets fixes every choice.
"""

import math
import warnings

import numpy as np
from bayesmark.abstract_optimizer import AbstractOptimizer
from bayesmark.experiment import experiment_main
from bayesmark.random_search import suggest_dict
from bayesmark.space import JointSpace
from scipy.linalg import cholesky
from scipy.optimize import minimize
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel

# TuRBO's settings, with side lengths measured in the unit cube.
LENGTH_INIT = 0.8
LENGTH_MIN = 0.5**7
LENGTH_MAX = 1.6
SUCCESS_TOLERANCE = 3
# An improvement smaller than this fraction of the best loss does not count as a success.
IMPROVEMENT = 1e-3
# Bounds of the GP's hyperparameters (on standardized losses in the unit cube), as in TuRBO.
LENGTH_SCALE_BOUNDS = (0.005, 2.0)
OUTPUT_SCALE_BOUNDS = (0.05, 20.0)
NOISE_BOUNDS = (5e-4, 0.2)
# Cost caps: the GP sees at most this many points (those nearest the region's centre), and Thompson
# sampling draws jointly over at most this many candidates, keeping a suggest well under a second.
MAX_TRAIN = 256
MAX_CANDIDATES = 1000
# The hyperparameter fit starts from the previous batch's values, so a few L-BFGS steps are enough (TuRBO
# itself takes 50 Adam steps); an unbounded fit costs most of a suggest.
FIT_ITERATIONS = 25


class TrustRegionOptimizer(AbstractOptimizer):
    primary_import = None

    def __init__(self, api_config, n_init=None, **kwargs):
        AbstractOptimizer.__init__(self, api_config)
        self.space = JointSpace(api_config)
        bounds = np.asarray(self.space.get_bounds(), dtype=float)
        self.lb, self.ub = bounds[:, 0], bounds[:, 1]
        # A zero-width dimension (a one-value parameter) maps to 0 in the cube; avoid dividing by zero.
        self.width = np.where(self.ub > self.lb, self.ub - self.lb, 1.0)
        self.dim = len(self.lb)
        self.rng = np.random.RandomState(np.random.randint(0, 2**31 - 1))
        self.n_init = n_init  # None: chosen at the first suggest, once the batch size is known
        self.failure_tolerance = None
        self.theta = None  # the GP's last fitted log-hyperparameters, to warm-start the next fit
        self._restart()

    # -- the starter-kit interface ------------------------------------------------------------------

    def suggest(self, n_suggestions=1):
        try:
            points = self._suggest_unit(n_suggestions)
            warped = self.lb + np.clip(points, 0.0, 1.0) * (self.ub - self.lb)
            return self.space.unwarp(np.clip(warped, self.lb, self.ub))
        except Exception:
            return suggest_dict([], [], self.api_config, n_suggestions=n_suggestions, random=self.rng)

    def observe(self, X, y):
        try:
            points = (np.asarray(self.space.warp(X), dtype=float) - self.lb) / self.width
            losses = np.asarray(y, dtype=float).reshape(-1)
        except Exception:
            return  # bayesmark ignores an observe that raises; dropping the batch is the same
        if points.shape[0] != losses.shape[0] or not np.all(np.isfinite(points)):
            return
        losses = np.where(np.isnan(losses), np.inf, losses)
        previous_best = np.min(self.y) if len(self.y) else np.inf
        in_design_phase = len(self.y) < self._initial_size(len(losses))
        self.X = np.vstack([self.X, np.clip(points, 0.0, 1.0)])
        self.y = np.concatenate([self.y, losses])
        if not in_design_phase:
            self._adjust_region(np.min(losses), previous_best)

    # -- trust region bookkeeping ---------------------------------------------------------------------

    def _restart(self):
        self.X = np.zeros((0, self.dim))
        self.y = np.zeros(0)
        self.length = LENGTH_INIT
        self.successes = 0
        self.failures = 0
        self.design = None  # the initial design still to suggest, made at the next suggest

    def _initial_size(self, batch):
        if self.n_init is not None:
            return max(1, int(self.n_init))
        # TuRBO starts from 2 x dim points; at least one batch, and capped so small budgets still
        # leave most evaluations to the model.
        return max(batch, min(2 * self.dim, 20))

    def _adjust_region(self, batch_best, previous_best):
        if not np.isfinite(previous_best):
            improved = np.isfinite(batch_best)
        else:
            improved = batch_best < previous_best - IMPROVEMENT * abs(previous_best)
        if improved:
            self.successes += 1
            self.failures = 0
        else:
            self.successes = 0
            self.failures += 1
        if self.successes >= SUCCESS_TOLERANCE:
            self.length = min(2.0 * self.length, LENGTH_MAX)
            self.successes = 0
        elif self.failures >= (self.failure_tolerance or 1):
            self.length /= 2.0
            self.failures = 0
        if self.length < LENGTH_MIN:
            self._restart()

    # -- suggestions in the unit cube ---------------------------------------------------------------------

    def _suggest_unit(self, n):
        if self.failure_tolerance is None:
            self.failure_tolerance = int(math.ceil(max(4.0 / n, self.dim / n)))
        if self.design is None:
            self.design = self._latin_hypercube(max(0, self._initial_size(n) - len(self.y)))
        take, self.design = self.design[:n], self.design[n:]
        rest = n - len(take)
        if rest == 0:
            return take
        try:
            chosen = self._thompson(rest)
        except Exception:
            # A GP that cannot be fitted must not stop the study: sample the current region instead.
            chosen = self._random_in_region(rest)
        return np.vstack([take, chosen])

    def _latin_hypercube(self, n):
        if n <= 0:
            return np.zeros((0, self.dim))
        strata = np.stack([self.rng.permutation(n) for _ in range(self.dim)], axis=1)
        return (strata + self.rng.uniform(size=(n, self.dim))) / n

    def _training_data(self):
        finite = np.isfinite(self.y)
        if finite.sum() < 2:
            return None
        # A failed evaluation is as bad as the worst one seen, not infinitely bad: the GP needs numbers.
        y = np.where(finite, self.y, np.max(self.y[finite]))
        X = self.X
        center = X[np.argmin(y)]
        if len(y) > MAX_TRAIN:
            nearest = np.argsort(np.sum((X - center) ** 2, axis=1))[:MAX_TRAIN]
            X, y = X[nearest], y[nearest]
        spread = np.std(y)
        y = (y - np.mean(y)) / (spread if spread > 1e-12 else 1.0)
        return X, y, center

    def _fit(self, X, y):
        kernel = ConstantKernel(1.0, OUTPUT_SCALE_BOUNDS) * Matern(
            length_scale=np.full(self.dim, 0.5), length_scale_bounds=LENGTH_SCALE_BOUNDS, nu=2.5
        ) + WhiteKernel(1e-2, NOISE_BOUNDS)
        if self.theta is not None and self.theta.shape == kernel.theta.shape:
            kernel = kernel.clone_with_theta(np.clip(self.theta, *kernel.bounds.T))
        gp = GaussianProcessRegressor(kernel=kernel, optimizer=_short_lbfgs, normalize_y=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # convergence chatter from the hyperparameter fit
            gp.fit(X, y)
        self.theta = np.asarray(gp.kernel_.theta, dtype=float)
        length_scales = np.atleast_1d(gp.kernel_.k1.k2.length_scale).astype(float)
        if length_scales.size == 1:
            length_scales = np.full(self.dim, float(length_scales[0]))
        return gp, length_scales

    def _region(self, center, length_scales):
        # Stretch the box along dimensions the GP finds smooth, keeping its volume that of a cube of side
        # `length`.
        weights = length_scales / np.mean(length_scales)
        weights = weights / np.prod(np.power(weights, 1.0 / len(weights)))
        half = weights * self.length / 2.0
        return np.clip(center - half, 0.0, 1.0), np.clip(center + half, 0.0, 1.0)

    def _random_in_region(self, n):
        data = self._training_data()
        if data is None:
            return self.rng.uniform(size=(n, self.dim))
        low, high = self._region(data[2], np.ones(self.dim))
        return low + (high - low) * self.rng.uniform(size=(n, self.dim))

    def _thompson(self, n):
        data = self._training_data()
        if data is None:
            return self.rng.uniform(size=(n, self.dim))
        X, y, center = data
        gp, length_scales = self._fit(X, y)
        low, high = self._region(center, length_scales)

        n_candidates = int(min(max(100 * self.dim, 10 * n, 200), MAX_CANDIDATES))
        perturbed = low + (high - low) * self.rng.uniform(size=(n_candidates, self.dim))
        # Perturb only a few coordinates of the centre at a time in high dimension (TuRBO's trick).
        mask = self.rng.uniform(size=(n_candidates, self.dim)) <= min(20.0 / self.dim, 1.0)
        empty = ~mask.any(axis=1)
        mask[empty, self.rng.randint(0, self.dim, size=int(empty.sum()))] = True
        candidates = np.where(mask, perturbed, center)

        mean, cov = gp.predict(candidates, return_cov=True)
        draws = self._joint_samples(mean, cov, n)
        chosen = []
        for j in range(n):
            best = int(np.argmin(draws[:, j]))
            chosen.append(candidates[best])
            draws[best, :] = np.inf  # one candidate per suggestion in the batch
        return np.asarray(chosen)

    def _joint_samples(self, mean, cov, n):
        cov = 0.5 * (cov + cov.T)
        jitter = 1e-8 * max(1.0, float(np.mean(np.diag(cov))))
        noise = self.rng.standard_normal(size=(len(mean), n))
        for _ in range(6):
            try:
                factor = cholesky(cov + jitter * np.eye(len(mean)), lower=True, check_finite=True)
                return mean[:, None] + factor @ noise
            except Exception:
                jitter *= 100.0
        # Independent draws still rank candidates by an optimistic guess of their loss.
        return mean[:, None] + np.sqrt(np.clip(np.diag(cov), 0.0, None))[:, None] * noise


def _short_lbfgs(objective, theta, bounds):
    result = minimize(
        objective, theta, method="L-BFGS-B", jac=True, bounds=bounds, options={"maxiter": FIT_ITERATIONS}
    )
    return result.x, result.fun


if __name__ == "__main__":
    experiment_main(TrustRegionOptimizer)
