"""A random search whose first suggestion is bent out of the declared space as `case.json` says:
{"set": {name: any JSON value}} replaces values, {"drop": [names]} removes parameters, {"lists": N}
replaces every value by a list of N copies of itself (each copy in range: ~4 MB for N = 37000)."""

import json
import os

import bayesmark.random_search as rs
from bayesmark.abstract_optimizer import AbstractOptimizer
from bayesmark.experiment import experiment_main

with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "case.json")) as _f:
    CASE = json.load(_f)


class OffSpace(AbstractOptimizer):
    def __init__(self, api_config, **kwargs):
        AbstractOptimizer.__init__(self, api_config)

    def suggest(self, n_suggestions=1):
        points = rs.suggest_dict([], [], self.api_config, n_suggestions=n_suggestions)
        first = points[0]
        first.update(CASE.get("set", {}))
        for name in CASE.get("drop", []):
            first.pop(name, None)
        if "lists" in CASE:
            for name in list(first):
                first[name] = [first[name]] * CASE["lists"]
        return points

    def observe(self, X, y):
        pass


if __name__ == "__main__":
    experiment_main(OffSpace)
