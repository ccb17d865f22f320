"""The objective process: a suite's objective, evaluated in the suite's own environment, over wire.py.

Run by path, never imported by the worker: `<venv>/bin/python -I <path>/objective_server.py --backend
bbob|python`. Standard library only (plus what the backend evaluates with: cocoex for bbob, whatever an
organizer's file imports); wire.py and bbob_names.py are loaded from this file's folder by path, since
`-I` keeps the script's folder off sys.path and the project is not installed in the suite's environment.

It is trusted (an organizer's or COCO's code, not a team's) and not sandboxed. Its stdout is the channel:
at start the channel moves to a private descriptor and descriptor 1 becomes stderr, so a print, a C
library's printf or a warning can never corrupt a reply; stdin likewise becomes /dev/null. It answers one
request at a time and exits at end of input, or when its parent is gone (a worker killed mid-evaluation
cannot close the pipe's other end for it). Before each evaluate, `random` and numpy's global state (if
numpy is installed) are seeded from the request's seed, so evaluations repeat.

Backends:
- bbob: COCO's noiseless functions through cocoex, problems `f{F}-i{I}-d{D}` (bbob_names.py), space the
  problem's box, loss f(x), optimum the function's value at its optimal point. No observer is attached,
  so cocoex writes no result files.
- python: an organizer's objective files, each sent as text with `load` {problem, source}: a module
  that defines `api_config` (bayesmark's format), `evaluate(params: dict) -> float` and optionally
  `optimum` (its known optimal loss).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import math
import os
import platform
import random
import shutil
import sys
import tempfile
import threading
import time
import traceback
import types
from pathlib import Path
from typing import Any, BinaryIO

HERE = Path(__file__).resolve().parent
PARENT_POLL_S = 1.0
# Tracebacks of raising evaluations printed to stderr per process; after that one count at exit.
SHOWN_TRACEBACKS = 20


def _sibling(name: str) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(f"_bbo_suites_{name}", HERE / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and typing look a module up by name
    spec.loader.exec_module(module)
    return module


wire = _sibling("wire")
bbob_names = _sibling("bbob_names")


class BadRequest(Exception):
    """The request is wrong (ours): an unknown problem, params of the wrong shape."""


class Raised(Exception):
    """The objective's own code raised; `__cause__` is what it raised."""


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _raised(what: str, exc: BaseException) -> Raised:
    error = Raised(f"{what}: {type(exc).__name__}: {exc}")
    error.__cause__ = exc
    return error


def _check_problem(request: dict[str, Any]) -> str:
    problem = request.get("problem")
    if not isinstance(problem, str) or not problem:
        raise BadRequest("the request names no problem")
    return problem


def _as_loss(value: Any) -> float:
    if isinstance(value, bool):
        raise TypeError("evaluate returned a bool, not a number")
    return float(value)


# -- the backends ----------------------------------------------------------------------------------


