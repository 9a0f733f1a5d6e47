"""A warm step worker: pipeline steps forked from one process that imported TensorFlow once.

Every pipeline step runs in a child process of its own (``isolate.py`` says why).
Started as a fresh interpreter, each child spends 5-8 s importing TensorFlow, TFT,
TFMA and Beam before it does any work, which was most of a small window's
pipeline. The warm worker imports them once, then forks one child per step: the
same code, the same arguments and the same isolation (a process of its own that
leaves with ``os._exit``), started in milliseconds. Forking is safe here because
the worker only *imports*: it never runs TensorFlow, so no runtime or session
exists to be copied half-held into a child (the few native threads the imports
start sit idle in their pools, holding nothing), and its own loop is one thread.

Protocol (one Unix stream connection per step): the client sends its stdout and
stderr descriptors (``SCM_RIGHTS``) with a length-prefixed JSON request (step,
argument and result paths, working directory, environment); the worker forks;
the child writes into the component's own log through those descriptors. The
worker answers ``{"pid": n}`` once the child exists (no answer: nothing ran, and
the caller starts a fresh interpreter), then ``{"exit": code}`` (or
``{"signal": n}``) once the child is reaped. The socket is bound before the
imports, so a step that arrives during warm-up waits for them instead of
importing everything a second time.

    python -m services.trigger.warm SOCKET [--preload MODULE ...]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import json
import os
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any

# What every heavy step imports (``services.trigger.steps`` pulls in the rest lazily),
# and what a run's worker imports (kfp: 3-4 s, most of it its REST client).
PRELOAD = (
    "kfp.local",
    "services.trigger.run_local",
    "services.trigger.pipeline",
    "tensorflow",
    "tensorflow_transform",
    "tensorflow_transform.beam",
    "tensorflow_model_analysis",
    "tensorflow_data_validation",
    "apache_beam",
    "services.trigger.steps",
)
ENV = "CTRAIN_STEP_WORKER"  # the socket, in the environment of a run's components
_HEADER = struct.Struct("!I")


class WorkerLost(RuntimeError):
    """The connection closed before the step's status came back."""


# ---------------------------------------------------------------- client side


def request(path: str, step: str, args_path: str, out_path: str) -> int | None:
    """Run ``step`` in a child of the warm worker at ``path``; its exit status
    (negative: the signal that killed it). ``None`` when no worker answers there,
    and the caller starts a fresh interpreter instead."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError as e:
        sock.close()
        print(f"warm step worker at {path} not reachable ({e}); starting a fresh interpreter")
        return None
    with sock:
        body = json.dumps(
            {
                "step": step,
                "args": args_path,
                "out": out_path,
                "cwd": os.getcwd(),
                "env": dict(os.environ),
            }
        ).encode()
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            socket.send_fds(sock, [_HEADER.pack(len(body)) + body], [1, 2])
            replies = sock.makefile("rb")
            started = replies.readline()
        except OSError as e:
            started, why = b"", repr(e)
        else:
            why = "it closed the connection"
        if not started:
            # Refused before a child existed (stopping, a failed fork): nothing ran.
            print(
                f"warm step worker at {path} did not take the step ({why}); starting a fresh "
                "interpreter"
            )
            return None
        try:
            line = replies.readline()
        except OSError as e:
            raise WorkerLost(
                f"the warm step worker at {path} failed during step {step}: {e}"
            ) from e
    if not line:
        raise WorkerLost(f"the warm step worker at {path} closed before step {step} ended")
    status = json.loads(line)
    return -int(status["signal"]) if "signal" in status else int(status["exit"])


class WarmProcess:
    """The trigger's warm step worker process: started with the trigger, started
    again by the next run if it died, stopped (SIGTERM: steps in flight finish)
    with the trigger."""

    def __init__(self) -> None:
        self.dir: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def socket_path(self) -> str:
        assert self.dir is not None
        return str(self.dir / "steps.sock")

    def ensure(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        if self.dir is None:
            # A short private path: Unix socket paths are limited to 107 bytes.
            self.dir = Path(tempfile.mkdtemp(prefix="ctrain-steps-"))
        with open(self.dir / "worker.log", "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "services.trigger.warm", self.socket_path],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def ready(self) -> bool:
        return self.proc is not None and self.proc.poll() is None and ping(self.socket_path)

    def env(self) -> dict[str, str]:
        """What a run's worker adds to its environment so its components find this one."""
        self.ensure()
        return {ENV: self.socket_path}

    def stop(self, timeout: float = 2.0) -> bool:
        """SIGTERM: the worker takes no new step and leaves once the steps in flight
        have ended, as their runs outlive a trigger restart. True when it has left
        (and its directory is removed)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                return False
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None
        return True


def start_run(
    path: str, params_path: str, log_fd: int, env: dict[str, str], timeout: float = 120.0
) -> int | None:
    """Fork a run's worker (``run_local.main(params_path)``) from the warm worker at
    ``path``, writing into ``log_fd``; its pid. ``None`` when no worker answers
    there (the caller starts ``run_local`` as a fresh interpreter instead)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            # A worker still importing answers once it is done; not forever.
            sock.settimeout(timeout)
            sock.connect(path)
            body = json.dumps(
                {"kind": "run", "params": params_path, "cwd": os.getcwd(), "env": env}
            ).encode()
            socket.send_fds(sock, [_HEADER.pack(len(body)) + body], [log_fd, log_fd])
            line = sock.makefile("rb").readline()
    except OSError:
        return None
    return int(json.loads(line)["pid"]) if line else None


