"""The objective process for real: the server as a subprocess (python backend, the worker's interpreter),
driven by ObjectiveProcess through raising, dying, hanging and misbehaving objectives."""

from __future__ import annotations

import os
import signal
import sys
import textwrap
import time
from pathlib import Path

import pytest

from suites import objective_process, wire
from suites.errors import ObjectiveFault, ObjectiveRaised
from suites.objective_process import ObjectiveProcess
from suites.process_suite import SERVER, server_env

# A point's x says what the objective does: raise, die, hang, or print on stdout before answering.
OBJECTIVE = textwrap.dedent(
    """
    import os, random, signal, sys, time

    import numpy as np

    api_config = {"x": {"type": "real", "space": "linear", "range": (-10.0, 10.0)}}
    optimum = 0.0


    def evaluate(params):
        x = params["x"]
        if x == 1:
            raise ValueError("x = 1 is not allowed")
        if x == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        if x == 3:
            time.sleep(600)
        if x == 4:
            print("chatter on stdout")
            os.write(1, b"and at the descriptor\\n")
            return 4.0
        if x == 5:
            return float("nan")
        if x == 6:
            return "not a number"
        return x * x + random.random() + float(np.random.uniform())
    """
)


def make(
    call_timeout_s: float = 10.0, source: str = OBJECTIVE, lines: list[str] | None = None, **kw
) -> ObjectiveProcess:
    return ObjectiveProcess(
        [sys.executable, "-I", str(SERVER), "--backend", "python"],
        server_env(),
        call_timeout_s,
        startup=[(wire.LOAD, {"problem": "p", "source": source})],
        log=(lines if lines is not None else []).append,
        **kw,
    )


def evaluate(proc: ObjectiveProcess, x: float, seed: int = 1) -> float:
    return wire.decode_float(proc.call(wire.EVALUATE, problem="p", params={"x": x}, seed=seed)["loss"])


@pytest.fixture()
def proc():
    process = make()
    yield process
    process.close()


def test_it_starts_on_first_use_and_says_hello(proc: ObjectiveProcess) -> None:
    assert proc.pid is None
    reply = proc.call(wire.DESCRIBE, problem="p")
    assert reply["api_config"] == {"x": {"type": "real", "space": "linear", "range": [-10.0, 10.0]}}
    assert reply["optimum"] == 0.0
    assert proc.hello["backend"] == "python" and proc.hello["versions"]["python"] == sys.version.split()[0]
    assert proc.call(wire.CATALOGUE)["problems"] == ["p"]
    assert proc.starts == 1 and proc.pid is not None


def test_evaluations_repeat_with_their_seed(proc: ObjectiveProcess) -> None:
    first = [evaluate(proc, 0.5, seed) for seed in (1, 2, 3)]
    again = [evaluate(proc, 0.5, seed) for seed in (1, 2, 3)]
    assert first == again and len(set(first)) == 3
    proc.close()
    assert [evaluate(proc, 0.5, seed) for seed in (1, 2, 3)] == first  # a fresh process too


def test_a_raising_evaluate_is_objective_raised_and_the_process_lives_on(proc: ObjectiveProcess) -> None:
    evaluate(proc, 0.0)
    pid = proc.pid
    with pytest.raises(ObjectiveRaised, match="ValueError: x = 1 is not allowed"):
        evaluate(proc, 1.0)
    assert evaluate(proc, 0.0, seed=9) == evaluate(proc, 0.0, seed=9)
    assert proc.pid == pid and proc.starts == 1


def test_a_process_that_dies_mid_call_is_a_fault_and_the_next_call_restarts_it() -> None:
    lines: list[str] = []
    proc = make(lines=lines)
    try:
        evaluate(proc, 0.0)
        first = proc.pid
        with pytest.raises(ObjectiveFault, match=r"exited with code -9 during evaluate"):
            evaluate(proc, 2.0)
        assert proc.pid is None
        assert evaluate(proc, 0.5) >= 0.25
        assert proc.starts == 2 and proc.pid not in (None, first)
    finally:
        proc.close()


def test_a_process_killed_between_calls_is_started_again(proc: ObjectiveProcess) -> None:
    evaluate(proc, 0.0)
    first = proc.pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    time.sleep(0.2)
    assert evaluate(proc, 0.5) >= 0.25  # nothing was in flight: nothing lost
    assert proc.starts == 2 and proc.pid != first


