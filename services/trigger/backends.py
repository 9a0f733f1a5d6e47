"""Where pipeline runs execute: ``kfp.local`` in a worker process, or a KFP API server.

Both are idempotent by run id: the deterministic run id is the run's display
name, and a backend looks for it before submitting (KFP has no idempotency key).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from services.trigger.warm import ENV, WarmProcess, start_run
from shared.consume import Outage


class BackendUnavailable(Outage):
    """The pipeline backend did not answer (KFP API 5xx or unreachable, a local fault):
    the validation is handled again later; the run is never given up on."""


@dataclass(frozen=True)
class Outcome:
    state: str  # succeeded | failed
    failed_component: str | None = None
    log_tail: str | None = None


class Backend(Protocol):
    name: str

    async def submit(self, run_id: str, params: dict[str, Any]) -> str: ...
    async def wait(self, run_id: str, backend_run_id: str, run_dir: str) -> Outcome: ...


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_TASK_FAILED = re.compile(r"Task '([\w-]+)' finished with status FAILURE")
_TASK_EVENT = re.compile(
    r"^(\d\d:\d\d:\d\d\.\d+) - \w+ - "
    r"(?:Executing task '([\w-]+)'|Task '([\w-]+)' finished with status (\w+))"
)


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


def failure_of(log: str, lines: int = 40) -> tuple[str | None, str]:
    """(failed component, the log lines that explain it) from a kfp.local run log.

    kfp.local colours its messages; the explanation is what the component printed
    just before kfp.local reported the task as failed (the step's traceback).
    """
    plain = _ANSI.sub("", log)
    rows = plain.splitlines()
    for i, row in enumerate(rows):
        m = _TASK_FAILED.search(row)
        if m:
            return m.group(1), "\n".join(rows[max(0, i - lines) : i + 1])
    return None, _tail(plain, lines)


def components_of(log: str) -> list[dict[str, Any]]:
    """Each pipeline component's state and wall-clock times from a kfp.local run log.

    Times are the log's own ``HH:MM:SS.fff`` stamps (seconds since midnight, local
    time); durations between them are what a progress view and the loop benchmark need.
    """
    out: dict[str, dict[str, Any]] = {}
    for row in _ANSI.sub("", log).splitlines():
        m = _TASK_EVENT.match(row.strip())
        if not m:
            continue
        hh, mm, ss = m.group(1).split(":")
        t = int(hh) * 3600 + int(mm) * 60 + float(ss)
        if m.group(2):
            out[m.group(2)] = {"name": m.group(2), "state": "running", "started": t}
        else:
            c = out.setdefault(m.group(3), {"name": m.group(3), "started": None})
            c["state"] = "succeeded" if m.group(4) == "SUCCESS" else "failed"
            c["finished"] = t
            if c["started"] is not None:
                # A run crossing midnight wraps the clock.
                c["seconds"] = round((t - c["started"]) % 86400, 3)
    return list(out.values())


class LocalBackend:
    """kfp.local SubprocessRunner, one worker process per run."""

    name = "local"

    def __init__(
        self,
        poll_s: float = 0.25,
        fault_file: str | None = None,
        step_worker: WarmProcess | None = None,
    ) -> None:
        self.poll_s = poll_s
        # Steps fork from this process (TensorFlow imported once) instead of each
        # starting a fresh interpreter; None: fresh interpreters.
        self.step_worker = step_worker
        self.procs: dict[str, subprocess.Popen[bytes] | Forked] = {}
        # A fault switch for infrastructure tests: while this file holds a Unix time in
        # the future, submits fail as a KFP API answering 503 would. Off by default.
        self.fault_file = fault_file

    def _faulty(self) -> bool:
        if not self.fault_file:
            return False
        try:
            until = float(Path(self.fault_file).read_text().strip() or 0)
        except (OSError, ValueError):
            return False
        return time.time() < until

    async def submit(self, run_id: str, params: dict[str, Any]) -> str:
        if self._faulty():
            raise BackendUnavailable(f"local backend refuses submits ({self.fault_file} is set)")
        run_dir = Path(params["run_dir"])
        run_dir.mkdir(parents=True, exist_ok=True)
        if (
            (run_dir / "result.json").exists()
            or run_id in self.procs
            or _alive(run_dir / "worker.pid")
        ):
            # Done, followed, or its worker runs on its own (this trigger lost track of
            # it): wait() follows it by its pid.
            return f"local-{run_id}"
        (run_dir / "params.json").write_text(json.dumps(params))
        log = open(run_dir / "run.log", "ab")
        env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            **(self.step_worker.env() if self.step_worker else {}),
        }
        if self.step_worker is not None:
            # Forked from the warm worker, the run's own worker starts without importing
            # kfp again (3-4 s); it is followed by its pid, as a re-attached run is.
            try:
                pid = await asyncio.to_thread(
                    start_run, env[ENV], str(run_dir / "params.json"), log.fileno(), env
                )
            except BaseException:
                log.close()
                raise
            if pid is not None:
                log.close()
                self.procs[run_id] = Forked(pid)
                (run_dir / "worker.pid").write_text(str(pid))
                return f"local-{run_id}"
        self.procs[run_id] = subprocess.Popen(
            [sys.executable, "-m", "services.trigger.run_local", str(run_dir / "params.json")],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        log.close()
        (run_dir / "worker.pid").write_text(str(self.procs[run_id].pid))
        return f"local-{run_id}"

    async def wait(self, run_id: str, backend_run_id: str, run_dir: str) -> Outcome:
        proc = self.procs.get(run_id)
        result = Path(run_dir) / "result.json"
        log_path = Path(run_dir) / "run.log"
        # The run's result is final once the last component has written it (atomically):
        # kfp.local's own wind-down after it is not waited for (up to a poll interval plus
        # the worker's exit, on every run's time to recovery).
        while proc is not None and proc.poll() is None and not result.exists():
            await asyncio.sleep(self.poll_s)  # poll the worker; the loop stays free
        if proc is None:
            # Re-attached after a restart: the worker may still be running on its own.
            while _alive(Path(run_dir) / "worker.pid") and not result.exists():
                await asyncio.sleep(self.poll_s)
        self.procs.pop(run_id, None)
        if result.exists():
            return Outcome("succeeded")
        if proc is None and not log_path.exists():
            # A restart lost the worker before it ran: run it again under the same id.
            params = json.loads((Path(run_dir) / "params.json").read_text())
            await self.submit(run_id, params)
            return await self.wait(run_id, backend_run_id, run_dir)
        log = log_path.read_text(errors="replace") if log_path.exists() else ""
        step, tail = failure_of(log)
        return Outcome("failed", step, tail)


@dataclass(frozen=True)
class Forked:
    """A run's worker forked by the warm worker (its parent, which reaps it)."""

    pid: int

    def poll(self) -> int | None:
        try:
            os.kill(self.pid, 0)
        except OSError:
            return 0  # gone; result.json says how it ended
        # A zombie answers signals too: a worker whose trigger was killed is reparented,
        # and a PID 1 that does not reap leaves it so for good. It has ended all the same.
        return 0 if _zombie(self.pid) else None