def ping(path: str, timeout: float = 1.0) -> bool:
    """True once the worker at ``path`` has finished its imports and takes steps."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(path)
            body = b'{"ping": true}'
            sock.sendall(_HEADER.pack(len(body)) + body)
            return sock.recv(64).startswith(b'{"ready"')
    except OSError:
        return False


# ---------------------------------------------------------------- worker side


def _read_request(conn: socket.socket) -> tuple[dict[str, Any], list[int]]:
    data, fds, _flags, _addr = socket.recv_fds(conn, 1 << 16, 2)
    try:
        return _parse_request(conn, data, fds)
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise


def _parse_request(
    conn: socket.socket, data: bytes, fds: list[int]
) -> tuple[dict[str, Any], list[int]]:
    if len(data) < _HEADER.size:
        raise ValueError("request too short")
    (size,) = _HEADER.unpack_from(data)
    body = bytearray(data[_HEADER.size :])
    while len(body) < size:
        more = conn.recv(size - len(body))
        if not more:
            raise ValueError("request truncated")
        body += more
    req = json.loads(bytes(body))
    if not isinstance(req, dict):
        raise ValueError(f"a request is a JSON object, got {type(req).__name__}")
    if len(fds) != 2 and not req.get("ping"):
        raise ValueError(f"expected 2 descriptors (stdout, stderr), got {len(fds)}")
    return req, fds


def _child(req: dict[str, Any], fds: list[int], parent: int) -> None:
    """In the forked child: become the step's process, then run it (never returns)."""
    os.dup2(fds[0], 1)
    os.dup2(fds[1], 2)
    for fd in fds:
        os.close(fd)
    # The worker's own streams were made for its log file (block-buffered); a step's
    # and a run's lines must reach their log as they are written (kfp.local streams
    # them, and a crash must not eat the last ones), as PYTHONUNBUFFERED made them.
    sys.stdout = open(1, "w", buffering=1, closefd=False, errors="backslashreplace")
    sys.stderr = open(2, "w", buffering=1, closefd=False, errors="backslashreplace")
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGCHLD, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.environ.clear()
    os.environ.update(req["env"])
    os.chdir(req["cwd"])
    if req.get("kind") == "run":
        code = 1
        try:
            from services.trigger import run_local

            code = run_local.main(req["params"])
        except BaseException:  # noqa: BLE001 - as an uncaught error would: traceback, exit 1
            traceback.print_exc()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    from services.trigger import isolate

    _die_with(parent)
    isolate.main(req["step"], req["args"], req["out"])  # leaves with os._exit


_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _die_with(parent: int) -> None:
    """A step's child is killed when the worker dies: its caller has then failed the
    step (``WorkerLost``), so the orphan's work would be read by nobody while it held
    a core and wrote into a run's directory. A run is not tied so: it outlives the
    worker (its later steps start fresh interpreters) and is followed by its pid."""
    if sys.platform != "linux":
        return
    import ctypes

    ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the worker died before the tie was made
        os._exit(1)