def test_a_hung_evaluate_is_a_fault_after_the_timeout() -> None:
    proc = make(call_timeout_s=1.0)
    try:
        evaluate(proc, 0.0)
        hung = proc.pid
        assert hung is not None
        started = time.monotonic()
        with pytest.raises(ObjectiveFault, match=r"evaluate took longer than 1 s; killed"):
            evaluate(proc, 3.0)
        assert 1.0 <= time.monotonic() - started < 5.0
        with pytest.raises(ProcessLookupError):
            os.kill(hung, 0)  # killed and reaped
        assert evaluate(proc, 0.5) >= 0.25 and proc.starts == 2
    finally:
        proc.close()


def test_what_the_objective_prints_never_reaches_the_channel() -> None:
    lines: list[str] = []
    proc = make(lines=lines)
    try:
        assert evaluate(proc, 4.0) == 4.0
        assert evaluate(proc, 0.0, seed=5) == evaluate(proc, 0.0, seed=5)
        proc.close()  # its stderr is drained to the end
        assert any("chatter on stdout" in line for line in lines)
        assert any("and at the descriptor" in line for line in lines)
    finally:
        proc.close()


def test_a_non_finite_loss_arrives_as_itself_and_a_non_number_raises(proc: ObjectiveProcess) -> None:
    assert evaluate(proc, 5.0) != evaluate(proc, 5.0)  # nan
    with pytest.raises(ObjectiveRaised, match="could not convert string to float"):
        evaluate(proc, 6.0)


def test_our_bad_requests_are_faults_and_the_process_stays(proc: ObjectiveProcess) -> None:
    evaluate(proc, 0.0)
    with pytest.raises(ObjectiveFault, match=r"evaluate failed \(bad_request\): no objective 'q' is loaded"):
        proc.call(wire.EVALUATE, problem="q", params={"x": 0.0}, seed=1)
    with pytest.raises(ObjectiveFault, match=r"bad_request.*seed"):
        proc.call(wire.EVALUATE, problem="p", params={"x": 0.0}, seed=-1)
    with pytest.raises(ObjectiveFault, match="cannot send"):
        proc.call(wire.EVALUATE, problem="p", params={"x": float("nan")}, seed=1)
    assert proc.starts == 1 and evaluate(proc, 0.0) >= 0


@pytest.mark.parametrize(
    ("source", "error"),
    [
        ("def evaluate(params:\n", "SyntaxError"),
        ("raise ImportError('no such package')\n", "ImportError: no such package"),
        ("def evaluate(params):\n    return 0.0\n", "defines no api_config"),
        ("api_config = {'x': {'type': 'real', 'range': (0, 1)}}\n", "defines no function evaluate"),
        (
            "api_config = {'x': {'type': 'real', 'range': (0, 1)}}\n"
            "optimum = 'low'\ndef evaluate(p):\n    return 0\n",
            "optimum is 'low', not a finite number",
        ),
    ],
)
def test_an_objective_file_that_does_not_load_is_a_fault_each_time(source: str, error: str) -> None:
    proc = make(source=source)
    try:
        for _ in range(2):  # a broken start is not kept: the next call tries again, and says the same
            with pytest.raises(ObjectiveFault, match=r"load failed \(raised\): .*" + error):
                proc.call(wire.CATALOGUE)
            assert proc.pid is None
    finally:
        proc.close()


def _fake_server(tmp_path: Path, body: str) -> list[str]:
    script = tmp_path / "fake.py"
    script.write_text("import sys, time\nsys.stdin.buffer.readline()\n" + textwrap.dedent(body))
    return [sys.executable, "-I", str(script)]


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ("print('hello there', flush=True)\ntime.sleep(30)\n", "protocol broken during hello: not JSON"),
        ('print(\'{"id": 9, "ok": true}\', flush=True)\ntime.sleep(30)\n', "reply to request 1 has id 9"),
        (
            "sys.stdout.buffer.write(b'x' * (2 << 20)); sys.stdout.flush()\ntime.sleep(30)\n",
            "reply line over the 1048576-byte limit",
        ),
        (
            'print(\'{"id": 1, "ok": true, "protocol": 1}\\n{"id": 2, "ok": true}\', flush=True)\n'
            "time.sleep(30)\n",
            "more than one line in reply",
        ),
        (
            'print(\'{"id": 1, "ok": true, "protocol": 0}\', flush=True)\ntime.sleep(30)\n',
            "speaks protocol 0",
        ),
        ("sys.exit(3)\n", "exited with code 3 during hello"),
    ],
)
def test_a_server_off_the_protocol_is_a_fault_and_is_killed(tmp_path: Path, body: str, error: str) -> None:
    proc = ObjectiveProcess(
        _fake_server(tmp_path, body), server_env(), 5.0, start_timeout_s=5.0, log=[].append
    )
    started = time.monotonic()
    with pytest.raises(ObjectiveFault, match=error):
        proc.call(wire.CATALOGUE)
    assert time.monotonic() - started < 5.0 and proc.pid is None


