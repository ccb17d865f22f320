"""Prints everywhere, Python- and C-level, and uses a bundled helper module: the protocol must survive."""

import os
import sys

import bayesmark.random_search as rs
from bayesmark.abstract_optimizer import AbstractOptimizer
from bayesmark.experiment import experiment_main

print("hello from import time")
os.write(1, b"raw write to fd 1 at import\n")


class Chatty(AbstractOptimizer):
    def __init__(self, api_config, **kwargs):
        AbstractOptimizer.__init__(self, api_config)
        print("constructing", api_config)

    def suggest(self, n_suggestions=1):
        print("suggesting", n_suggestions)
        sys.stdout.write('{"ok": true, "op": "suggest", "X": []}\n')
        os.write(1, b"more raw bytes\n")
        return rs.suggest_dict([], [], self.api_config, n_suggestions=n_suggestions)

    def observe(self, X, y):
        print("observed", len(y), file=sys.stderr)


if __name__ == "__main__":
    experiment_main(Chatty)