class Worker:
    """The accepting, forking and reaping loop; single-threaded, so a fork never
    copies another thread's lock."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.children: dict[int, socket.socket] = {}
        self.stopping = False
        # The trigger that started us: if it dies without stopping us (SIGKILL, a
        # crash), we stop as on SIGTERM instead of serving nobody forever.
        self.parent = os.getppid()
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if os.path.exists(path):
            os.unlink(path)  # a socket left by a worker that was killed
        self.listener.bind(path)
        self.listener.listen(16)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)

    def preload(self, modules: tuple[str, ...]) -> None:
        for name in modules:
            importlib.import_module(name)
        # Imported objects stay put: children share those pages instead of copying them
        # when the collector would otherwise touch every object's header.
        gc.freeze()

    def _accept(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError as e:  # EMFILE and the like: the caller falls back, we go on
            print(f"warm worker: accept failed ({e})", file=sys.stderr, flush=True)
            return
        conn.settimeout(10)  # a caller that connects and sends nothing must not stall us
        try:
            req, fds = _read_request(conn)
        except (OSError, ValueError) as e:
            print(f"warm worker: bad request ({e})", file=sys.stderr, flush=True)
            conn.close()
            return
        try:
            self._start(conn, req, fds)
        except OSError as e:
            # A failed fork (ENOMEM, EAGAIN): no child, so no acknowledgement, and the
            # caller starts a fresh interpreter instead.
            print(f"warm worker: could not fork ({e})", file=sys.stderr, flush=True)
            for fd in fds:
                os.close(fd)
            conn.close()

    def _start(self, conn: socket.socket, req: dict[str, Any], fds: list[int]) -> None:
        if req.get("ping"):
            # A prober that gave up while we imported asks again.
            with conn, contextlib.suppress(OSError):
                conn.sendall(b'{"ready": true}\n')
            return
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            for s in (self.listener, conn, self._wake_r, self._wake_w, *self.children.values()):
                s.close()
            _child(req, fds, parent)
        for fd in fds:
            os.close(fd)
        conn.settimeout(None)
        self.children[pid] = conn
        # The acknowledgement: a child exists. A run's caller follows it by this pid (as
        # it would a re-attached run); a step's caller waits on for the status.
        with contextlib.suppress(OSError):
            conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")

    def _reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            conn = self.children.pop(pid, None)
            if conn is None:
                continue
            reply = (
                {"signal": os.WTERMSIG(status)}
                if os.WIFSIGNALED(status)
                else {"exit": os.waitstatus_to_exitcode(status)}
            )
            # A component that is gone (its run was stopped) has nobody to tell.
            with contextlib.suppress(OSError):
                conn.sendall(json.dumps(reply).encode() + b"\n")
            conn.close()

    def serve(self) -> None:
        signal.set_wakeup_fd(self._wake_w.fileno())
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        sel = selectors.DefaultSelector()
        sel.register(self.listener, selectors.EVENT_READ, self._accept)
        sel.register(self._wake_r, selectors.EVENT_READ, self._drain)
        # Children started before a SIGTERM still report their status: the loop ends
        # once the last one is reaped.
        while not self.stopping or self.children:
            for key, _ in sel.select(timeout=1.0):
                key.data()
            self._reap()
            if os.getppid() != self.parent:
                self.stopping = True
            if self.stopping and self.listener.fileno() >= 0:
                sel.unregister(self.listener)
                self.listener.close()
                Path(self.path).unlink(missing_ok=True)

    def _drain(self) -> None:
        try:
            while self._wake_r.recv(512):
                pass
        except BlockingIOError:
            return

    def _stop(self, *_: Any) -> None:
        self.stopping = True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m services.trigger.warm", description=__doc__)
    p.add_argument("socket", help="Unix socket path to serve on")
    p.add_argument("--preload", nargs="*", default=list(PRELOAD), help="modules to import once")
    a = p.parse_args(argv)
    w = Worker(a.socket)
    print(f"warm step worker on {a.socket}: importing {', '.join(a.preload)}", flush=True)
    w.preload(tuple(a.preload))
    print("warm step worker ready", flush=True)
    w.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
