"""The warm step worker: steps forked from it give the results and failures a fresh
interpreter would, its absence falls back to one, and its faults fail the step
instead of hanging it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from services.trigger import isolate, warm
from services.trigger.backends import Forked, LocalBackend
from tests.poll import until

pytestmark = pytest.mark.unit


class Running:
    def __init__(self, path: Path, proc: subprocess.Popen[bytes]) -> None:
        self.path, self.proc = path, proc

    def children(self) -> list[int]:
        task = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        return [int(p) for p in task.read_text().split()]


@pytest.fixture
def worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Running]:
    path = tmp_path / "steps.sock"  # where a WarmProcess on tmp_path looks
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "services.trigger.warm",
            str(path),
            "--preload",
            "pyarrow",
            "tests.unit.warm_steps",
        ],
        stdout=open(tmp_path / "worker.log", "wb"),
        stderr=subprocess.STDOUT,
    )
    until(path.exists, 30.0, "the socket", interval=0.02)
    monkeypatch.setenv(warm.ENV, str(path))
    yield Running(path, proc)
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def _shards(d: Path) -> tuple[list[str], list[str]]:
    d.mkdir()
    t = pa.table({"x": [1, 2, 3], "y": ["a", "b", None]})
    for name in ("w1", "w2", "e1"):
        pq.write_table(t, d / f"{name}.parquet")
    return [str(d / "w1.parquet"), str(d / "w2.parquet")], [str(d / "e1.parquet")]


def test_a_forked_step_returns_what_a_fresh_interpreter_returns(
    worker: Running, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    train, held = _shards(tmp_path / "in")
    got = isolate.run_step("gather", window_uris=train, eval_uris=held, out_dir=str(tmp_path / "w"))
    assert "not reachable" not in capfd.readouterr().out
    os.environ.pop(warm.ENV)
    fresh = isolate.run_step(
        "gather", window_uris=train, eval_uris=held, out_dir=str(tmp_path / "f")
    )
    assert {k: v for k, v in got.items() if isinstance(v, int)} == {
        "train_rows": 6,
        "eval_rows": 3,
    }
    assert got["train_rows"] == fresh["train_rows"] and got["eval_rows"] == fresh["eval_rows"]
    assert pq.read_table(got["train"]).equals(pq.read_table(fresh["train"]))


def test_a_step_error_reaches_the_components_log_and_fails_the_step(
    worker: Running, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    missing = str(tmp_path / "nope.parquet")
    with pytest.raises(isolate.StepFailed, match="exit 1"):
        isolate.run_step("gather", window_uris=[missing], eval_uris=[missing], out_dir="/tmp/x")
    # The child wrote its traceback into *our* stderr: the descriptors travelled.
    assert "cannot read training shard" in capfd.readouterr().err


def test_without_a_worker_the_step_starts_a_fresh_interpreter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(warm.ENV, str(tmp_path / "gone.sock"))
    train, held = _shards(tmp_path / "in")
    got = isolate.run_step("gather", window_uris=train, eval_uris=held, out_dir=str(tmp_path / "o"))
    assert got["train_rows"] == 6
    assert "not reachable" in capfd.readouterr().out


def _blocked_step(tmp_path: Path) -> tuple[subprocess.Popen[bytes], Path]:
    """A step that blocks on a FIFO until the test writes it (``warm_steps``), run
    from a component process of its own, as kfp.local runs one."""
    fifo = tmp_path / "step.fifo"
    os.mkfifo(fifo)
    code = (
        "from services.trigger import isolate\n"
        "try:\n"
        f"    print('STEP RESULT', isolate.run_step('wait_on', fifo={str(fifo)!r}))\n"
        "except isolate.StepFailed as e:\n"
        "    print('STEP FAILED', e)\n"
    )
    # Its log is a file: a pipe would stay open as long as the step holds it.
    comp = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=open(tmp_path / "component.log", "wb"),
        stderr=subprocess.STDOUT,
    )
    return comp, fifo


def _blocked_in_step(worker: Running) -> int:
    """The forked step's pid once it is blocked opening its FIFO: by then the worker
    has long acknowledged it."""

    def blocked() -> int | None:
        for pid in worker.children():
            try:
                wchan = Path(f"/proc/{pid}/wchan").read_text()
            except OSError:
                continue
            if "partner" in wchan or "fifo" in wchan:
                return pid
        return None

    return int(until(blocked, 30.0, "the step to block on its FIFO", interval=0.02))


def _log_of(comp: subprocess.Popen[bytes], tmp_path: Path) -> bytes:
    comp.wait(timeout=60)
    return (tmp_path / "component.log").read_bytes()


def _writer(fifo: Path, data: bytes = b"") -> bool:
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:  # ENXIO: nobody has it open for reading (yet)
        return False
    os.write(fd, data)
    os.close(fd)
    return True


def _release(fifo: Path, data: bytes = b"") -> None:
    """Once the step is blocked on the FIFO, write ``data`` and close: with none the
    step fails, with some it succeeds."""
    until(lambda: _writer(fifo, data), 30.0, "the step to open its FIFO", interval=0.02)


def test_a_step_killed_by_a_signal_fails_with_that_signal(worker: Running, tmp_path: Path) -> None:
    comp, _ = _blocked_step(tmp_path)
    (child,) = until(worker.children, 30.0, "the forked step", interval=0.02)
    os.kill(child, signal.SIGKILL)
    assert b"STEP FAILED step wait_on failed (exit -9)" in _log_of(comp, tmp_path)
    assert worker.proc.poll() is None  # the worker outlives its children


def test_a_lost_worker_fails_the_step_instead_of_hanging_it(
    worker: Running, tmp_path: Path
) -> None:
    comp, fifo = _blocked_step(tmp_path)
    child = _blocked_in_step(worker)
    worker.proc.kill()
    worker.proc.wait()
    assert b"closed before step wait_on ended" in _log_of(comp, tmp_path)
    # The step's child dies with the worker instead of working on for nobody (it is
    # still blocked on its FIFO, which nothing here opens).
    until(lambda: not _alive(child), 30.0, "the orphaned step to die", interval=0.02)
    assert not _writer(fifo)  # nobody is left to read it


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_sigterm_stops_taking_steps_but_reports_the_ones_in_flight(
    worker: Running, tmp_path: Path
) -> None:
    comp, fifo = _blocked_step(tmp_path)
    _blocked_in_step(worker)
    # Its output is in the component's log while it runs, as with PYTHONUNBUFFERED.
    assert b"waiting on" in (tmp_path / "component.log").read_bytes()
    worker.proc.terminate()
    until(lambda: not worker.path.exists(), 30.0, "the socket to go", interval=0.02)
    assert worker.proc.poll() is None  # still waiting for its step
    _release(fifo, b"done")
    assert b"STEP RESULT {'read': 4}" in _log_of(comp, tmp_path)
    assert worker.proc.wait(timeout=30) == 0


def test_a_bad_request_or_a_vanished_caller_leaves_the_worker_serving(
    worker: Running, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(worker.path))
        s.sendall(b"\x00")  # not a request
        assert s.recv(10) == b""  # closed on us
    # A caller that leaves before its step's status comes back.
    comp, fifo = _blocked_step(tmp_path)
    until(worker.children, 30.0, "the forked step", interval=0.02)
    comp.kill()
    comp.wait()
    _release(fifo, b"late")
    until(lambda: not worker.children(), 30.0, "the step to be reaped", interval=0.02)
    train, held = _shards(tmp_path / "in")
    got = isolate.run_step("gather", window_uris=train, eval_uris=held, out_dir=str(tmp_path / "o"))
    assert got["train_rows"] == 6
    assert "not reachable" not in capfd.readouterr().out  # served by the same worker
    assert worker.proc.poll() is None
    assert "bad request" in (tmp_path / "worker.log").read_text()


def test_the_step_runs_in_the_callers_working_directory(
    worker: Running, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    train, held = _shards(tmp_path / "in")
    isolate.run_step("gather", window_uris=train, eval_uris=held, out_dir="rel")
    assert (tmp_path / "rel" / "train.parquet").exists()


def test_ping_answers_once_the_worker_takes_steps(worker: Running) -> None:
    assert warm.ping(str(worker.path))
    # A prober that gives up while the worker is busy (stopped here) leaves before
    # its answer: the worker must survive answering it.
    os.kill(worker.proc.pid, signal.SIGSTOP)
    try:
        assert not warm.ping(str(worker.path), timeout=0.3)
    finally:
        os.kill(worker.proc.pid, signal.SIGCONT)
    assert until(
        lambda: warm.ping(str(worker.path)), 30.0, "the worker to answer again", interval=0.02
    )
    assert worker.proc.poll() is None


def _params(tmp_path: Path) -> dict[str, object]:
    """A run whose first component fails at once: its window does not exist."""
    return {
        "run_dir": str(tmp_path / "run"),
        "windows_json": json.dumps([str(tmp_path / "missing.parquet")]),
        "eval_json": json.dumps([str(tmp_path / "missing.parquet")]),
        "schema_path": "unused",
        "module_path": "unused",
        "model_dir": str(tmp_path / "model"),
    }


def _backend(tmp_path: Path, worker: Running | None) -> LocalBackend:
    wp = warm.WarmProcess()
    wp.dir = tmp_path
    wp.proc = worker.proc if worker else subprocess.Popen(["sleep", "60"])  # alive, not a worker
    return LocalBackend(poll_s=0.1, step_worker=wp)


def test_a_run_forked_from_the_worker_is_followed_to_its_end(
    worker: Running, tmp_path: Path
) -> None:
    b = _backend(tmp_path, worker)
    rid = asyncio.run(b.submit("run-1", _params(tmp_path)))
    assert isinstance(b.procs["run-1"], Forked)
    assert b.procs["run-1"].pid in worker.children()
    outcome = asyncio.run(b.wait("run-1", rid, str(tmp_path / "run")))
    assert (outcome.state, outcome.failed_component) == ("failed", "gather")
    # The run's components found the worker through their environment: the step
    # ran forked, not in a fresh interpreter.
    log = (tmp_path / "run" / "run.log").read_text()
    assert "cannot read training shard" in log and "not reachable" not in log


def test_without_a_worker_answering_the_run_starts_as_a_fresh_interpreter(
    tmp_path: Path,
) -> None:
    b = _backend(tmp_path, None)  # nothing listens on tmp_path/steps.sock
    rid = asyncio.run(b.submit("run-1", _params(tmp_path)))
    assert isinstance(b.procs["run-1"], subprocess.Popen)
    outcome = asyncio.run(b.wait("run-1", rid, str(tmp_path / "run")))
    assert (outcome.state, outcome.failed_component) == ("failed", "gather")
    assert b.step_worker is not None and b.step_worker.proc is not None
    b.step_worker.proc.kill()


def test_the_worker_stops_when_the_process_that_started_it_dies(tmp_path: Path) -> None:
    path = tmp_path / "steps.sock"
    # A stand-in for the trigger: starts the worker, says its pid, then is SIGKILLed.
    code = (
        "import subprocess, sys, time\n"
        f"w = subprocess.Popen([sys.executable, '-m', 'services.trigger.warm', {str(path)!r},"
        " '--preload', 'json'])\n"
        "print(w.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert parent.stdout is not None
    pid = int(parent.stdout.readline())
    until(lambda: warm.ping(str(path)), 30.0, "the worker to take steps", interval=0.02)
    parent.kill()
    parent.wait()

    def gone() -> bool:
        try:
            os.kill(pid, 0)
        except OSError:
            return True
        return False

    until(gone, 30.0, "the orphaned worker to leave", interval=0.02)
    assert not path.exists()


def test_a_failed_fork_falls_back_to_a_fresh_interpreter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In this process: the worker object with its fork failing (ENOMEM)."""
    import threading

    w = warm.Worker(str(tmp_path / "w.sock"))

    def no_fork() -> int:
        raise OSError(12, "Cannot allocate memory")

    monkeypatch.setattr(warm.os, "fork", no_fork)
    got: list[int | None] = []
    args = tmp_path / "args.json"
    args.write_text("{}")
    client = threading.Thread(
        target=lambda: got.append(
            warm.request(str(tmp_path / "w.sock"), "gather", str(args), str(tmp_path / "o"))
        )
    )
    client.start()
    w._accept()
    client.join(30)
    assert got == [None]  # not a lost worker: nothing ran, so the caller runs it itself
    # A request that is JSON but not an object is refused, and the worker goes on.
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(tmp_path / "w.sock"))
        s.sendall(warm._HEADER.pack(2) + b"[]")
        w._accept()
        assert s.recv(10) == b""
    w.listener.close()


