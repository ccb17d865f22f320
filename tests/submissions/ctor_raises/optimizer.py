from bayesmark.abstract_optimizer import AbstractOptimizer
from bayesmark.experiment import experiment_main


class Fragile(AbstractOptimizer):
    def __init__(self, api_config, **kwargs):
        raise RuntimeError("constructor exploded")

    def suggest(self, n_suggestions=1):
        return []

    def observe(self, X, y):
        pass


if __name__ == "__main__":
    experiment_main(Fragile)
