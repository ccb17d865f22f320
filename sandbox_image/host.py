"""The optimizer host: runs inside the sandbox, loads one starter-kit submission, serves the protocol.

It imports nothing of bbo-arena but the protocol module, because in a container it runs alone.

Usage: python -m sandbox_image.host [--warm] SUBMISSION_DIR_OR_ZIP

With --warm the host starts before there is a submission (a worker keeps such a sandbox while it waits
for its next job): it imports the image's common scientific modules (PREWARM), then waits for one
`{"op": "load"}` line on stdin, the harness's sign that the submission is in place, and only then loads
it as usual. Nothing of any team has run in the process before that line: a warm sandbox holds the
image's modules and nothing else. End of file instead of the line ends the host quietly (its worker
gave it up, or died).

The protocol travels on private duplicates of the original stdin/stdout; file descriptors 0 and 1 are
then pointed at /dev/null and stderr, so whatever the optimizer prints (Python or C level) lands in the
organizer log instead of corrupting the protocol.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import random
import runpy
import sys
import traceback
import types
from typing import Any

try:
    from queue_schema import protocol
except ImportError:  # inside the image, protocol.py sits next to this file
    import protocol  # type: ignore[no-redef]

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")
# What a warm host imports while it waits: bayesmark's space and base class (numpy, scipy's interpolate
# and special), which the starter kit's examples and most optimizers import first. Not
# bayesmark.experiment, which the shim below stands in for.
PREWARM = ("bayesmark.space", "bayesmark.abstract_optimizer")
# The top-level packages of the image those imports load: a submission bundling its own version of one
# of them must not get a warm host, where the image's copy would already be in sys.modules
# (tests/workers/test_warm_sandbox.py checks this list against the sandbox environment).
PREWARMED_PACKAGES = frozenset({"bayesmark", "numpy", "scipy", "importlib_metadata", "lazy_importer"})
LOAD_LINE_BYTES = 256


class _Channel:
    def __init__(self) -> None:
        self._in = os.fdopen(os.dup(0), "rb", buffering=0)
        self._out = os.fdopen(os.dup(1), "wb", buffering=0)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        os.dup2(2, 1)
        sys.stdin = open(os.devnull)  # noqa: SIM115 - lives as long as the process
        sys.stdout = sys.stderr

    def send(self, message: dict[str, Any]) -> None:
        self._out.write(protocol.encode(message))

    def receive(self) -> dict[str, Any] | None:
        line = self._readline()
        if not line:
            return None
        return protocol.decode(line)

    def _readline(self) -> bytes:
        chunks = []
        while True:
            byte_chunk = self._in.readline(protocol.MAX_LINE_BYTES + 1)
            if not byte_chunk:
                return b"".join(chunks)
            chunks.append(byte_chunk)
            if byte_chunk.endswith(b"\n"):
                return b"".join(chunks)


class _Captured:
    optimizer_class: type | None = None


def _install_experiment_shim() -> None:
    """Make `bayesmark.experiment.experiment_main` capture the class instead of running a study.

    The real module costs seconds to import (xarray, scikit-learn); a submission only needs the name.
    Any other attribute loads the real module on first use.
    """
    real: dict[str, types.ModuleType] = {}
    try:
        import bayesmark
    except ImportError:
        return  # the submission will fail to import its base class; that error is reported then
    found = importlib.util.find_spec("bayesmark.experiment")
    origin = found.origin if found else None

    def experiment_main(opt_class: type, args: Any = None) -> None:
        _Captured.optimizer_class = opt_class

    def __getattr__(name: str) -> Any:
        if name.startswith("__") or origin is None:
            raise AttributeError(name)
        if "module" not in real:
            loader_spec = importlib.util.spec_from_file_location("bayesmark._experiment_full", origin)
            module = importlib.util.module_from_spec(loader_spec)
            loader_spec.loader.exec_module(module)
            real["module"] = module
        return getattr(real["module"], name)

    shim = types.ModuleType("bayesmark.experiment")
    shim.experiment_main = experiment_main
    shim.__getattr__ = __getattr__
    shim.__spec__ = found
    sys.modules["bayesmark.experiment"] = shim
    bayesmark.experiment = shim


def _unzip(archive: str) -> str:
    """A zip given directly (the starter kit's upload) is unpacked into a private temporary folder."""
    import tempfile
    import zipfile

    target = tempfile.mkdtemp(prefix="submission-")
    with zipfile.ZipFile(archive) as z:
        for info in z.infolist():
            dest = os.path.realpath(os.path.join(target, info.filename))
            if not dest.startswith(os.path.realpath(target) + os.sep):
                raise ValueError(f"archive entry {info.filename!r} points outside the archive")
            z.extract(info, target)
    return target


def _load(submission_dir: str) -> tuple[type | None, dict[str, Any] | None]:
    if os.path.isfile(submission_dir):
        try:
            submission_dir = _unzip(submission_dir)
        except Exception as exc:  # noqa: BLE001 - any unreadable archive is the submission's failure
            return None, protocol.error(
                protocol.OP_HELLO, protocol.ERR_LOAD, f"cannot unpack the archive: {exc}"
            )
    path = os.path.join(submission_dir, "optimizer.py")
    if not os.path.isfile(path):
        return None, protocol.error(
            protocol.OP_HELLO, protocol.ERR_LOAD, "optimizer.py not found at the top level"
        )
    sys.path.insert(0, submission_dir)
    _install_experiment_shim()
    try:
        runpy.run_path(path, run_name="__main__")
    except SystemExit:
        pass
    except SyntaxError as exc:
        return None, protocol.error(
            protocol.OP_HELLO,
            protocol.ERR_LOAD,
            f"syntax error in {os.path.basename(exc.filename or path)} line {exc.lineno}: {exc.msg}",
            "SyntaxError",
        )
    except BaseException as exc:  # noqa: BLE001 - anything the submission raises is its own failure
        if isinstance(exc, MemoryError):
            _out_of_memory()
        traceback.print_exc()
        return None, protocol.error(
            protocol.OP_HELLO,
            protocol.ERR_LOAD,
            f"optimizer.py failed to import: {type(exc).__name__}: {exc}",
            type(exc).__name__,
        )
    cls = _Captured.optimizer_class
    if cls is None:
        return None, protocol.error(
            protocol.OP_HELLO,
            protocol.ERR_NO_CLASS,
            "optimizer.py never passed an optimizer class to bayesmark.experiment.experiment_main",
        )
    if not (callable(getattr(cls, "suggest", None)) and callable(getattr(cls, "observe", None))):
        return None, protocol.error(
            protocol.OP_HELLO,
            protocol.ERR_NO_CLASS,
            f"{getattr(cls, '__name__', cls)!r} has no suggest/observe methods",
        )
    return cls, None


def _seed(seed: int) -> None:
    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % (2**32))
    except ImportError:
        pass