def test_a_second_worker_for_a_run_waits_and_finds_the_result(tmp_path: Path) -> None:
    import fcntl

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    params = tmp_path / "params.json"
    params.write_text(json.dumps({**_params(tmp_path), "run_dir": str(run_dir)}))
    with open(run_dir / "run.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the first worker holds the run
        second = subprocess.Popen(
            [sys.executable, "-m", "services.trigger.run_local", str(params)],
            stdout=open(tmp_path / "second.log", "wb"),
            stderr=subprocess.STDOUT,
        )
        # Probed, not slept on: the second worker is blocked waiting for the run's lock.
        until(
            lambda: "lock" in Path(f"/proc/{second.pid}/wchan").read_text(),
            30.0,
            "the second worker to wait for the lock",
            interval=0.02,
        )
        assert second.poll() is None
        (run_dir / "result.json").write_text("{}")
    assert second.wait(timeout=60) == 0
    assert "Running pipeline" not in (tmp_path / "second.log").read_text()


def test_submit_does_not_start_a_run_whose_worker_is_alive(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    alive = subprocess.Popen(["sleep", "60"])
    try:
        (run_dir / "worker.pid").write_text(str(alive.pid))
        b = LocalBackend(poll_s=0.1)
        asyncio.run(b.submit("run-1", _params(tmp_path)))
        assert "run-1" not in b.procs and not (run_dir / "params.json").exists()
    finally:
        alive.kill()
        alive.wait()
