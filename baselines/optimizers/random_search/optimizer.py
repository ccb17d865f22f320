"""Random search in the 2020 starter-kit format: the reference every normalized score is measured against.

It draws from numpy's global random state, which whoever runs it seeds once per study (bayesmark's
`experiment_main`, the sandbox host, or the baseline build), so a study's points repeat exactly.
"""

from bayesmark.abstract_optimizer import AbstractOptimizer
from bayesmark.experiment import experiment_main
from bayesmark.random_search import suggest_dict


class RandomSearchOptimizer(AbstractOptimizer):
    # No third-party optimizer package behind it: bayesmark then reports the version as "x.x.x".
    primary_import = None

    def __init__(self, api_config, **kwargs):
        AbstractOptimizer.__init__(self, api_config)

    def suggest(self, n_suggestions=1):
        # Random search ignores the history, so none is kept.
        return suggest_dict([], [], self.api_config, n_suggestions=n_suggestions)

    def observe(self, X, y):
        pass


if __name__ == "__main__":
    experiment_main(RandomSearchOptimizer)
