from bayesmark.abstract_optimizer import AbstractOptimizer
from bayesmark.experiment import experiment_main
from helpers import batch


class UsesHelper(AbstractOptimizer):
    def __init__(self, api_config, **kwargs):
        AbstractOptimizer.__init__(self, api_config)

    def suggest(self, n_suggestions=1):
        return batch(self.api_config, n_suggestions)

    def observe(self, X, y):
        assert len(X) == len(y)


if __name__ == "__main__":
    experiment_main(UsesHelper)
