"""What the suites evaluated in an objective process share: the process, the cached descriptions, the
study's objective that calls it.

The process runs objective_server.py with the suite's environment's interpreter (environment.py), one per
suite and environment in a worker process (objective_process.shared), started on first use. Problems go
to the server under their local names (`f1-i1-d2`, `branin`). Whatever keeps the suite from answering
(the environment cannot be built, the process fails, an api_config that cannot be checked) is an
ObjectiveFault: the platform's, never the team's.
"""

from __future__ import annotations

import abc
import copy
import os
import threading
from collections.abc import Hashable
from pathlib import Path
from typing import Any

from queue_schema.settings import THREAD_ENV
from queue_schema.suggestions import SpaceError, compile_space
from suites import wire
from suites.base import Objective, Suite, split_name
from suites.environment import EnvironmentBuildError, ensure_environment, pins
from suites.errors import ObjectiveFault
from suites.objective_process import ObjectiveProcess, shared

SERVER = Path(__file__).resolve().with_name("objective_server.py")
# An evaluation past this is a hung objective; a spec's own limits may ask for less.
DEFAULT_CALL_TIMEOUT_S = 60.0
_PASSED_ENV = ("PATH", "HOME", "TMPDIR", "LANG", "LC_ALL")


def server_env() -> dict[str, str]:
    """The objective process's environment: the basics, numerical libraries on one thread (as the worker's
    own objectives run). `-I` makes Python ignore PYTHON* variables anyway."""
    env = {k: os.environ[k] for k in _PASSED_ENV if k in os.environ}
    env.setdefault("PATH", os.defpath)
    env.setdefault("LANG", "C.UTF-8")
    env.update(THREAD_ENV)
    return env


class ProcessObjective(Objective):
    """One study's objective: each evaluation is a request to the suite's process, seeded by the study."""

    def __init__(self, suite: ProcessSuite, problem: str, study: int, batch: int) -> None:
        super().__init__(problem, study, batch)
        self.suite = suite
        self.local = split_name(problem)[1]

    def get_api_config(self) -> dict:
        return self.suite.api_config(self.problem)

    def _evaluate(self, params: dict, seed: int) -> tuple[float, float]:
        reply = self.suite.call(wire.EVALUATE, problem=self.local, params=params, seed=seed)
        try:
            loss = wire.decode_float(reply.get("loss"))
        except wire.WireError as exc:
            raise ObjectiveFault(f"{self.suite.name} objective process: evaluate replied {exc}") from None
        loss = self.suite.loss(self.problem, loss)
        return loss, loss


class ProcessSuite(Suite):
    """A suite whose objective runs in an objective process of the given backend."""

    backend: str

    def __init__(self, call_timeout_s: float = DEFAULT_CALL_TIMEOUT_S) -> None:
        self.call_timeout_s = call_timeout_s
        self._python: str | None = None
        self._key: Hashable | None = None
        self._described: dict[str, tuple[dict[str, Any], float | None]] = {}
        self._lock = threading.Lock()

    # -- what a suite says of itself ---------------------------------------------------------------

    @abc.abstractmethod
    def requirements(self) -> str:
        """The locked requirements of the suite's environment ("" for the worker's interpreter)."""

    def startup(self) -> list[tuple[str, dict[str, Any]]]:
        """Requests every fresh process gets after its hello."""
        return []

    def process_key(self) -> Hashable:
        """What makes two suites share a process: by default, the suite and its environment."""
        return (
            self.name,
            self.backend,
            tuple(pins(self.requirements())) if self.requirements().strip() else (),
        )

    # -- the process -------------------------------------------------------------------------------

    def python(self) -> str:
        if self._python is None:
            try:
                self._python = ensure_environment(self.name, self.requirements())
            except EnvironmentBuildError as exc:
                raise ObjectiveFault(str(exc)) from None
        return self._python

    def process(self) -> ObjectiveProcess:
        python = self.python()
        if self._key is None:
            self._key = self.process_key()
        return shared(
            self._key,
            lambda: ObjectiveProcess(
                [python, "-I", str(SERVER), "--backend", self.backend],
                server_env(),
                self.call_timeout_s,
                startup=self.startup(),
                label=f"{self.name} objective process",
            ),
        )

    def call(self, op: str, **fields: Any) -> dict[str, Any]:
        return self.process().call(op, timeout_s=self.call_timeout_s, **fields)

    def _describe(self, problem: str) -> tuple[dict[str, Any], float | None]:
        with self._lock:
            known = self._described.get(problem)
        if known is not None:
            return known
        self.check(problem)
        reply = self.call(wire.DESCRIBE, problem=split_name(problem)[1])
        api_config, optimum = reply.get("api_config"), reply.get("optimum")
        try:
            if not isinstance(api_config, dict):
                raise SpaceError("the api_config is not an object")
            compile_space(api_config)
            optimum = None if optimum is None else wire.decode_float(optimum)
        except (SpaceError, wire.WireError) as exc:
            raise ObjectiveFault(f"{problem}: {wire.one_line(str(exc))}") from None
        with self._lock:
            self._described[problem] = (api_config, optimum)
        return api_config, optimum

    # -- Suite -------------------------------------------------------------------------------------

    def api_config(self, problem: str) -> dict:
        return copy.deepcopy(self._describe(problem)[0])

    def known_optimum(self, problem: str) -> float | None:
        return self._describe(problem)[1]

    def prepare(self, problem: str) -> None:
        self._describe(problem)  # starts the process (and its environment) and asks for the space

    def loss(self, problem: str, value: float) -> float:
        """The loss scored for the objective's value (the value itself unless the suite says otherwise)."""
        return value

    def objective(self, problem: str, study: int, batch: int) -> Objective:
        self.check(problem)
        return ProcessObjective(self, problem, study, batch)

    def describe(self) -> dict[str, Any]:
        versions = self.call(wire.HELLO).get("versions", {})
        requirements = self.requirements()
        return {
            "suite": self.name,
            "backend": self.backend,
            "environment": pins(requirements) if requirements.strip() else "worker",
            **(versions if isinstance(versions, dict) else {}),
        }