def _zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False  # no procfs (not Linux): signal 0 is all there is
    return stat.rpartition(")")[2].split()[:1] == ["Z"]


def _alive(pid_file: Path) -> bool:
    try:
        return Forked(int(pid_file.read_text())).poll() is None
    except (OSError, ValueError):
        return False


async def _reachable(call: Any, what: str) -> Any:
    """``call()`` in a thread; a KFP API that is down or answers 5xx is an outage
    (:class:`BackendUnavailable`), any other refusal (4xx: a bad package) is not."""
    import urllib3.exceptions

    try:
        return await asyncio.to_thread(call)
    except (urllib3.exceptions.HTTPError, OSError) as e:
        raise BackendUnavailable(f"{what}: KFP API unreachable: {e}") from e
    except Exception as e:
        status = getattr(e, "status", None)
        if isinstance(status, int) and (status == 0 or status >= 500):
            raise BackendUnavailable(f"{what}: KFP API answered {status}: {e}") from e
        raise


KFP_TERMINAL = {
    "SUCCEEDED": "succeeded",
    "FAILED": "failed",
    "CANCELED": "failed",
    "SKIPPED": "failed",
}


class KfpBackend:
    """A KFP v2 API server through ``kfp.Client`` and the compiled pipeline package."""

    name = "kfp"

    def __init__(
        self,
        host: str,
        package_path: str,
        namespace: str | None = None,
        token: str | None = None,
        experiment: str = "ctrain",
        poll_s: float = 10.0,
    ) -> None:
        self.host = host
        self.package_path = package_path
        self.namespace = namespace
        self.token = token
        self.experiment = experiment
        self.poll_s = poll_s

    def _client(self) -> Any:
        import kfp

        return kfp.Client(host=self.host, namespace=self.namespace, existing_token=self.token)

    def _find(self, client: Any, run_id: str) -> str | None:
        flt = json.dumps(
            {"predicates": [{"key": "display_name", "operation": "EQUALS", "string_value": run_id}]}
        )
        resp = client.list_runs(page_size=10, filter=flt, namespace=self.namespace)
        for r in resp.runs or []:
            if r.display_name == run_id:
                return str(r.run_id)
        return None

    async def submit(self, run_id: str, params: dict[str, Any]) -> str:
        def go() -> str:
            client = self._client()
            existing = self._find(client, run_id)
            if existing:
                return existing
            run = client.create_run_from_pipeline_package(
                self.package_path,
                arguments=params,
                run_name=run_id,
                experiment_name=self.experiment,
                namespace=self.namespace,
            )
            return str(run.run_id)

        return await _reachable(go, f"submitting {run_id} to {self.host}")

    async def wait(self, run_id: str, backend_run_id: str, run_dir: str) -> Outcome:
        while True:
            run = await _reachable(
                lambda: self._client().get_run(backend_run_id), f"reading run {backend_run_id}"
            )
            state = str(run.state or "")
            if state in KFP_TERMINAL:
                if KFP_TERMINAL[state] == "succeeded":
                    return Outcome("succeeded")
                failed = None
                details = getattr(run, "run_details", None)
                for t in getattr(details, "task_details", None) or []:
                    if str(getattr(t, "state", "")) == "FAILED":
                        failed = getattr(t, "display_name", None)
                        break
                err = getattr(run, "error", None)
                return Outcome("failed", failed, str(getattr(err, "message", "") or state))
            await asyncio.sleep(self.poll_s)  # poll the API server
