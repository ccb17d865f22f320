"""A random search that, half a second after loading, floods the protocol channel with unsolicited
4 MiB lines as fast as the pipe takes them, from a background thread, until it is killed."""

import gc
import threading
import time

import bayesmark.random_search as rs
from bayesmark.abstract_optimizer import AbstractOptimizer
from bayesmark.experiment import experiment_main

LINE = b'{"ok": true, "op": "suggest", "X": "' + b"x" * (4 * 1024 * 1024 - 40) + b'"}\n'


def _flood():
    time.sleep(0.5)  # the host has sent its hello by now
    out = next(o._out for o in gc.get_objects() if type(o).__name__ == "_Channel" and hasattr(o, "_out"))
    try:
        while True:
            view = memoryview(LINE)
            while view:
                view = view[out.write(view) :]
    except OSError:
        pass  # the harness closed the pipe


threading.Thread(target=_flood, daemon=True).start()


class Flood(AbstractOptimizer):
    def __init__(self, api_config, **kwargs):
        AbstractOptimizer.__init__(self, api_config)

    def suggest(self, n_suggestions=1):
        time.sleep(0.2)
        return rs.suggest_dict([], [], self.api_config, n_suggestions=n_suggestions)

    def observe(self, X, y):
        pass


if __name__ == "__main__":
    experiment_main(Flood)
