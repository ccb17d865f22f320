"""Leaves a marker file wherever it can write, and refuses to start if an earlier study left one.

A study that finds a marker raises in its constructor (a crash), so a second study completing shows that
nothing written in the first one survived it.
"""

import os
import sys

import bayesmark.random_search as rs
from bayesmark.abstract_optimizer import AbstractOptimizer
from bayesmark.experiment import experiment_main

HERE = os.path.dirname(os.path.abspath(__file__))
NAME = "bbo-study-marker"
PLACES = ("/tmp", os.path.expanduser("~"), "/dev/shm", HERE, "/", "/var/tmp")


class Marker(AbstractOptimizer):
    primary_import = None

    def __init__(self, api_config, **kwargs):
        AbstractOptimizer.__init__(self, api_config)
        for place in PLACES:
            if os.path.exists(os.path.join(place, NAME)):
                raise RuntimeError(f"found a marker from an earlier study in {place}")
        for place in PLACES:
            try:
                with open(os.path.join(place, NAME), "w") as handle:
                    handle.write("here before")
                result = "written"
            except OSError as exc:
                result = f"{type(exc).__name__}: {exc.strerror}"
            print(f"MARKER {place} {result}", file=sys.stderr, flush=True)

    def suggest(self, n_suggestions=1):
        return rs.suggest_dict([], [], self.api_config, n_suggestions=n_suggestions)

    def observe(self, X, y):
        pass


if __name__ == "__main__":
    experiment_main(Marker)
