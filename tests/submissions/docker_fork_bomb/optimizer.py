"""Starts a fork bomb in its first suggest, then keeps answering; reports how many processes it sees."""

import os
import sys
import time

import bayesmark.random_search as rs
from bayesmark.abstract_optimizer import AbstractOptimizer
from bayesmark.experiment import experiment_main


def bomb():
    while True:  # every process keeps forking; failures (the pids limit) only slow it down
        try:
            os.fork()
        except OSError:
            time.sleep(0.2)


class ForkBomb(AbstractOptimizer):
    primary_import = None

    def __init__(self, api_config, **kwargs):
        AbstractOptimizer.__init__(self, api_config)
        self.started = False

    def suggest(self, n_suggestions=1):
        if not self.started:
            self.started = True
            if os.fork() == 0:
                bomb()
            time.sleep(2)
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
        print(f"PIDS {len(pids)}", file=sys.stderr, flush=True)
        return rs.suggest_dict([], [], self.api_config, n_suggestions=n_suggestions)

    def observe(self, X, y):
        pass


if __name__ == "__main__":
    experiment_main(ForkBomb)
