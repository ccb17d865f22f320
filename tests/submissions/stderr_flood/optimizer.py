"""A random search that writes 1 MiB of stderr (with terminal escapes in it) at import and in every
suggest: the organizer log keeps the study's share of it, made safe, and counts the rest."""

import sys

import bayesmark.random_search as rs
from bayesmark.abstract_optimizer import AbstractOptimizer
from bayesmark.experiment import experiment_main

LINE = "\x1b]0;owned\x07\x1b[2J" + "e" * 1000 + "\n"


def spill():
    sys.stderr.write(LINE * 1024)
    sys.stderr.flush()


spill()


class StderrFlood(AbstractOptimizer):
    def __init__(self, api_config, **kwargs):
        AbstractOptimizer.__init__(self, api_config)

    def suggest(self, n_suggestions=1):
        spill()
        return rs.suggest_dict([], [], self.api_config, n_suggestions=n_suggestions)

    def observe(self, X, y):
        pass


if __name__ == "__main__":
    experiment_main(StderrFlood)
