"""Random search that needs a package the image lacks: the test bundles its wheel and requirements.txt."""

import sys

import bayesmark.random_search as rs
import bbo_tiny_dep
from bayesmark.abstract_optimizer import AbstractOptimizer
from bayesmark.experiment import experiment_main


class Bundled(AbstractOptimizer):
    primary_import = "bbo_tiny_dep"

    def __init__(self, api_config, **kwargs):
        AbstractOptimizer.__init__(self, api_config)
        print(f"TINY {bbo_tiny_dep.VALUE} from {bbo_tiny_dep.__file__}", file=sys.stderr, flush=True)

    def suggest(self, n_suggestions=1):
        return rs.suggest_dict([], [], self.api_config, n_suggestions=n_suggestions)

    def observe(self, X, y):
        pass


if __name__ == "__main__":
    experiment_main(Bundled)
