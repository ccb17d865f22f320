"""Touches four times its memory limit (read from its cgroup) in its first suggest."""

import sys

import bayesmark.random_search as rs
from bayesmark.abstract_optimizer import AbstractOptimizer
from bayesmark.experiment import experiment_main

CHUNK = 32 * 1024 * 1024


def memory_limit():
    for path in ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory.max"):
        try:
            with open(path) as handle:
                text = handle.read().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 1 << 50:
            return int(text)
    return 2 << 30


class MemoryHog(AbstractOptimizer):
    primary_import = None

    def __init__(self, api_config, **kwargs):
        AbstractOptimizer.__init__(self, api_config)
        self.hoard = []

    def suggest(self, n_suggestions=1):
        target = 4 * memory_limit()
        print(f"hogging {target >> 20} MB", file=sys.stderr, flush=True)
        while len(self.hoard) * CHUNK < target:
            self.hoard.append(bytearray(b"\x01") * CHUNK)  # written, so really resident
        return rs.suggest_dict([], [], self.api_config, n_suggestions=n_suggestions)

    def observe(self, X, y):
        pass


if __name__ == "__main__":
    experiment_main(MemoryHog)
