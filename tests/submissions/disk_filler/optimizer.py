"""Tries to write one huge file, then to fill /tmp with smaller ones; reports how far it got.

One `DISK {json}` line at construction: bytes written and the error that stopped each attempt.
"""

import json
import os
import sys

import bayesmark.random_search as rs
from bayesmark.abstract_optimizer import AbstractOptimizer
from bayesmark.experiment import experiment_main

MB = 1024 * 1024
LIMIT = 4096 * MB  # stop on our own long before a real disk would fill, should nothing else stop us


def _fill(path, total):
    written = 0
    try:
        with open(path, "wb") as handle:
            block = b"\x01" * MB
            while written < total:
                handle.write(block)
                handle.flush()
                written += MB
        return written, None
    except OSError as exc:
        return written, exc.errno


def disk():
    big_written, big_error = _fill("/tmp/big.bin", LIMIT)
    actual = os.path.getsize("/tmp/big.bin") if os.path.exists("/tmp/big.bin") else 0
    os.unlink("/tmp/big.bin")
    filled, fill_error, index = 0, None, 0
    while filled < LIMIT and fill_error is None:
        written, fill_error = _fill(f"/tmp/fill-{index}.bin", 4 * MB)
        filled += written
        index += 1
    return {
        "big_bytes": actual,
        "big_errno": big_error,
        "fill_bytes": filled,
        "fill_errno": fill_error,
    }


class DiskFiller(AbstractOptimizer):
    primary_import = None

    def __init__(self, api_config, **kwargs):
        AbstractOptimizer.__init__(self, api_config)
        print("DISK " + json.dumps(disk()), file=sys.stderr, flush=True)

    def suggest(self, n_suggestions=1):
        return rs.suggest_dict([], [], self.api_config, n_suggestions=n_suggestions)

    def observe(self, X, y):
        pass


if __name__ == "__main__":
    experiment_main(DiskFiller)