def _out_of_memory() -> None:
    try:
        sys.stderr.write("[sandbox] MemoryError: the optimizer ran out of memory\n")
        sys.stderr.flush()
    finally:
        os._exit(protocol.EXIT_OUT_OF_MEMORY)


def _raised(op: str, exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, MemoryError):
        _out_of_memory()
    traceback.print_exc()
    return protocol.error(op, protocol.ERR_RAISED, f"{type(exc).__name__}: {exc}", type(exc).__name__)


def serve(submission_dir: str) -> int:
    for var in THREAD_VARS:
        os.environ[var] = "1"
    channel = _Channel()
    cls, load_error = _load(submission_dir)
    if load_error is not None:
        channel.send(load_error)
        return 3
    name = str(getattr(cls, "__name__", "?"))[:200]  # the protocol's schema: a string of at most 200
    channel.send(protocol.ok(protocol.OP_HELLO, optimizer=name, version=protocol.PROTOCOL_VERSION))

    optimizer: Any = None
    last_suggested: list[Any] | None = None
    last_suggested_json: Any = None
    while True:
        try:
            request = channel.receive()
        except protocol.ProtocolError as exc:
            channel.send(protocol.error("?", protocol.ERR_BAD_REQUEST, str(exc)))
            continue
        if request is None:
            return 0
        op = request.get("op")
        if op == protocol.OP_CLOSE:
            channel.send(protocol.ok(protocol.OP_CLOSE))
            return 0
        if op == protocol.OP_INIT:
            _seed(int(request.get("seed", 0)))
            try:
                optimizer = cls(request["api_config"])
            except BaseException as exc:  # noqa: BLE001
                channel.send(_raised(op, exc))
                continue
            channel.send(protocol.ok(op))
        elif optimizer is None:
            channel.send(protocol.error(str(op), protocol.ERR_BAD_REQUEST, "init must come first"))
        elif op == protocol.OP_SUGGEST:
            try:
                suggested = optimizer.suggest(int(request["n"]))
                reply = protocol.ok(op, X=suggested)
                encoded = protocol.encode(reply)
            except BaseException as exc:  # noqa: BLE001 - includes values JSON cannot carry
                channel.send(_raised(op, exc))
                continue
            last_suggested = suggested
            try:
                last_suggested_json = protocol.decode(encoded)["X"]
            except protocol.ProtocolError:
                last_suggested_json = None  # sent as it is: the harness says what is wrong with it
            channel._out.write(encoded)
        elif op == protocol.OP_OBSERVE:
            X = request["X"]
            # bayesmark hands observe the very objects suggest returned; keep that where the batch is ours.
            if last_suggested is not None and last_suggested_json == X:
                X = last_suggested
            last_suggested = last_suggested_json = None
            try:
                optimizer.observe(X, request["y"])
            except BaseException as exc:  # noqa: BLE001
                channel.send(_raised(op, exc))
                continue
            channel.send(protocol.ok(op))
        else:
            channel.send(protocol.error(str(op), protocol.ERR_BAD_REQUEST, f"unknown op {op!r}"))


def prewarm() -> None:
    """Import PREWARM, as far as the environment has it (an environment without bayesmark still serves)."""
    for name in PREWARM:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)


def await_load() -> bool:
    """Block until the harness's `load` line (True) or end of file (False). Read a byte at a time from
    descriptor 0, so that nothing after the line is taken from the channel the host opens next."""
    line = b""
    while not line.endswith(b"\n"):
        byte = os.read(0, 1)
        if not byte:
            return False
        line += byte
        if len(line) > LOAD_LINE_BYTES:
            raise SystemExit("[sandbox] a warm host expected a load line")
    try:
        request = protocol.decode(line)
    except protocol.ProtocolError as exc:
        raise SystemExit(f"[sandbox] a warm host expected a load line: {exc}") from None
    if request.get("op") != protocol.OP_LOAD:
        raise SystemExit(f"[sandbox] a warm host expected a load line, got {request.get('op')!r}")
    return True


def main(started: Any = None) -> None:
    """`started`: called once the submission is about to load (a backend's bootstrap writes its start
    marker there): at once, or for a warm host after its load line."""
    args = sys.argv[1:]
    warm = args[:1] == ["--warm"]
    if warm:
        args = args[1:]
    if len(args) != 1:
        print("usage: python -m sandbox_image.host [--warm] SUBMISSION_DIR", file=sys.stderr)
        raise SystemExit(2)
    if warm:
        prewarm()
        if not await_load():
            raise SystemExit(0)
    if started is not None:
        started()
    raise SystemExit(serve(args[0]))


if __name__ == "__main__":
    main()
