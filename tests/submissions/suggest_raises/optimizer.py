"""suggest raises every other round and observe always raises: bayesmark falls back / ignores."""

import bayesmark.random_search as rs
from bayesmark.abstract_optimizer import AbstractOptimizer
from bayesmark.experiment import experiment_main


class Flaky(AbstractOptimizer):
    def __init__(self, api_config, **kwargs):
        AbstractOptimizer.__init__(self, api_config)
        self.calls = 0

    def suggest(self, n_suggestions=1):
        self.calls += 1
        if self.calls % 2 == 0:
            raise RuntimeError("no idea this round")
        return rs.suggest_dict([], [], self.api_config, n_suggestions=n_suggestions)

    def observe(self, X, y):
        raise ValueError("cannot learn")


if __name__ == "__main__":
    experiment_main(Flaky)
