"""Starts a fork bomb in its first suggest, then keeps answering; reports how many processes it sees.

Every bomb process names itself (/proc/self/comm) after marker.txt, written by the test, so the test can
look for survivors from outside.
"""

import os
import sys
import time

import bayesmark.random_search as rs
from bayesmark.abstract_optimizer import AbstractOptimizer
from bayesmark.experiment import experiment_main

HERE = os.path.dirname(os.path.abspath(__file__))


def marker():
    try:
        with open(os.path.join(HERE, "marker.txt")) as handle:
            return handle.read().strip()[:15]
    except OSError:
        return "bbo-fork-bomb"


def bomb(name):
    try:
        with open("/proc/self/comm", "w") as handle:
            handle.write(name)
    except OSError:
        pass
    while True:  # every process keeps forking; failures (the process limit) only slow it down
        try:
            os.fork()
        except OSError:
            time.sleep(0.2)


class MarkedForkBomb(AbstractOptimizer):
    primary_import = None

    def __init__(self, api_config, **kwargs):
        AbstractOptimizer.__init__(self, api_config)
        self.started = False

    def suggest(self, n_suggestions=1):
        if not self.started:
            self.started = True
            if os.fork() == 0:
                bomb(marker())
            time.sleep(2)
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
        print(f"PIDS {len(pids)}", file=sys.stderr, flush=True)
        return rs.suggest_dict([], [], self.api_config, n_suggestions=n_suggestions)

    def observe(self, X, y):
        pass


if __name__ == "__main__":
    experiment_main(MarkedForkBomb)
