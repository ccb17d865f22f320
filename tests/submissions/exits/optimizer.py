"""Exits the process in the middle of a study."""

import os

from bayesmark.abstract_optimizer import AbstractOptimizer
from bayesmark.experiment import experiment_main


class Quitter(AbstractOptimizer):
    def __init__(self, api_config, **kwargs):
        AbstractOptimizer.__init__(self, api_config)

    def suggest(self, n_suggestions=1):
        os._exit(7)

    def observe(self, X, y):
        pass


if __name__ == "__main__":
    experiment_main(Quitter)
