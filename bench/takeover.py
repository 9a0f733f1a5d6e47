"""How long a model goes without a leader when its leader dies (docs/deploy.md, "Two
replicas").

A dev stack with two processes each of the trigger, the promoter and the monitor
(``ctrain dev up --control-replicas 2`` without ingest and validator). For each of the
three services, ``--kills`` times: the process holding the lease is sent SIGKILL, and
the time until the other process holds the lease is read from Redis (polled every
20 ms); the killed process is then started again (it comes back a follower). The same
is measured for a graceful stop (SIGTERM, as in a rolling restart: the leader gives
its lease up). The floor beside it is the lease TTL: a leader that dies without a word
cannot be replaced before its lease runs out; the bound is the TTL plus one renewal
period (a fifth of the TTL).

    python bench/takeover.py [--kills 3] [--ttl 10]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis

from ctrain import devstack

LEASES = {"trigger": "taxi", "promoter": "serving", "monitor": "taxi"}


def holder(r: redis.Redis, service: str) -> str:
    raw = r.hget(f"ctrain:lease:{service}:{LEASES[service]}", "holder")
    return raw.decode() if raw else ""


def wait_holder(r: redis.Redis, service: str, unlike: str, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        h = holder(r, service)
        if h and h != unlike:
            return h
        time.sleep(0.02)  # the measurement's resolution
    raise SystemExit(f"{service}: no new leader after {timeout:.0f} s")


def one(r: redis.Redis, service: str, sig: int) -> float:
    old = wait_holder(r, service, "")
    name = old.split("@", 1)[0]
    state = devstack.load_state()
    assert state is not None
    rec = next(p for p in state["procs"] if p["name"] == name)
    t0 = time.monotonic()
    os.kill(rec["pid"], sig)
    new = wait_holder(r, service, old)
    took = time.monotonic() - t0
    deadline = time.monotonic() + 60
    while devstack.Proc(**rec).alive() and time.monotonic() < deadline:
        time.sleep(0.05)  # until it has exited (SIGTERM drains first)
    devstack.restart_service(name)
    print(f"  {service}: {signal.Signals(sig).name} {name} -> {new.split('@')[0]} in {took:.2f} s")
    return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kills", type=int, default=3)
    ap.add_argument("--ttl", type=float, default=10.0, help="CTRAIN_LEASE_TTL_S")
    args = ap.parse_args()
    os.environ["CTRAIN_DEV_STATE_DIR"] = tempfile.mkdtemp(prefix="ctrain-takeover-")
    os.environ["CTRAIN_LEASE_TTL_S"] = str(args.ttl)
    state = devstack.up(
        services=("trigger", "promoter", "monitor"), echo=lambda m: None, control_replicas=2
    )
    r = redis.Redis.from_url(state["redis"])
    rows = []
    try:
        for service in LEASES:
            kills = [one(r, service, signal.SIGKILL) for _ in range(args.kills)]
            terms = [one(r, service, signal.SIGTERM) for _ in range(args.kills)]
            rows.append((service, kills, terms))
    finally:
        devstack.down(echo=lambda m: None)
    bound = args.ttl * 1.2
    print(f"\nlease TTL {args.ttl:g} s (floor for a kill), bound TTL + renewal = {bound:g} s")
    print("| service | SIGKILL median / max (s) | SIGTERM median / max (s) | kill / floor |")
    print("| --- | --- | --- | --- |")
    for service, kills, terms in rows:
        print(
            f"| {service} | {statistics.median(kills):.2f} / {max(kills):.2f} "
            f"| {statistics.median(terms):.2f} / {max(terms):.2f} "
            f"| {statistics.median(kills) / args.ttl:.2f} |"
        )


if __name__ == "__main__":
    main()
