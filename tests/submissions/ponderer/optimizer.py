"""A random search that thinks for 0.3 s per round: a study lasts a few seconds, long enough to be caught
mid-way by a test that kills its worker."""

import time

import bayesmark.random_search as rs
from bayesmark.abstract_optimizer import AbstractOptimizer
from bayesmark.experiment import experiment_main


class Ponderer(AbstractOptimizer):
    def __init__(self, api_config, **kwargs):
        AbstractOptimizer.__init__(self, api_config)

    def suggest(self, n_suggestions=1):
        time.sleep(0.3)
        return rs.suggest_dict([], [], self.api_config, n_suggestions=n_suggestions)

    def observe(self, X, y):
        pass


if __name__ == "__main__":
    experiment_main(Ponderer)
