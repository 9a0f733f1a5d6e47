"""Labels that arrive later, end to end: the taxi story with every tip withheld from its
trip and sent on ``ctrain.labels`` 30 days later in event time, by a trip id.

Beside the replayed labels, the stream carries what a live one does: labels that never
come (5 %), labels sent before their trip, the same label twice, a second, different
label for a labelled trip, labels past the horizon and labels for trips that do not
exist. The loop must still close (the first model trained on labelled trips only, the
shift retrained, the new version serving), and every label record must be accounted
for: joined once (its source position in a label segment beside its shard), or a
duplicate of a joined label, or dead-lettered with its reason.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pyarrow as pa
import pytest
import yaml
from pyarrow import csv

from ctrain import cli, client, devstack
from ctrain.demo import BUNDLED, TIME_COLUMN, Demo, DemoOptions
from shared import topics
from shared.kafka import make_producer
from shared.settings import CommonSettings
from tests.conftest import ROOT
from tests.e2e.accounting import account_when

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
DAY = 86_400
DELAY = 30 * DAY


def trips_with_ids(tmp: Path) -> tuple[Path, Path]:
    """The bundled trips with a trip id, and a models file whose labels name it."""
    table = csv.read_csv(BUNDLED, convert_options=csv.ConvertOptions(strings_can_be_null=True))
    ids = pa.array([f"trip-{i:05d}" for i in range(table.num_rows)], pa.string())
    table = table.append_column("trip_id", ids)
    data = tmp / "trips.csv"
    csv.write_csv(table, data)
    example = ROOT / "examples" / "taxi"
    schema = (example / "data" / "schema.pbtxt").read_text()
    schema += '\nfeature {\n  name: "trip_id"\n  type: BYTES\n  presence { min_fraction: 1.0 }\n}\n'
    (tmp / "schema.pbtxt").write_text(schema)
    raw = yaml.safe_load((example / "ctrain.yaml").read_text())
    m = raw["models"]["taxi"]
    m["schema"] = str(tmp / "schema.pbtxt")
    m["module"] = str(example / "model.py")
    m["validation"]["ignore_features"].append("trip_id")
    m["labels"] = {
        "source": "stream",
        "id_field": "trip_id",
        "label_maturity_s": DELAY,
        "horizon_s": 120 * DAY,
        "early_tolerance_s": DAY,
    }
    config = tmp / "ctrain.yaml"
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    return data, config


@dataclass
class Sent:
    early: int = 0
    duplicates: int = 0
    conflicting: int = 0
    late: int = 0
    unknown: int = 0


class Stream(Demo):
    """The demo, with the odd labels a live stream carries sent before each phase."""

    sent = Sent()

    def replay(self, table: pa.Table, phase: str) -> float:
        if self.labels_seed == 0:
            first = table.to_pylist()
            self.sent = Sent()
            # Labels for trips that do not exist, dated in the history: given up on once
            # windows a day newer have been judged.
            odd = [
                {"example_id": f"nope-{k}", "label": 1.0, "event_time": _iso(r[TIME_COLUMN])}
                for k, r in enumerate(first[100:110])
            ]
            self.sent.unknown = len(odd)
            self._send(odd)
            self.history_rows = first
        else:
            later = table.to_pylist()
            hist = self.history_rows
            odd = []
            # Labels before their trip (the trip comes in this phase): held, then joined.
            for r in later[200:220]:
                odd.append(_label(r, r[TIME_COLUMN] - DAY / 2))
            self.sent.early = 20
            # The same label again, from another record: a duplicate, counted once.
            for r in hist[500:530]:
                odd.append(_label(r, r[TIME_COLUMN] + DELAY))
            self.sent.duplicates = 30
            # A second, different label for a trip: conflicting (whichever comes second).
            for r in hist[600:610]:
                odd.append({**_label(r, r[TIME_COLUMN] + DELAY), "label": (r["tips"] or 0) + 5})
            self.sent.conflicting = 10
            # A label 200 days after its trip: past the 120-day horizon.
            for r in hist[700:705]:
                odd.append(_label(r, r[TIME_COLUMN] + 200 * DAY))
            self.sent.late = 5
            self._send(odd)
        return super().replay(table, phase)

    def _send(self, bodies: list[dict[str, Any]]) -> None:
        async def go() -> None:
            common = CommonSettings(
                kafka_bootstrap=self.state["kafka"],
                kafka_idempotent=not self.state["embedded_kafka"],
            )
            p = make_producer(common)
            await p.start()
            try:
                for b in bodies:
                    await p.send_and_wait(topics.LABELS, orjson.dumps(b))
            finally:
                await p.stop()

        asyncio.run(go())


def _iso(t: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(t, UTC).isoformat()


def _label(row: dict[str, Any], at: float) -> dict[str, Any]:
    return {"example_id": row["trip_id"], "label": row["tips"] or 0.0, "event_time": _iso(at)}


@pytest.mark.timeout(1500)
def test_delayed_labels_close_the_loop_and_every_label_is_accounted_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CTRAIN_DEV_STATE_DIR", str(tmp_path / "dev"))
    data, config = trips_with_ids(tmp_path)
    d = Stream(
        DemoOptions(
            data=str(data),
            config=str(config),
            story=True,
            auto_approve=True,
            keep=False,
            speedup=0,
            label_delay_s=DELAY,
            never_labelled=0.05,
            extra_env={
                "CTRAIN_TRIGGER_MIN_TRAIN_EXAMPLES": "2000",
                "CTRAIN_TRIGGER_MIN_EVAL_EXAMPLES": "800",
            },
        ),
        view=lambda m: None,
    )
    try:
        progress = d.run()
        assert progress.phase == "done", progress.phase
        s = d.tail.state if d.tail else None
        assert s is not None
        assert s.stable_version("taxi") == 2
        # Both runs trained and evaluated on labelled trips only, and said how many.
        for cand in s.candidates.values():
            assert cand.labels is not None, cand
            assert (
                cand.labels["train"]["labelled"] >= 2000 and cand.labels["train"]["defaulted"] == 0
            )
            assert cand.labels["eval"]["labelled"] >= 800
            assert cand.labels["train"]["unlabelled"] > 0  # the never-labelled 5 %
        root = devstack.state_dir() / "artifacts"
        sent = d.sent
        want_dead = {"late_label": sent.late}
        got = account_when(
            d.state,
            root,
            lambda g: (
                not g["unaccounted"]
                and g["outcomes"]["unknown_example"] == sent.unknown + g["orphans"]
                and all(g["outcomes"][k] == v for k, v in want_dead.items())
            ),
            180,
        )
        print({**got, "unaccounted": len(got["unaccounted"])})
        assert got["unaccounted"] == [], got["unaccounted"][:5]
        assert got["joined_twice"] == []
        o = got["outcomes"]
        assert got["orphans"] >= 1  # the rejected trips' labels, dead-lettered too
        assert o["unknown_example"] == sent.unknown + got["orphans"]
        assert o["late_label"] == sent.late
        # One of each conflicting pair is joined, the other dead-lettered.
        assert 1 <= o["conflicting_label"] <= sent.conflicting
        assert o["duplicate"] >= sent.duplicates + sent.early - sent.conflicting
        assert sum(o.values()) == got["produced"]
        # A dead-lettered label can be sent again (here to no avail: its trip does not
        # exist, so it is dead-lettered again, as a new record, and accounted again).
        unknown = o["unknown_example"]
        assert cli.main(["dlq", "redrive", "--reason", "unknown_example", "--why", "e2e"]) == 0
        again = account_when(
            d.state,
            root,
            lambda g: g["outcomes"]["unknown_example"] == 2 * unknown and not g["unaccounted"],
            120,
        )
        assert again["outcomes"]["unknown_example"] == 2 * unknown, again["outcomes"]
        assert again["produced"] == got["produced"] + unknown
        # The monitor agrees: nothing is still held.
        mon = {p["name"]: p["address"] for p in d.state["procs"]}["monitor"]
        text = httpx.get(f"{mon}/metrics", timeout=10).text
        assert 'ctrain_monitor_labels_held{model="taxi"} 0.0' in text
        tc = client.trigger(d.state)
        try:
            runs = tc.runs(model="taxi")
            one = tc.run(str(runs[0]["run_id"]))
        finally:
            tc.close()
        assert len(runs) >= 2
        # The run and the approval API say how many were labelled, per period and in all.
        assert all(p["labelled"] >= 0 for p in one["labels"].values()), one["labels"]
        assert one["gathered_labels"]["train"]["labelled"] >= 2000
        pc = client.promoter("viewer", d.state)
        try:
            view = pc.candidate(str(one["candidate_id"]))
        finally:
            pc.close()
        assert view["lineage"]["labels"]["eval"]["labelled"] >= 800
    finally:
        d.opts.keep = False
        d.stop()
        os.environ.pop("CTRAIN_PROMOTER_POLICIES", None)
