"""Writes chosen raw bytes on the protocol channel in place of one reply, as a hostile team can.

`raw.json` next to this file says when and what: {"when": "import" | "init" | "suggest" | "observe",
"b64": base64 of the bytes}. At import time the bytes go out before the host's own hello (so they are
read as the hello); in a method they go out instead of that method's reply, and the method then blocks
so the host never sends its own. Without raw.json it answers suggest with X nested 20,000 deep (40 KB:
within the reply cap).
"""

import base64
import gc
import json
import os
import time

import bayesmark.random_search as rs
from bayesmark.abstract_optimizer import AbstractOptimizer
from bayesmark.experiment import experiment_main

_HERE = os.path.dirname(os.path.abspath(__file__))
try:
    with open(os.path.join(_HERE, "raw.json")) as _f:
        _CASE = json.load(_f)
    RAW = base64.b64decode(_CASE["b64"])
    WHEN = _CASE["when"]
except FileNotFoundError:
    RAW = b'{"ok":true,"op":"suggest","X":' + b"[" * 20_000 + b"]" * 20_000 + b"}\n"
    WHEN = "suggest"


def _channel_out():
    """The host's private duplicate of the protocol's stdout, found among the live objects."""
    for obj in gc.get_objects():
        if type(obj).__name__ == "_Channel" and hasattr(obj, "_out"):
            return obj._out
    raise RuntimeError("no protocol channel in this process")


def send_raw_and_block():
    out = _channel_out()
    view = memoryview(RAW)
    while view:
        view = view[out.write(view) :]
    time.sleep(600)  # the host's own reply never comes; the harness must kill us


if WHEN == "import":
    out = _channel_out()
    view = memoryview(RAW)
    while view:
        view = view[out.write(view) :]


class RawReply(AbstractOptimizer):
    def __init__(self, api_config, **kwargs):
        AbstractOptimizer.__init__(self, api_config)
        if WHEN == "init":
            send_raw_and_block()

    def suggest(self, n_suggestions=1):
        if WHEN == "suggest":
            send_raw_and_block()
        return rs.suggest_dict([], [], self.api_config, n_suggestions=n_suggestions)

    def observe(self, X, y):
        if WHEN == "observe":
            send_raw_and_block()


if __name__ == "__main__":
    experiment_main(RawReply)