class BbobBackend:
    name = "bbob"

    def __init__(self) -> None:
        import cocoex  # the environment's; importing it here makes a broken one fail at start, visibly

        self._cocoex = cocoex
        # name -> (suite, problem): a problem is kept with the suite it came from, built once per process.
        self._problems: dict[str, tuple[Any, Any]] = {}

    def versions(self) -> dict[str, str | None]:
        return {"cocoex": _version("coco-experiment"), "numpy": _version("numpy")}

    def _make(self, local: str) -> tuple[Any, Any]:
        try:
            name = bbob_names.parse(local)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        # A suite of exactly this one problem: COCO's default bbob suite lists only some instances.
        suite = self._cocoex.Suite(
            "bbob",
            f"instances: {name.instance}",
            f"function_indices: {name.function} dimensions: {name.dimension}",
        )
        problem = suite[0]
        if (problem.id_function, problem.id_instance, problem.dimension) != tuple(name):
            raise BadRequest(f"cocoex gave {problem.id} for {local}")
        return suite, problem

    def _problem(self, local: str) -> Any:
        if local not in self._problems:
            self._problems[local] = self._make(local)
        return self._problems[local][1]

    def load(self, problem: str, source: str) -> None:
        raise BadRequest("the bbob backend loads no files")

    def describe(self, local: str) -> tuple[dict[str, Any], float | None]:
        problem = self._problem(local)
        api_config = {
            f"x{i}": {"type": "real", "space": "linear", "range": [float(lo), float(hi)]}
            for i, (lo, hi) in enumerate(zip(problem.lower_bounds, problem.upper_bounds, strict=True))
        }
        return api_config, self._optimum(local)

    def _optimum(self, local: str) -> float:
        """f at the problem's optimal point, which cocoex writes to a file in the working directory only.

        Asked of a problem made for the purpose (and freed), in a folder removed at once: the problem
        that evaluates never has its optimum queried, and nothing stays on disk.
        """
        _suite, problem = self._make(local)
        try:
            with tempfile.TemporaryDirectory(prefix="bbob-optimum-") as folder:
                previous = os.getcwd()
                os.chdir(folder)
                try:
                    problem._best_parameter("print")
                finally:
                    os.chdir(previous)
                written = list(Path(folder).iterdir())
                if len(written) != 1:
                    raise RuntimeError(f"cocoex wrote {len(written)} files for the optimal point, not 1")
                xopt = [float(v) for v in written[0].read_text().split()]
            lower, upper = list(problem.lower_bounds), list(problem.upper_bounds)
            if len(xopt) != problem.dimension or not all(
                math.isfinite(v) and lo <= v <= hi for v, lo, hi in zip(xopt, lower, upper, strict=True)
            ):
                raise RuntimeError(f"cocoex's optimal point of {local} is not a point of its box")
            return float(problem(xopt))
        finally:
            problem.free()

    def evaluate(self, local: str, params: dict[str, Any]) -> float:
        problem = self._problem(local)
        names = [f"x{i}" for i in range(problem.dimension)]
        if set(params) != set(names):
            raise BadRequest(f"{local} takes parameters x0..x{problem.dimension - 1}")
        x = [params[name] for name in names]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in x):
            raise BadRequest("bbob parameters are numbers")
        try:
            return float(problem(x))
        except Exception as exc:
            raise _raised("cocoex", exc) from exc

    def catalogue(self) -> list[str] | None:
        return None  # every instance number is a problem


class _Objective:
    def __init__(self, api_config: dict[str, Any], evaluate: Any, optimum: float | None) -> None:
        self.api_config = api_config
        self.evaluate = evaluate
        self.optimum = optimum


class PythonBackend:
    name = "python"

    def __init__(self) -> None:
        self._objectives: dict[str, _Objective] = {}
        self._modules = 0

    def versions(self) -> dict[str, str | None]:
        return {"numpy": _version("numpy")}

    def load(self, problem: str, source: str) -> None:
        self._modules += 1
        module = types.ModuleType(f"bbo_objective_{self._modules}")
        module.__file__ = f"<objective {problem}>"
        sys.modules[module.__name__] = module  # dataclasses and pickle look a module up by name
        try:
            exec(compile(source, module.__file__, "exec"), module.__dict__)
        except Exception as exc:
            raise _raised(f"loading {problem}", exc) from exc
        api_config = getattr(module, "api_config", None)
        evaluate = getattr(module, "evaluate", None)
        optimum = getattr(module, "optimum", None)
        if not isinstance(api_config, dict) or not all(
            isinstance(k, str) and isinstance(v, dict) for k, v in api_config.items()
        ):
            raise Raised(f"{problem} defines no api_config (a dict of parameter name -> dict)")
        if not callable(evaluate):
            raise Raised(f"{problem} defines no function evaluate(params)")
        if optimum is not None:
            if (
                isinstance(optimum, bool)
                or not isinstance(optimum, (int, float))
                or not math.isfinite(optimum)
            ):
                raise Raised(f"{problem}'s optimum is {optimum!r}, not a finite number")
            optimum = float(optimum)
        self._objectives[problem] = _Objective(api_config, evaluate, optimum)

    def _objective(self, problem: str) -> _Objective:
        try:
            return self._objectives[problem]
        except KeyError:
            raise BadRequest(f"no objective {problem!r} is loaded") from None

    def describe(self, problem: str) -> tuple[dict[str, Any], float | None]:
        objective = self._objective(problem)
        return objective.api_config, objective.optimum

    def evaluate(self, problem: str, params: dict[str, Any]) -> float:
        objective = self._objective(problem)
        try:
            return _as_loss(objective.evaluate(dict(params)))
        except Exception as exc:
            raise _raised(f"{problem}'s evaluate", exc) from exc

    def catalogue(self) -> list[str] | None:
        return sorted(self._objectives)


BACKENDS = {"bbob": BbobBackend, "python": PythonBackend}


# -- the loop --------------------------------------------------------------------------------------