def test_a_fault_quotes_the_last_words_on_stderr(tmp_path: Path) -> None:
    argv = _fake_server(tmp_path, "print('cannot import cocoex', file=sys.stderr)\nsys.exit(1)\n")
    lines: list[str] = []
    proc = ObjectiveProcess(argv, server_env(), 5.0, label="bbob objective process", log=lines.append)
    with pytest.raises(
        ObjectiveFault, match=r"bbob objective process: exited with code 1 .*stderr: cannot import cocoex"
    ):
        proc.call(wire.HELLO)
    assert lines == ["[bbob objective process] cannot import cocoex"]


def test_a_missing_interpreter_is_a_fault(tmp_path: Path) -> None:
    proc = ObjectiveProcess([str(tmp_path / "no-python")], server_env(), 5.0)
    with pytest.raises(ObjectiveFault, match="cannot start"):
        proc.call(wire.HELLO)


def test_its_working_folder_is_removed_after_a_close_or_a_kill() -> None:
    proc = make(call_timeout_s=1.0)
    try:
        evaluate(proc, 0.0)
        workdir = Path(proc.hello["workdir"])
        assert workdir.is_dir() and Path(f"/proc/{proc.pid}/cwd").resolve() == workdir.resolve()
        proc.close()
        assert not workdir.exists()
        evaluate(proc, 0.0)
        workdir = Path(proc.hello["workdir"])
        with pytest.raises(ObjectiveFault):
            evaluate(proc, 3.0)  # hangs: SIGKILL, which the server cannot clean up after
        assert not workdir.exists()
    finally:
        proc.close()


def test_a_server_exits_when_its_parent_is_gone_even_with_its_input_held_open(tmp_path: Path) -> None:
    import subprocess

    # The parent starts a server, forks a holder of the server's stdin (so end of input never comes), writes
    # both pids, then dies by SIGKILL: only the server's check on its parent can end it.
    pids = tmp_path / "pids"
    parent = tmp_path / "parent.py"
    parent.write_text(
        textwrap.dedent(
            f"""
            import os, signal, subprocess, sys, time
            child = subprocess.Popen([sys.executable, "-I", {str(SERVER)!r}, "--backend", "python"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            child.stdin.write(b'{{"id": 1, "op": "hello"}}\\n'); child.stdin.flush()
            child.stdout.readline()
            holder = os.fork()
            if holder == 0:
                time.sleep(30); os._exit(0)
            with open({str(pids)!r}, "w") as out:
                out.write(f"{{child.pid}} {{holder}}")
            os.kill(os.getpid(), signal.SIGKILL)
            """
        )
    )
    done = subprocess.run(
        [sys.executable, "-I", str(parent)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30
    )
    assert done.returncode == -signal.SIGKILL
    server, holder = (int(v) for v in pids.read_text().split())
    try:
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline and _running(server):
            time.sleep(0.1)
        assert not _running(server)
    finally:
        os.kill(holder, signal.SIGKILL)


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie waits for whoever adopted it: it has ended


def test_a_forked_child_starts_its_own_process_and_leaves_the_parents_alone() -> None:
    key = ("test", "fork")
    proc = objective_process.shared(key, make)
    try:
        evaluate(proc, 0.0)
        parent_server = proc.pid
        read_end, write_end = os.pipe()
        child = os.fork()
        if child == 0:  # pragma: no cover - the child reports through the pipe
            code = 1
            try:
                mine = objective_process.shared(key, make)
                assert mine is not proc
                evaluate(mine, 0.0)
                os.write(write_end, f"{mine.pid}\n".encode())
                mine.close()
                code = 0
            finally:
                os._exit(code)
        os.close(write_end)
        with os.fdopen(read_end) as report:
            child_server = int(report.read().strip() or 0)
        _, status = os.waitpid(child, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert child_server not in (0, parent_server)
        assert proc.pid == parent_server and evaluate(proc, 0.5) >= 0.25
    finally:
        objective_process.close_all()
    assert proc.pid is None
