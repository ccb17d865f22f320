import bayesmark.random_search as rs
from bayesmark.abstract_optimizer import AbstractOptimizer
from bayesmark.experiment import experiment_main


class OutOfBounds(AbstractOptimizer):
    def __init__(self, api_config, **kwargs):
        AbstractOptimizer.__init__(self, api_config)

    def suggest(self, n_suggestions=1):
        points = rs.suggest_dict([], [], self.api_config, n_suggestions=n_suggestions)
        name, conf = next((k, v) for k, v in sorted(self.api_config.items()) if "range" in v)
        points[0][name] = conf["range"][1] * 1000 + 1000
        return points

    def observe(self, X, y):
        pass


if __name__ == "__main__":
    experiment_main(OutOfBounds)
