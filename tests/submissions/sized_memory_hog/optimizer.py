"""Allocates and touches the number of MB in hog_mb.txt (written by the test) in its first suggest."""

import os
import sys

import bayesmark.random_search as rs
from bayesmark.abstract_optimizer import AbstractOptimizer
from bayesmark.experiment import experiment_main

HERE = os.path.dirname(os.path.abspath(__file__))
CHUNK = 16 * 1024 * 1024


def target_mb():
    try:
        with open(os.path.join(HERE, "hog_mb.txt")) as handle:
            return int(handle.read())
    except OSError:
        return 8192


class SizedMemoryHog(AbstractOptimizer):
    primary_import = None

    def __init__(self, api_config, **kwargs):
        AbstractOptimizer.__init__(self, api_config)
        self.hoard = []

    def suggest(self, n_suggestions=1):
        target = target_mb() << 20
        print(f"hogging {target >> 20} MB", file=sys.stderr, flush=True)
        while len(self.hoard) * CHUNK < target:
            self.hoard.append(bytearray(b"\x01") * CHUNK)  # written, so really resident
        print(f"HOG SURVIVED with {len(self.hoard) * CHUNK >> 20} MB", file=sys.stderr, flush=True)
        return rs.suggest_dict([], [], self.api_config, n_suggestions=n_suggestions)

    def observe(self, X, y):
        pass


if __name__ == "__main__":
    experiment_main(SizedMemoryHog)
