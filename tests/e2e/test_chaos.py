"""Chaos: SIGKILL the services at random points while the loop runs, and restart them.

The taxi replay is paced (about two minutes of data clock) so that kills land
during ingestion as well as during validation, training and promotion. After at
least twelve kills spread over all four services:

- every example is conserved: window counts + dead letters = produced;
- no window is published twice with different contents, no two windows share an
  offset, every window is validated once, no decision starts two runs, and no
  candidate is promoted twice (one serving version per candidate);
- the loop still completes: drift retrains and `stable` serves the new version.
"""

from __future__ import annotations

import itertools
import os
import random
import signal
import threading
import time
from pathlib import Path

import pytest

from ctrain import client, devstack
from ctrain.demo import Demo, DemoOptions

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
KILLS = 12


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


@pytest.mark.timeout(2400)
def test_the_loop_survives_sigkills(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CTRAIN_DEV_STATE_DIR", str(tmp_path / "dev"))
    # Restarted consumers rejoin their groups; a short session timeout keeps the
    # partitions of a killed member from waiting out the default 45 s.
    d = Demo(
        DemoOptions(speedup=5.0e5, keep=False, auto_approve=True, watch_processes=False),
        view=lambda m: None,
    )
    killer = Killer(seed=int(os.environ.get("CTRAIN_CHAOS_SEED", "7")), kills=KILLS)
    first, second = d.load()
    try:
        d.start()
        killer.start()
        progress = d.run_started(first, second)
        killer.join(timeout=900)
        assert killer.error is None, repr(killer.error)
        assert len(killer.done) >= 10, killer.done
        assert {n for n, _ in killer.done} == set(devstack.SERVICES)
        assert d.tail is not None
        s = d.tail.state
        # Let anything a restart redelivered arrive before counting.
        d.settle(first.num_rows + second.num_rows, "all examples accounted after the kills")
        assert s.examples_accounted() == first.num_rows + second.num_rows
        assert s.conflicts == [], s.conflicts
        assert s.unreadable == [], s.unreadable
        by_part: dict[int, list[tuple[int, int]]] = {}
        for w in s.windows.values():
            for o in w.offsets:
                by_part.setdefault(o.partition, []).append((o.first, o.last))
        for ranges in by_part.values():
            ranges.sort()
            for (_, last), (first_next, _) in itertools.pairwise(ranges):
                assert first_next > last, f"windows overlap: {ranges}"
        assert set(s.validations) == set(s.windows)
        sets = [tuple(evs[0].windows) for evs in s.runs.values()]
        assert len(sets) == len(set(sets)), sets
        promoted = [p.candidate_id for p in s.promotions if p.decision in ("auto", "approved")]
        assert len(promoted) == len(set(promoted)), promoted
        pc = client.promoter("viewer", d.state)
        try:
            model = pc.model("taxi")
        finally:
            pc.close()
        assert model is not None
        by_version = model["candidates"]
        assert len(set(by_version.values())) == len(by_version), by_version
        # The loop closed: the drift-triggered model serves.
        assert progress.after is not None and progress.before is not None
        assert progress.after[0] == model["labels"]["stable"] > progress.before[0]
    finally:
        killer.stop.set()
        killer.join(timeout=300)
        d.stop()
