"""A broken submission, on purpose: it imports `surrogate`, a helper module its author kept beside the
optimizer on their own machine but left out of the zip. Scoring fails with a cause the team and the
organizers see (`bbo validate` would have caught it before any quota was spent)."""

from bayesmark.abstract_optimizer import AbstractOptimizer
from bayesmark.experiment import experiment_main
from surrogate import ExpectedImprovement  # not in the zip: fails at import


class SurrogateOptimizer(AbstractOptimizer):
    primary_import = None

    def __init__(self, api_config, **kwargs):
        AbstractOptimizer.__init__(self, api_config)
        self.acquisition = ExpectedImprovement(api_config)

    def suggest(self, n_suggestions=1):
        return self.acquisition.maximize(n_suggestions)

    def observe(self, X, y):
        self.acquisition.update(X, y)


if __name__ == "__main__":
    experiment_main(SurrogateOptimizer)
