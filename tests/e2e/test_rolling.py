"""Two replicas of the trigger, the promoter and the monitor, rolled under the running
loop (docs/deploy.md, "Two replicas").

The dev stack runs ``trigger``/``trigger-2``, ``promoter``/``promoter-2`` and
``monitor``/``monitor-2``; one of each leads per model. While the taxi loop runs
(bootstrap model, drift, retraining, an operator's approval), each of the six
processes is replaced the way a Kubernetes RollingUpdate does it (successor up, then
SIGTERM to the old one, old and new alive together), and the trigger's leader is
killed with SIGKILL once. The operator approves through whichever promoter does not
lead. Then:

- no decision starts two runs and every run is submitted once;
- no candidate is promoted twice and every serving version names one candidate;
- every approval the operator sent was acted on (0 lost);
- every event id was published with one content;
- every example is accounted for, and the drift-triggered model serves;
- leadership moved: each of the trigger and the promoter had more than one leader.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

import httpx
import pytest

from ctrain import client, devstack
from ctrain.demo import Demo, DemoOptions
from shared.events import ModelCandidate
from tests.e2e.invariants import nothing_lost_or_twice

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
ROLLS = ("trigger", "promoter", "monitor", "trigger-2", "promoter-2", "monitor-2")


def _procs() -> dict[str, dict[str, Any]]:
    state = devstack.load_state()
    assert state is not None
    return {p["name"]: p for p in state["procs"]}


def _leaders(service: str) -> dict[str, str | None]:
    for name, p in _procs().items():
        if devstack.service_of(name) == service:
            try:
                r = httpx.get(f"{p['address']}/v1/leaders", timeout=5)
            except httpx.HTTPError:
                continue  # stopping or starting: ask the other
            if r.status_code == 200:
                return dict(r.json()["leaders"])
    return {}


class Roller(threading.Thread):
    """Replaces each control-plane process in turn, and kills the trigger's leader once."""

    def __init__(self, d: Demo) -> None:
        super().__init__(name="roller", daemon=True)
        self.d = d
        self.stop = threading.Event()
        self.done: list[str] = []
        self.under_loop = 0  # restarts finished while the loop was still running
        self.leaders: dict[str, set[str]] = {"trigger": set(), "promoter": set()}
        self.error: BaseException | None = None

    def _watch(self) -> None:
        for service in self.leaders:
            holder = _leaders(service).get("taxi" if service == "trigger" else "serving")
            if holder:
                self.leaders[service].add(holder)

    def run(self) -> None:
        try:
            # From the start: the rolls meet the bootstrap run, drift, the retraining
            # and the promotions of a loop that takes a few minutes.
            for i, name in enumerate(ROLLS):
                if self.stop.wait(2):
                    return
                self._watch()
                if i == 3:
                    self.kill_trigger_leader()
                devstack.roll(name, echo=lambda m: None)
                self.done.append(name)
                if self.d.progress.phase != "done":
                    self.under_loop += 1
            self._watch()
        except BaseException as e:  # noqa: BLE001 - the test thread asserts on it
            self.error = e

    def kill_trigger_leader(self) -> None:
        holder = _leaders("trigger").get("taxi") or ""
        name = holder.split("@", 1)[0]
        rec = _procs().get(name)
        assert rec is not None, (holder, list(_procs()))
        os.kill(rec["pid"], signal.SIGKILL)
        deadline = time.monotonic() + 10
        while devstack.Proc(**rec).alive() and time.monotonic() < deadline:
            time.sleep(0.05)  # poll until the kernel has reaped it
        self.done.append(f"SIGKILL {name}")
        devstack.restart_service(name)


@pytest.mark.timeout(1500)
def test_every_control_service_rolls_under_the_running_loop(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CTRAIN_DEV_STATE_DIR", str(tmp_path / "dev"))
    approvals: list[str] = []

    def operator(cand: ModelCandidate, state: dict[str, Any]) -> bool:
        """Approve through the promoter replica that does not lead (any replica records)."""
        leader = _leaders("promoter").get("serving") or ""
        name = "promoter" if leader.startswith("promoter-2@") else "promoter-2"
        pc = client.PromoterClient(_procs()[name]["address"], client.token_for("approver", state))
        try:
            d.await_pending(pc, cand.candidate_id)
            pc.approve(cand.candidate_id, "rolling restart test")
        finally:
            pc.close()
        approvals.append(cand.candidate_id)
        return True

    d = Demo(
        DemoOptions(
            speedup=5.0e5,
            keep=False,
            operator=operator,
            watch_processes=False,
            control_replicas=2,
            # A candidate published while the promoters roll waits for the group to
            # settle: one CI run saw the gate come later than the default 120 s, with the
            # promoter group rebalancing for minutes (docs/deploy.md, "Two replicas").
            # Late is allowed (0 lost is what is asserted); if it never comes, the error
            # says where the promoter group's commits stand on ctrain.candidates.
            gate_timeout_s=360,
            # The models file's training and evaluation sizes, as the demo runs: with 800
            # held-out examples an AUC's noise (about 0.013) let a retrained model miss the
            # gate's -0.01 change threshold by chance (a CI run did).
        ),
        view=lambda m: None,
    )
    roller = Roller(d)
    first, second = d.load()
    try:
        d.start()
        roller.start()
        progress = d.run_started(first, second)
        roller.join(timeout=900)
        assert roller.error is None, repr(roller.error)
        assert len(roller.done) == len(ROLLS) + 1, roller.done
        promoted, model = nothing_lost_or_twice(
            d, first.num_rows + second.num_rows, "all examples accounted after the rolls"
        )
        assert d.tail is not None
        s = d.tail.state
        submitted = [e.run_id for evs in s.runs.values() for e in evs if e.state == "submitted"]
        assert sorted(set(submitted)) == sorted(s.runs), submitted
        assert set(approvals) <= set(promoted), (approvals, promoted)  # 0 approvals lost
        stable = model["labels"]["stable"]
        assert progress.after is not None and progress.before is not None
        assert progress.after[0] == stable > progress.before[0]
        assert all(len(h) >= 2 for h in roller.leaders.values()), roller.leaders
        print(
            f"\nrolling: {len(roller.done)} restarts ({', '.join(roller.done)}), "
            f"{roller.under_loop} before the loop closed; "
            f"{len(s.runs)} runs, {len(promoted)} promotions, {len(approvals)} approvals "
            f"through the follower, 0 twice, 0 lost; leaders seen: "
            + "; ".join(f"{k}: {', '.join(sorted(v))}" for k, v in roller.leaders.items())
        )
    finally:
        roller.stop.set()
        roller.join(timeout=300)
        d.stop()