class Server:
    def __init__(self, backend: BbobBackend | PythonBackend, workdir: str) -> None:
        self.backend = backend
        self.workdir = workdir
        self._numpy: Any = None
        self._numpy_checked = False
        self.raised = 0

    def _seed(self, seed: int) -> None:
        random.seed(seed)
        if not self._numpy_checked:
            self._numpy_checked = True
            if importlib.util.find_spec("numpy") is not None:
                import numpy

                self._numpy = numpy
        if self._numpy is not None:
            self._numpy.random.seed(seed)

    def handle(self, message: dict[str, Any]) -> dict[str, Any]:
        id_, op = wire.check_request(message)
        if op == wire.HELLO:
            versions = {"python": platform.python_version(), **self.backend.versions()}
            return wire.ok(
                id_,
                protocol=wire.PROTOCOL,
                backend=self.backend.name,
                workdir=self.workdir,
                versions={k: v for k, v in versions.items() if v is not None},
            )
        if op == wire.CATALOGUE:
            return wire.ok(id_, problems=self.backend.catalogue())
        problem = _check_problem(message)
        if op == wire.LOAD:
            source = message.get("source")
            if not isinstance(source, str):
                raise BadRequest("load takes the objective's source text")
            self.backend.load(problem, source)
            return wire.ok(id_)
        if op == wire.DESCRIBE:
            api_config, optimum = self.backend.describe(problem)
            return wire.ok(id_, api_config=api_config, optimum=optimum)
        params, seed = message.get("params"), message.get("seed")
        if not isinstance(params, dict):
            raise BadRequest("evaluate takes params, an object")
        if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**32:
            raise BadRequest("evaluate takes a seed in [0, 2**32)")
        self._seed(seed)
        return wire.ok(id_, loss=wire.encode_float(self.backend.evaluate(problem, params)))

    def reply(self, line: bytes) -> bytes:
        id_ = None
        try:
            message = wire.decode(line)
            id_ = message.get("id")
            if not isinstance(id_, int) or isinstance(id_, bool):
                id_ = None
            reply = self.handle(message)
        except (wire.WireError, BadRequest) as exc:
            reply = wire.failed(id_, wire.BAD_REQUEST, str(exc))
        except Raised as exc:
            self._show(exc)
            reply = wire.failed(id_, wire.RAISED, str(exc))
        try:
            return wire.encode(reply)
        except wire.WireError as exc:  # an api_config that is not JSON, a reply over the line limit
            return wire.encode(wire.failed(id_, wire.RAISED, f"the reply cannot be sent: {exc}"))

    def _show(self, exc: Raised) -> None:
        self.raised += 1
        if self.raised <= SHOWN_TRACEBACKS and exc.__cause__ is not None:
            cause = exc.__cause__
            sys.stderr.write("".join(traceback.format_exception(type(cause), cause, cause.__traceback__)))
            if self.raised == SHOWN_TRACEBACKS:
                sys.stderr.write("(the next raising calls are counted, not shown)\n")
            sys.stderr.flush()

    def serve(self, requests: BinaryIO, replies: BinaryIO) -> int:
        while True:
            line = requests.readline(wire.MAX_LINE_BYTES + 1)
            if not line:
                return 0
            if len(line) > wire.MAX_LINE_BYTES:
                # The rest of that line would be read as requests: the stream cannot be trusted past it.
                replies.write(wire.encode(wire.failed(None, wire.BAD_REQUEST, "request line over the limit")))
                replies.flush()
                return 2
            replies.write(self.reply(line))
            replies.flush()


def _private_channels() -> tuple[BinaryIO, BinaryIO]:
    """(requests, replies) on private descriptors; 0 becomes /dev/null and 1 a copy of stderr."""
    requests = os.fdopen(os.dup(0), "rb")
    replies = os.fdopen(os.dup(1), "wb")
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    sys.stdin = open(os.devnull)  # noqa: SIM115 - for the life of the process
    sys.stdout = sys.stderr
    return requests, replies


def _exit_with_parent(workdir: str) -> None:
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(PARENT_POLL_S)
            if os.getppid() != parent:
                shutil.rmtree(workdir, ignore_errors=True)
                os._exit(3)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=sorted(BACKENDS), required=True)
    args = parser.parse_args(argv)
    requests, replies = _private_channels()
    # A working directory of its own for whatever an objective writes there, removed at exit (the worker
    # removes it after a kill: the hello tells it where).
    workdir = tempfile.mkdtemp(prefix="bbo-objective-")
    os.chdir(workdir)
    _exit_with_parent(workdir)
    try:
        server = Server(BACKENDS[args.backend](), workdir)
        code = server.serve(requests, replies)
    finally:
        os.chdir("/")
        shutil.rmtree(workdir, ignore_errors=True)
    if server.raised > SHOWN_TRACEBACKS:
        print(f"{server.raised} evaluations raised in all", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
