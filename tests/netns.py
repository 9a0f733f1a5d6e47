"""Test hosts on this machine: network namespaces on one bridge, and partitions between them.

The bridge lives in the root namespace with the subnet's first address and one
address per infrastructure server (Redis, the broker, the model server bind to
theirs), so the test process reaches everything; each host is a namespace with one
veth on the bridge. A partition is a blackhole route inside a host's namespace: its
packets to that address are dropped (a connection in progress hangs, a new one
fails), which cuts that host from one server or one peer and nothing else. Nothing
is routed beyond the bridge; nothing here touches an address outside the subnet.
"""

from __future__ import annotations

import os
import shutil
import subprocess


def available() -> str | None:
    """Why test hosts cannot be made here, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "no `ip` (iproute2)"
    probe = f"ctprobe{os.getpid() % 10000}"
    r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if r.returncode != 0:
        return f"`ip netns add` failed: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], check=False)
    return None


def _ip(*args: str, ns: str = "") -> None:
    cmd = ["ip", "netns", "exec", ns, "ip", *args] if ns else ["ip", *args]
    subprocess.run(cmd, check=True, capture_output=True, text=True)


class HostNet:
    """``hosts`` namespaces and ``infra`` server addresses on a bridge of their own."""

    def __init__(self, hosts: list[str], infra: list[str]) -> None:
        k = 100 + os.getpid() % 100  # a subnet per test run
        self.tag = f"ct{k}"
        self.bridge = f"{self.tag}br"
        self.subnet = f"10.231.{k}"
        self.infra = {name: f"{self.subnet}.{2 + i}" for i, name in enumerate(infra)}
        self.hosts = {
            name: (f"{self.tag}-{name}", f"{self.subnet}.{11 + i}") for i, name in enumerate(hosts)
        }
        self.cuts: set[tuple[str, str]] = set()

    def __enter__(self) -> HostNet:
        self.down()  # what an interrupted run left
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.subnet}.1/24", "dev", self.bridge)
        for addr in self.infra.values():
            _ip("addr", "add", f"{addr}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for i, (ns, addr) in enumerate(self.hosts.values()):
            outer, inner = f"{self.tag}v{i}", f"{self.tag}n{i}"
            subprocess.run(["ip", "netns", "add", ns], check=True)
            _ip("link", "set", "lo", "up", ns=ns)
            _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
            _ip("link", "set", inner, "netns", ns)
            _ip("link", "set", outer, "master", self.bridge)
            _ip("link", "set", outer, "up")
            _ip("addr", "add", f"{addr}/24", "dev", inner, ns=ns)
            _ip("link", "set", inner, "up", ns=ns)
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    def down(self) -> None:
        for ns, _ in self.hosts.values():
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True, check=False)

    def placement(self, where: dict[str, str]) -> dict[str, object]:
        """``devstack.up(net=...)``: each process name on its host."""
        return {
            "infra": dict(self.infra),
            "hosts": {proc: list(self.hosts[host]) for proc, host in where.items()},
        }

    def address(self, target: str) -> str:
        return self.infra[target] if target in self.infra else self.hosts[target][1]

    def cut(self, host: str, target: str) -> None:
        """Drop every packet ``host`` sends to ``target`` (a server or another host)."""
        ns, _ = self.hosts[host]
        _ip("route", "add", "blackhole", f"{self.address(target)}/32", ns=ns)
        self.cuts.add((host, target))

    def heal(self, host: str, target: str) -> None:
        ns, _ = self.hosts[host]
        _ip("route", "del", "blackhole", f"{self.address(target)}/32", ns=ns)
        self.cuts.discard((host, target))

    def host_of(self, address: str) -> str | None:
        """The host whose address ``address`` (``http://ip:port``, ``ip:port``) names."""
        ip = address.split("://")[-1].split("/")[0].rsplit(":", 1)[0]
        return next((h for h, (_, a) in self.hosts.items() if a == ip), None)
