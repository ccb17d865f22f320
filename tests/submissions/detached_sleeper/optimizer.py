"""Ignores SIGTERM, starts a detached SIGTERM-ignoring child in its own session, then hangs.

Both carry the name in marker.txt (written by the test): the optimizer in /proc/self/comm, the child in
its argv, so the test can look for survivors from outside the sandbox.
"""

import os
import signal
import subprocess
import sys
import time

import bayesmark.random_search as rs
from bayesmark.abstract_optimizer import AbstractOptimizer
from bayesmark.experiment import experiment_main

HERE = os.path.dirname(os.path.abspath(__file__))
CHILD = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"


def marker():
    try:
        with open(os.path.join(HERE, "marker.txt")) as handle:
            return handle.read().strip()[:15]
    except OSError:
        return "bbo-sleeper"


class DetachedSleeper(AbstractOptimizer):
    primary_import = None

    def __init__(self, api_config, **kwargs):
        AbstractOptimizer.__init__(self, api_config)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        name = marker()
        try:
            with open("/proc/self/comm", "w") as handle:
                handle.write(name)
        except OSError:
            pass
        self.child = subprocess.Popen(
            [sys.executable, "-c", CHILD, name],
            start_new_session=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        print(f"SLEEPER child {self.child.pid}", file=sys.stderr, flush=True)
        self.calls = 0

    def suggest(self, n_suggestions=1):
        self.calls += 1
        if self.calls > 2:
            while True:
                time.sleep(1)
        return rs.suggest_dict([], [], self.api_config, n_suggestions=n_suggestions)

    def observe(self, X, y):
        pass


if __name__ == "__main__":
    experiment_main(DetachedSleeper)
