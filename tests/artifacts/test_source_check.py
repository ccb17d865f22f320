"""The syntax check of optimizer.py runs in a child process with limits (issue 14 finding 4): the inputs
that raised MemoryError or took gigabytes in the gateway are the team's InvalidSubmission, the caller's
memory does not move, and a failure to start the child is ours."""

from __future__ import annotations

import contextlib
import io
import resource
import sys
import threading
import time
import zipfile

import psutil
import pytest

from artifacts import archive, source_check
from runtime.spec import SubmissionRules

RULES = SubmissionRules(max_zip_mb=4, max_unpacked_mb=16, max_files=20)  # max_source_kb: the default 1024


def zipped(source: bytes, compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as zf:
        zf.writestr("optimizer.py", source)
    return buffer.getvalue()


def ordinary_source(size: int) -> bytes:
    """Ordinary code (functions, classes, loops) of about `size` bytes."""
    block = (
        "class Model{i}:\n"
        "    def __init__(self, x):\n"
        "        self.x = [x * k for k in range({i} % 7 + 1)]\n\n"
        "    def score(self, y):\n"
        "        total = 0.0\n"
        "        for a, b in zip(self.x, y):\n"
        "            total += (a - b) ** 2 if a > b else abs(a - b)\n"
        "        return total / max(1, len(y))\n\n"
    )
    out, i = [], 0
    while sum(map(len, out)) < size:
        out.append(block.format(i=i))
        i += 1
    return "".join(out).encode()


def checkers() -> list[psutil.Process]:
    """This process's syntax-check children (the session's Redis is a child too)."""
    found = []
    for child in psutil.Process().children():
        with contextlib.suppress(psutil.NoSuchProcess):
            if child.cmdline()[1:4] == ["-I", "-S", "-B"]:
                found.append(child)
    return found


def test_the_inputs_that_broke_the_gateway_are_the_teams_invalid_submission():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cases = {
        # raised MemoryError in the gateway (a 500) on the landed code
        "x= then 200,000 '-'": (b"x=" + b"-" * 200_000 + b"1\n", "too complex to parse within the limits"),
        "a 300,000-term sum": (b"x=" + b"1+" * 300_000 + b"1\n", "too complex to parse within the limits"),
        # 1.8 MiB (0.65 MiB zipped): 504 MiB and 1.1 s in the caller's process on the landed code
        "1.8 MiB of 1-tuples": (
            ("a=[" + "".join(f"({i * 7919 % 1000003},)," for i in range(190_000)) + "]\n").encode(),
            "optimizer.py is 1835 KiB; the limit is 1024 KiB",
        ),
        "a syntax error": (b"import os\n\ndef f(:\n", "syntax error in optimizer.py line 3"),
        "a NUL byte": (b"x = 1\0\n", "null bytes"),
    }
    for name, (source, reason) in cases.items():
        with pytest.raises(archive.InvalidSubmission) as caught:
            archive.check(zipped(source), RULES)
        assert reason in str(caught.value), (name, str(caught.value))
    grew = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grew < 30, f"the caller grew by {grew:.0f} MiB"


def test_a_source_past_the_memory_limit_is_refused_by_the_child_not_the_caller():
    rules = SubmissionRules(max_zip_mb=4, max_unpacked_mb=16, max_files=20, max_source_kb=4096)
    source = b"x=" + b"a," * 1_000_000 + b"\n"  # 2 MiB: about 1 GiB to compile, past the child's 512 MiB
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(archive.InvalidSubmission, match="too complex to parse within the limits"):
        archive.check(zipped(source, zipfile.ZIP_STORED), rules)  # stored: no ratio to refuse it
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024 < 30


def test_ordinary_and_data_heavy_sources_up_to_the_limit_are_accepted():
    for source in (
        ordinary_source(1000 * 1024),
        ("DATA = [" + ", ".join(["0.123456"] * 100_000) + "]\n").encode(),
    ):
        assert len(source) <= 1024 * 1024
        assert archive.check(zipped(source), RULES).files == 1


def test_a_child_past_its_wall_clock_is_killed_and_the_source_refused(monkeypatch):
    monkeypatch.setattr(source_check, "WALL_S", 0.05)
    started = time.monotonic()
    with pytest.raises(archive.InvalidSubmission, match="too complex"):
        source_check.check_syntax(ordinary_source(1000 * 1024))  # 0.1 s of compiling
    assert time.monotonic() - started < 5
    assert not checkers(), "the child was left running"


def test_at_most_two_children_parse_at_once():
    heavy = b"x=" + b"a," * 200_000 + b"\n"
    seen, done = [], threading.Event()

    def watch() -> None:
        while not done.is_set():
            seen.append(len(checkers()))
            time.sleep(0.01)

    watcher = threading.Thread(target=watch)
    watcher.start()
    workers = [threading.Thread(target=source_check.check_syntax, args=(heavy,)) for _ in range(5)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    done.set()
    watcher.join()
    assert max(seen) <= source_check.MAX_CHILDREN, max(seen)
    assert max(seen) >= 1


def test_a_child_that_cannot_be_started_is_ours(monkeypatch):
    monkeypatch.setattr(sys, "executable", "/nonexistent/python3.11")
    with pytest.raises(OSError) as caught:
        source_check.check_syntax(b"x = 1\n")
    assert not isinstance(caught.value, archive.InvalidSubmission)
