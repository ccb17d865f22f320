"""Fast for two rounds, then hangs and ignores SIGTERM: the harness must cut the study off."""

import signal
import time

import bayesmark.random_search as rs
from bayesmark.abstract_optimizer import AbstractOptimizer
from bayesmark.experiment import experiment_main


class Slow(AbstractOptimizer):
    def __init__(self, api_config, **kwargs):
        AbstractOptimizer.__init__(self, api_config)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        self.calls = 0

    def suggest(self, n_suggestions=1):
        self.calls += 1
        if self.calls > 2:
            while True:
                time.sleep(1)
        return rs.suggest_dict([], [], self.api_config, n_suggestions=n_suggestions)

    def observe(self, X, y):
        pass


if __name__ == "__main__":
    experiment_main(Slow)
