"""The local backend re-attaches to a worker that outlived a trigger restart."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from services.trigger.backends import LocalBackend, failure_of

pytestmark = pytest.mark.unit


def test_reattached_wait_follows_a_running_worker(tmp_path: Path) -> None:
    result = tmp_path / "result.json"
    worker = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import time; time.sleep(1.5); open({str(result)!r}, 'w').write('{{}}')",
        ]
    )
    # After a real restart the worker is not our child; reap it here so that its
    # exit is visible to the backend's liveness probe, as it would be then.
    reaper = threading.Thread(target=worker.wait)
    reaper.start()
    (tmp_path / "worker.pid").write_text(str(worker.pid))
    (tmp_path / "run.log").write_text("running\n")
    fresh = LocalBackend(poll_s=0.05)  # a new trigger process: no handle on the worker
    outcome = asyncio.run(fresh.wait("run-1", "local-run-1", str(tmp_path)))
    reaper.join()
    assert outcome.state == "succeeded"


def test_failure_of_reads_kfp_local_colours() -> None:
    log = (
        "    Traceback (most recent call last):\n"
        "    BlockingAnomalies: 1 blocking anomalies: fare: SCHEMA_MISSING_COLUMN\n"
        "\x1b[31m07:09:14 - ERROR - Task \x1b[96m'validate'\x1b[0m finished with status "
        "\x1b[91mFAILURE\x1b[0m\n"
        "later lines\n"
    )
    step, tail = failure_of(log)
    assert step == "validate"
    assert "fare: SCHEMA_MISSING_COLUMN" in tail and "later lines" not in tail


def test_a_worker_left_a_zombie_counts_as_ended(tmp_path: Path) -> None:
    """The worker outlived its killed trigger and nobody reaps it (a PID 1 that does not):
    it answers signal 0 for good, yet it has ended; the re-attached wait must see that and
    read its result, not wait forever (a rolling restart's new leader once did)."""
    result = tmp_path / "result.json"
    worker = subprocess.Popen([sys.executable, "-c", f"open({str(result)!r}, 'w').write('{{}}')"])
    # Not reaped: once it exits it stays a zombie child of this process until wait().
    for _ in range(200):
        if Path(f"/proc/{worker.pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z":
            break
        threading.Event().wait(0.05)  # poll until the child has exited
    (tmp_path / "worker.pid").write_text(str(worker.pid))
    (tmp_path / "run.log").write_text("done\n")
    fresh = LocalBackend(poll_s=0.05)
    try:
        outcome = asyncio.run(
            asyncio.wait_for(fresh.wait("run-1", "local-run-1", str(tmp_path)), 10)
        )
    finally:
        worker.wait()
    assert outcome.state == "succeeded"


@pytest.mark.parametrize("attached", [True, False])
def test_the_run_ends_when_its_result_is_written_not_when_its_worker_exits(
    tmp_path: Path, attached: bool
) -> None:
    """kfp.local winds down after the last component wrote result.json; the run's outcome
    is known then (the worker here lingers for a minute after writing it)."""
    result = tmp_path / "result.json"
    worker = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import time; open({str(result)!r}, 'w').write('{{}}'); time.sleep(60)",
        ]
    )
    try:
        (tmp_path / "worker.pid").write_text(str(worker.pid))
        (tmp_path / "run.log").write_text("running\n")
        backend = LocalBackend(poll_s=0.05)
        if attached:
            backend.procs["run-1"] = worker
        outcome = asyncio.run(
            asyncio.wait_for(backend.wait("run-1", "local-run-1", str(tmp_path)), 20)
        )
        assert outcome.state == "succeeded"
        assert worker.poll() is None  # it did not wait for the worker's exit
        assert "run-1" not in backend.procs
    finally:
        worker.kill()
        worker.wait()
