"""Chaos: SIGKILL the services at random points while the loop runs, and restart them,
while the infrastructure fails under them too (docs/faults.md).

The taxi replay is paced so that faults land during ingestion as well as during
validation, training and promotion. Beside at least ten SIGKILLs spread over all
four services: the broker is paused (SIGSTOP) twice for 20 s, Redis is restarted
once (AOF), the pipeline backend refuses submits for 30 s once a retraining is
decided (the local backend's fault switch), and the model server is paused from the
retraining's start until the promotion has waited on it. Then:

- every example is conserved: window counts + dead letters = produced;
- no window is published twice with different contents, no two windows share an
  offset, every window is validated once, no decision starts two runs, and no
  candidate is promoted twice (one serving version per candidate);
- every fault was visible while it lasted (/healthz or a metric), none dead-lettered
  an event, and no label points at a version serving does not report AVAILABLE;
- every tip travels on ctrain.labels 30 days after its trip (5 % never): each label
  record is joined once, a duplicate, or (the two rejected trips') dead-lettered;
- the loop still completes: drift retrains and `stable` serves the new version.
The test prints how long the loop took to recover from each kind of fault.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from ctrain import devstack
from ctrain.demo import Demo, DemoOptions
from ctrain.loop import LoopState
from shared import topics
from shared.events import EventDeadLetter
from shared.kafka import read_to_end
from tests.e2e.accounting import account_when
from tests.e2e.invariants import nothing_lost_or_twice

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
KILLS = 10
# The state file records every pid; the two chaos threads take turns writing it.
STATE_LOCK = threading.Lock()


class Killer(threading.Thread):
    """Kills a random service, restarts it on its port, waits a random pause, repeats."""

    def __init__(self, seed: int, kills: int) -> None:
        super().__init__(name="chaos", daemon=True)
        self.rng = random.Random(seed)
        self.kills = kills
        self.done: list[tuple[str, float]] = []
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        # Every service dies at least twice; the order and the moments are random.
        victims = list(devstack.SERVICES) * 2
        victims += [self.rng.choice(devstack.SERVICES) for _ in range(self.kills - len(victims))]
        self.rng.shuffle(victims)
        try:
            for name in victims:
                if self.stop.wait(self.rng.uniform(2.0, 8.0)):
                    return
                with STATE_LOCK:
                    state = devstack.load_state()
                    assert state is not None
                    rec = next(p for p in state["procs"] if p["name"] == name)
                    os.kill(rec["pid"], signal.SIGKILL)
                    deadline = time.monotonic() + 10
                    while devstack.Proc(**rec).alive() and time.monotonic() < deadline:
                        time.sleep(0.05)  # poll until the kernel has reaped it
                    self.done.append((name, time.time()))
                    devstack.restart_service(name)
        except BaseException as e:  # noqa: BLE001 - the test thread asserts on it
            self.error = e


def _procs() -> dict[str, dict[str, Any]]:
    state = devstack.load_state()
    assert state is not None
    return {p["name"]: p for p in state["procs"]}


def _healthz(name: str) -> tuple[int, str]:
    try:
        r = httpx.get(f"{_procs()[name]['address']}/healthz", timeout=5)
    except httpx.HTTPError as e:
        return 0, f"{type(e).__name__}"
    return r.status_code, str(r.json().get("reason", "")) if r.status_code != 200 else ""


def _metric(name: str, line: str) -> bool:
    try:
        return line in httpx.get(f"{_procs()[name]['address']}/metrics", timeout=5).text
    except httpx.HTTPError:
        return False  # restarting after a kill


def _reap(pid: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        except ChildProcessError:
            return
        time.sleep(0.05)  # poll until the kernel has reaped it


class Infra(threading.Thread):
    """Pauses the broker, restarts Redis, refuses pipeline submits and pauses the model
    server, at moments of the loop chosen so that each fault meets work in progress."""

    HEALTHY = ("ingest", "validator", "trigger")

    def __init__(self, d: Demo, fault_file: Path) -> None:
        super().__init__(name="infra", daemon=True)
        self.d = d
        self.fault_file = fault_file
        self.faults: list[dict[str, Any]] = []
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def _until(self, fn: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.stop.is_set():
            got = fn()
            if got:
                return got
            time.sleep(0.5)  # poll interval
        raise AssertionError(f"infra chaos: timed out waiting for {what}")

    def _healthy(self) -> float:
        t = time.monotonic()
        self._until(
            lambda: all(_healthz(n)[0] == 200 for n in self.HEALTHY), 300, "healthy services"
        )
        return time.monotonic() - t

    def _state(self) -> LoopState:
        assert self.d.tail is not None
        return self.d.tail.state

    def run(self) -> None:
        try:
            self.stop.wait(6)
            self.pause_broker(1)
            self.stop.wait(8)
            self.restart_redis()
            self._until(lambda: self.d.progress.before is not None, 1500, "the first model")
            known = set(self._state().runs)
            run_id = self.refuse_submits(known)
            self.pause_serving_through_promotion(run_id)
        except BaseException as e:  # noqa: BLE001 - the test thread asserts on it
            self.error = e

    def pause_broker(self, n: int) -> None:
        with STATE_LOCK:  # a service restarted now could not reach the broker to start
            pid = _procs()["kafka"]["pid"]
            os.kill(pid, signal.SIGSTOP)
            t0, seen = time.monotonic(), ""
            while time.monotonic() - t0 < 20:
                # The readiness gauge, refreshed on the services' own timer (no probe).
                for name in ("validator", "trigger"):
                    if not seen and _metric(name, f"ctrain_{name}_ready 0.0"):
                        seen = f"ctrain_{name}_ready 0 (/healthz: {_healthz(name)[1]})"
                self.stop.wait(1)  # the fault lasts 20 s; look at the gauges once a second
            os.kill(pid, signal.SIGCONT)
            # Measured before the killer may go on: its next restart is not this recovery.
            recovered = self._healthy()
        self.faults.append(
            {"kind": f"broker paused 20 s (#{n})", "seen": seen, "recovered_s": recovered}
        )

    def restart_redis(self) -> None:
        with STATE_LOCK:
            procs = _procs()
            rec = procs["redis"]
            os.kill(rec["pid"], signal.SIGTERM)  # AOF flushed on shutdown
            _reap(rec["pid"])
            seen = self._until(
                lambda: next(
                    (
                        f"ctrain_{n}_ready 0 (/healthz: {w})"
                        for n in ("validator", "trigger")
                        for c, w in [_healthz(n)]
                        if c == 503 and _metric(n, f"ctrain_{n}_ready 0.0")
                    ),
                    None,
                ),
                30,
                "a service saying Redis is down",
            )
            port = int(rec["address"].rsplit(":", 1)[1].split("/")[0])
            r = devstack.start_redis(devstack.state_dir() / "redis", port)
            state = devstack.load_state()
            assert state is not None
            next(p for p in state["procs"] if p["name"] == "redis")["pid"] = r.pid
            devstack.save_state(state)
            recovered = self._healthy()
        self.faults.append({"kind": "redis restarted", "seen": seen, "recovered_s": recovered})

    def refuse_submits(self, known: set[str]) -> str:
        """From phase 2 on the backend refuses submits; the retraining's decision meets it,
        is held, and starts its run once submits work again 30 s later."""
        self.fault_file.write_text(str(time.time() + 3600))
        seen = self._until(
            # Met by the validation's decision, or by the tick of a trigger that took the
            # decision over (restarted by the killer in between).
            lambda: _metric("trigger", 'ctrain_trigger_backend_outage{model="taxi"} 1.0'),
            900,
            "the trigger holding a decision whose submit is refused",
        )
        self.stop.wait(30)
        self.fault_file.write_text("0")
        t = time.monotonic()
        run_id = self._until(
            lambda: next((r for r in self._state().runs if r not in known), None),
            300,
            "the run once submits work again",
        )
        self.faults.append(
            {
                "kind": "pipeline backend refused submits 30 s",
                "seen": "ctrain_trigger_backend_outage 1" if seen else "",
                "recovered_s": time.monotonic() - t,
            }
        )
        return str(run_id)

    def pause_serving_through_promotion(self, run_id: str) -> None:
        """Serving stops answering while the retraining runs (and the broker pauses once
        more); the promotion of its candidate meets the pause and waits it out."""
        pid = _procs()["serving"]["pid"]
        os.kill(pid, signal.SIGSTOP)
        try:
            self.pause_broker(2)
            self._until(
                lambda: _metric("promoter", "ctrain_promoter_promotion_outage 1.0"),
                1200,
                "the promotion waiting on serving",
            )
            self.stop.wait(10)
        finally:
            os.kill(pid, signal.SIGCONT)
        t = time.monotonic()
        cands = self._until(
            lambda: [c for c in self._state().candidates.values() if c.run_id == run_id],
            300,
            "the retrained candidate",
        )
        self._until(
            lambda: any(
                p.candidate_id == cands[0].candidate_id and p.decision == "auto"
                for p in self._state().promotions
            ),
            300,
            "the retrained model promoted",
        )
        self.faults.append(
            {
                "kind": "model server paused during the promotion",
                "seen": "ctrain_promoter_promotion_outage 1",
                "recovered_s": time.monotonic() - t,
            }
        )


@pytest.mark.timeout(2400)
def test_the_loop_survives_sigkills_and_infrastructure_faults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CTRAIN_DEV_STATE_DIR", str(tmp_path / "dev"))
    fault_file = tmp_path / "refuse-submits"
    monkeypatch.setenv("CTRAIN_TRIGGER_LOCAL_FAULT_FILE", str(fault_file))
    # Restarted consumers rejoin their groups; a short session timeout keeps the
    # partitions of a killed member from waiting out the default 45 s.
    # Every tip withheld from its trip and sent on ctrain.labels 30 days later (5 % never):
    # the label join is killed and restarted with the rest (the first model trains on
    # 2013's three older quarters while the newest waits for its labels).
    d = Demo(
        DemoOptions(
            speedup=5.0e5,
            keep=False,
            auto_approve=True,
            watch_processes=False,
            label_delay_s=30 * 86400,
            never_labelled=0.05,
            extra_env={
                "CTRAIN_TRIGGER_MIN_TRAIN_EXAMPLES": "2000",
                "CTRAIN_TRIGGER_MIN_EVAL_EXAMPLES": "800",
            },
        ),
        view=lambda m: None,
    )
    killer = Killer(seed=int(os.environ.get("CTRAIN_CHAOS_SEED", "7")), kills=KILLS)
    infra = Infra(d, fault_file)
    first, second = d.load()
    try:
        d.start()
        killer.start()
        infra.start()
        progress = d.run_started(first, second)
        killer.join(timeout=900)
        infra.join(timeout=900)
        assert killer.error is None, repr(killer.error)
        assert infra.error is None, repr(infra.error)
        assert len(infra.faults) == 5 and all(f["seen"] for f in infra.faults), infra.faults
        assert len(killer.done) >= 10, killer.done
        assert {n for n, _ in killer.done} == set(devstack.SERVICES)
        promoted, model = nothing_lost_or_twice(
            d, first.num_rows + second.num_rows, "all examples accounted after the kills"
        )
        assert d.tail is not None
        s = d.tail.state
        # Every label joined once, a duplicate, or dead-lettered; the only dead letters are
        # the labels of the two trips ingest rejected (no example to join): an outage
        # never dead-letters an event.
        root = devstack.state_dir() / "artifacts"
        labels = account_when(d.state, root, lambda g: not g["unaccounted"], 180)
        assert labels["unaccounted"] == [], labels["unaccounted"][:5]
        assert labels["joined_twice"] == []
        assert dict(labels["outcomes"]).keys() <= {"joined", "duplicate", "unknown_example"}
        assert labels["outcomes"]["unknown_example"] == labels["orphans"]
        letters = [
            EventDeadLetter.model_validate_json(r.value)
            for r in asyncio.run(read_to_end(d.state["kafka"], topics.EVENTS_DLQ))
        ]
        others = [x for x in letters if x.reason != "unknown_example"]
        assert others == [], others
        # The loop closed: the drift-triggered model serves.
        assert progress.after is not None and progress.before is not None
        assert progress.after[0] == model["labels"]["stable"] > progress.before[0]
        runs = sum(1 for evs in s.runs.values())
        print(
            f"\nchaos: labels {labels['produced']} produced: "
            + ", ".join(f"{k} {v}" for k, v in sorted(labels["outcomes"].items()))
            + ", 0 unaccounted, 0 joined twice"
        )
        print(
            f"chaos: {len(killer.done)} SIGKILLs ({', '.join(n for n, _ in killer.done)}); "
            f"{runs} runs, {len(promoted)} promotions, 0 handled twice in effect, "
            f"0 examples lost ({s.examples_accounted()} accounted)"
        )
        for f in infra.faults:
            print(
                f"chaos: {f['kind']}: seen as {f['seen']!r}; recovered in {f['recovered_s']:.1f} s"
            )
    finally:
        killer.stop.set()
        infra.stop.set()
        killer.join(timeout=300)
        infra.join(timeout=300)
        d.stop()
