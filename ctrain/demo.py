"""``ctrain demo``: the whole loop on the bundled taxi trips, live in the terminal.

Two phases over real event time. Phase 1 replays the trips up to a window
boundary early in 2014 and trains the first model (no model serves yet, so the
demo asks the trigger for a run, as an operator would with ``ctrain train``) and
approves it through the API. Phase 2 replays the rest of 2014: credit cards
gain share, the validator sees ``payment_type`` drift away from what the
serving model was trained on, the trigger starts a run by itself, TFMA
compares the candidate with the serving model, an operator approves (or
``--auto-approve``), and the ``stable`` label moves. The same trips are scored
through ``stable`` before and after.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pyarrow as pa

from ctrain import client, devstack, where
from ctrain.demo_support import (
    group_progress,
    prepare_state_dir,
    retrying,
    split_at_window,
    split_history,
)
from ctrain.loop import EventTail, LoopError, LoopState, predict_stable
from ctrain.view import describe
from shared import topics
from shared.config import load_config
from shared.events import (
    Event,
    ModelCandidate,
    PromotionEvent,
    TrainingRun,
)
from shared.kafka import topic_group
from shared.settings import CommonSettings

TIME_COLUMN = "trip_start_timestamp"
BUNDLED = Path(__file__).resolve().parents[1] / "examples/taxi/data/taxi_2013_2014.csv"

# The demo's settings on top of the example's models file: no cooldown (the drift
# right after the first model may retrain at once, and so may a retry after a
# rejection); two epochs keep a run near a minute.
DEMO_ENV = {
    "CTRAIN_TRIGGER_COOLDOWN_S": "0",
    "CTRAIN_TRIGGER_EPOCHS": "2",
}


@dataclass
class DemoOptions:
    data: str = str(BUNDLED)
    auto_approve: bool = False
    # The data's own clock, this much faster: two years of trips in about 20 s.
    speedup: float = 3.0e6
    keep: bool = True
    approve_timeout_s: float = 3600
    # How long a published candidate may take to be gated by a promoter.
    gate_timeout_s: float = 120
    run_timeout_s: float = 1800
    predict_rows: int = 5
    model_module: str | None = None
    # The model of the models file to run (default: the file's only one).
    model: str | None = None
    # The models file (one model); default: the bundled taxi example's.
    config: str = field(default_factory=where.bundled_models_file)
    # Called with the drift candidate instead of asking at the terminal (tests approve
    # through the API from here).
    # Returning False rejects it: the demo then waits for the trigger's next run.
    operator: Callable[[ModelCandidate, dict[str, Any]], bool | None] | None = None
    # Give up when a service process dies (off for chaos tests, which restart them).
    watch_processes: bool = True
    extra_env: dict[str, str] = field(default_factory=dict)
    # Labels on their own stream, this long after their example in event time (the
    # model's labels become ``source: stream`` with this maturity unless its file says).
    label_delay_s: float | None = None
    never_labelled: float = 0.0  # a fraction of examples whose label never comes
    # Whether the data tells the bundled story (a 2014 shift that must retrain);
    # default: when the data is the bundled file.
    story: bool | None = None
    # Processes each of the trigger, promoter and monitor (one leads per model), and
    # of ingest and the validator.
    control_replicas: int = 1
    data_replicas: int = 1
    # Where each process runs (test hosts: devstack.up's ``net``).
    net: dict[str, Any] | None = None


@dataclass
class Progress:
    """What the demo itself is doing, next to what the loop published."""

    phase: str = "starting"
    model: str = ""
    started: float = field(default_factory=time.time)
    replayed: int = 0
    replay_total: int = 0
    bootstrap_run: str | None = None
    drift_run: str | None = None
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    waiting_approval: str | None = None
    before: tuple[int, list[float]] | None = None
    after: tuple[int, list[float]] | None = None
    # Wall clock when the first drifted (2014) example was sent, and when `stable` moved.
    drift_started: float | None = None
    stable_moved: float | None = None
    urls: dict[str, str] = field(default_factory=dict)
    decision: str = ""
    trigger: dict[str, Any] = field(default_factory=dict)  # the trigger's /v1/state
    rejected: list[str] = field(default_factory=list)


class Demo:
    """Drives the two phases; ``view`` is told about every change."""

    def __init__(self, opts: DemoOptions, view: Callable[[str], None] = print) -> None:
        self.opts = opts
        self.say = view
        self.progress = Progress()
        self.tail: EventTail | None = None
        self.state: dict[str, Any] = {}
        cfg = load_config(opts.config)
        model = opts.model or cfg.only()
        if model is None or model not in cfg.models:
            raise LoopError(
                f"name the model to run (--model): {opts.config} declares "
                f"{', '.join(sorted(cfg.models))}"
            )
        self.model = model
        self.spec = cfg.models[model]
        self.progress.model = model
        self.labels_seed = 0
        self.time_column = self.spec.windows.event_time_field or None
        # The bundled taxi story (a 2014 shift) expects a retraining; other data may not.
        self.story = (
            opts.story if opts.story is not None else Path(opts.data).resolve() == BUNDLED.resolve()
        )
        if opts.label_delay_s is not None and not self.time_column:
            raise LoopError("--label-delay needs a model whose windows have an event_time_field")

    def _config(self, d: Path) -> str:
        """The models file the stack runs: the option's, with ``model_module`` swapped in
        and, with a label delay, the model's labels on their own stream."""
        if not self.opts.model_module and self.opts.label_delay_s is None:
            return self.opts.config
        import yaml

        raw = yaml.safe_load(Path(self.opts.config).read_text())
        entry = raw["models"][self.model]
        entry["module"] = str(Path(self.opts.model_module or self.spec.module).resolve())
        entry["schema"] = self.spec.schema_path
        if self.opts.label_delay_s is not None:
            labels = entry.setdefault("labels", {})
            labels["source"] = "stream"
            labels.setdefault("label_maturity_s", self.opts.label_delay_s)
        d.mkdir(parents=True, exist_ok=True)
        out = d / "ctrain.yaml"
        out.write_text(yaml.safe_dump(raw, sort_keys=False))
        return str(out)

    # ------------------------------------------------------------ set-up
    def start(self) -> None:
        for k, v in {**DEMO_ENV, **self.opts.extra_env}.items():
            os.environ.setdefault(k, v)
        d = devstack.state_dir()
        prepare_state_dir(d)
        config = self._config(d)
        policy = "auto" if self.opts.auto_approve else "manual"
        os.environ["CTRAIN_PROMOTER_POLICIES"] = orjson.dumps({self.model: policy}).decode()
        self.progress.phase = "starting the stack"
        # The console's address first: everything below can be watched there live.
        promoter_port = devstack.free_port()
        self.say(
            f"[bold]console[/bold] http://127.0.0.1:{promoter_port}/  (up once the stack "
            f"below is; sign in with a token from {d / 'tokens.json'})"
        )
        self.state = devstack.up(
            echo=lambda m: self.say(f"[dim]{m}[/dim]"),
            config=config,
            ports={"promoter": promoter_port},
            control_replicas=self.opts.control_replicas,
            data_replicas=self.opts.data_replicas,
            net=self.opts.net,
        )
        self.tail = EventTail(self.state["kafka"], on_event=self._on_event)
        self.tail.__enter__()
        procs = {p["name"]: p["address"] for p in self.state["procs"]}
        self.progress.urls = {
            "console": f"{procs['promoter']}/",
            "approval API docs": f"{procs['promoter']}/docs",
            **{f"{n} metrics": f"{procs[n]}/metrics" for n in devstack.SERVICES},
            "statistics views": f"{procs['validator']}/v1/windows/<window_id>/stats.html",
            "decisions": f"{procs['trigger']}/v1/decisions",
        }

    def stop(self) -> None:
        if self.tail is not None:
            self.tail.stop()
        if not self.opts.keep:
            devstack.down(echo=lambda m: None)

    def _alive(self) -> str | None:
        if not self.opts.watch_processes:
            return None
        for p in self.state.get("procs", []):
            if not devstack.Proc(**p).alive():
                return f"{p['name']} exited (log {p['log']})"
        return None

    def _on_event(self, topic: str, ev: Event) -> None:
        self.say(describe(ev))

    # ------------------------------------------------------------ steps
    def wait(self, pred: Callable[[LoopState], Any], timeout: float, what: str) -> Any:
        assert self.tail is not None
        return self.tail.wait_for(pred, timeout, what, alive=self._alive)

    def replay(self, table: pa.Table, phase: str) -> float:
        """Send ``table``; returns when its first example went out."""
        from ctrain.replay import replay

        self.progress.phase = phase
        self.progress.replayed, self.progress.replay_total = 0, table.num_rows
        settings = CommonSettings(
            kafka_bootstrap=self.state["kafka"], kafka_idempotent=not self.state["embedded_kafka"]
        )

        def seen(sent: int, total: int) -> None:
            self.progress.replayed = sent

        sent_at = time.time()
        if self.opts.label_delay_s is not None:
            self._replay_labelled(settings, table, seen)
            return sent_at
        asyncio.run(
            replay(
                settings,
                table,
                time_column=self.time_column,
                speedup=(self.opts.speedup or None) if self.time_column else None,
                topic=self.spec.topic,
                progress=seen,
            )
        )
        return sent_at

    def _replay_labelled(
        self, settings: CommonSettings, table: pa.Table, seen: Callable[[int, int], None]
    ) -> None:
        from ctrain.replay_labels import replay_with_labels
        from shared import contract
        from shared.labels import label_features

        assert self.time_column and self.opts.label_delay_s is not None
        id_field = self.spec.labels.id_field
        self.labels_seed += 1
        asyncio.run(
            replay_with_labels(
                settings,
                table,
                time_column=self.time_column,
                label_columns=label_features(contract.import_module(self.spec.module)),
                delay_s=self.opts.label_delay_s,
                topic=self.spec.topic,
                id_column=id_field if id_field in table.column_names else None,
                never_fraction=self.opts.never_labelled,
                seed=self.labels_seed,
                speedup=self.opts.speedup or None,
                progress=seen,
            )
        )

    def settle(self, expected: int, what: str) -> None:
        """Wait until every replayed example is in a closed, validated window or the DLQ."""

        def done(s: LoopState) -> bool:
            return (
                s.examples_accounted() >= expected
                and set(s.validations) >= set(s.windows)
                and s.judged_windows() >= set(s.windows)
            )

        self.wait(done, 300, what)

    def follow_run(self, run_id: str) -> TrainingRun:
        """Poll the trigger for component progress until the run ends."""
        tc = client.trigger(self.live_state())
        deadline = time.monotonic() + self.opts.run_timeout_s
        try:
            while time.monotonic() < deadline:
                problem = self._alive()
                if problem:
                    raise LoopError(f"run {run_id}: {problem}")
                # A restarting trigger is waited for; the run goes on in its worker.
                left = max(0.0, deadline - time.monotonic())
                view = retrying(lambda: tc.run(run_id), left, f"run {run_id}")
                self.progress.runs[run_id] = view
                if view["state"] in ("succeeded", "failed"):
                    break
                time.sleep(1.0)  # poll interval of the progress view
        finally:
            tc.close()
        return self.wait(
            lambda s: next(
                (e for e in s.runs.get(run_id, []) if e.state in ("succeeded", "failed")), None
            ),
            60,
            f"the end of run {run_id}",
        )

    def candidate_of(self, run_id: str) -> ModelCandidate:
        c: ModelCandidate = self.wait(
            lambda s: next((c for c in s.candidates.values() if c.run_id == run_id), None),
            120,
            f"the candidate of run {run_id}",
        )
        return c

    def live_state(self) -> dict[str, Any]:
        """The stack as recorded now: a rolled service answers at its new address."""
        return devstack.load_state() or self.state

    def approve(self, cand: ModelCandidate, reason: str, by_demo: bool) -> PromotionEvent:
        """Approval through the approval API: by the demo, the operator, or the auto policy."""
        if by_demo and not self.opts.auto_approve:
            pc_ = client.promoter("approver", self.live_state())
            try:
                self.await_pending(pc_, cand.candidate_id)
                pc_.approve(cand.candidate_id, reason)
            finally:
                pc_.close()
        elif not self.opts.auto_approve and self.opts.operator is None:
            self.progress.waiting_approval = cand.candidate_id
            self.say(
                f"[bold yellow]approval needed[/bold yellow]: `ctrain candidates show "
                f"{cand.candidate_id}` then `ctrain candidates approve {cand.candidate_id}` "
                f"(or in the console, {self.progress.urls['console']}, or POST "
                f"{self.progress.urls['approval API docs'][:-5]}/v1/candidates/"
                f"{cand.candidate_id}/approve)"
            )
        promo: PromotionEvent = self.wait(
            lambda s: next(
                (
                    p
                    for p in s.promotions
                    if p.candidate_id == cand.candidate_id
                    and p.decision in ("auto", "approved", "rejected")
                ),
                None,
            ),
            self.opts.approve_timeout_s,
            f"approval and promotion of {cand.candidate_id}",
        )
        self.progress.waiting_approval = None
        if promo.decision == "rejected" and by_demo:
            raise LoopError(f"{cand.candidate_id} was rejected by {promo.actor}: {promo.reason}")
        return promo

    def await_pending(self, pc_: client.PromoterClient, cid: str) -> dict[str, Any]:
        deadline = time.monotonic() + self.opts.gate_timeout_s
        while time.monotonic() < deadline:
            try:
                view = pc_.candidate(cid)
                if view["state"] == "pending_approval":
                    return view
            except client.ApiError as e:
                if e.status != 404:
                    raise
            time.sleep(0.2)  # poll interval: the promoter gates the candidate on its own
        # Published (the tail saw it) but not gated: say whether a promoter read it.
        from services.promoter.settings import PromoterSettings

        group = str(PromoterSettings.model_fields["group_id"].default)
        where = group_progress(
            self.state["kafka"], topic_group(group, topics.CANDIDATES), topics.CANDIDATES
        )
        raise LoopError(
            f"candidate {cid} never reached pending_approval in "
            f"{self.opts.gate_timeout_s:.0f} s; {where}"
        )

    def predict(self, rows: pa.Table) -> tuple[int, list[float]]:
        import warnings

        # TensorFlow loads here, in the demo's own process: keep its start-up chatter
        # out of the live view (the services log to their own files).
        # Level 3: TensorFlow's start-up registration lines ("Unable to register cuFFT
        # factory") are ERROR-level noise on a machine without a GPU.
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        warnings.filterwarnings("ignore", category=FutureWarning, module="google.api_core")
        from shared.schema import example_spec, load_schema
        from shared.shard import arrow_schema
        from shared.tfexample import rows_to_examples

        # The same typed columns ingest writes, so ints and floats match the model's spec.
        schema = arrow_schema(example_spec(load_schema(self.spec.schema_path)))
        fields = [f for f in schema if f.name in rows.column_names]
        cols = [rows.column(f.name).cast(f.type) for f in fields]
        typed = pa.table(cols, schema=pa.schema(fields))
        examples = rows_to_examples(typed)
        return predict_stable(self.state["serving_grpc"], self.model, examples)

    # ------------------------------------------------------------ the story
    def load(self) -> tuple[pa.Table, pa.Table]:
        from ctrain.replay import order_by_time, read_table

        table = order_by_time(read_table(self.opts.data), self.time_column)
        window_s = self.spec.windows.window_duration_s
        if self.story:
            return split_at_window(table, int(window_s or 91 * 86400), column=TIME_COLUMN)
        return split_history(table, self.time_column, window_s)

    def history(self, first: pa.Table) -> ModelCandidate:
        """Phase 1: replay the history and train the first model; its candidate."""
        self.replay(first, f"phase 1: replaying the history ({first.num_rows:,} examples)")
        self.progress.phase = "phase 1: windows closing"
        self.settle(first.num_rows, "every window of the history validated")
        assert self.tail is not None
        judged = set(self.tail.state.periods)
        retrying(lambda: self._trigger_caught_up(judged), 300, "the trigger")
        run_id = retrying(self._first_run, 300, "the first run's request")
        self.progress.bootstrap_run = run_id
        self.progress.phase = "phase 1: training the first model"
        ended = self.follow_run(run_id)
        if ended.state != "succeeded":
            raise LoopError(f"the first run failed in {ended.failed_component}: {ended.log_tail}")
        return self.candidate_of(run_id)

    def refresh_decision(self) -> None:
        """The trigger's latest decision and its reason, for the live view."""
        if not self.state:
            return
        try:
            tc = client.trigger(self.live_state())
            try:
                rows = tc.decisions(1, model=self.model)
            finally:
                tc.close()
        except (httpx.TransportError, client.ApiError, RuntimeError):
            return  # not up yet, or restarting: keep showing the last one
        if rows:
            d = rows[0]
            verb = "started a run" if d["taken"] == "true" else "no run"
            self.progress.decision = f"{verb}: {d['reason']} ({d['source']})"
        try:
            tc = client.trigger(self.live_state())
            try:
                self.progress.trigger = tc.state(model=self.model)
            finally:
                tc.close()
        except (httpx.TransportError, client.ApiError, RuntimeError):
            return

    def _trigger_caught_up(self, window_ids: set[str]) -> None:
        """Wait until the trigger has decided on every judged period.

        The first run trains on the periods the trigger knows; asking before it has
        read the last one would leave that period out.
        """
        tc = client.trigger(self.live_state())
        deadline = time.monotonic() + 120
        try:
            while time.monotonic() < deadline:
                seen = {
                    d["source"].removeprefix("validation:")
                    for d in tc.decisions(500, model=self.model)
                }
                if window_ids <= seen:
                    return
                time.sleep(0.2)  # poll interval: the trigger reads validations on its own
        finally:
            tc.close()
        raise LoopError(f"the trigger has not read windows {sorted(window_ids - seen)}")

    def _first_run(self) -> str:
        tc = client.trigger(self.live_state())
        # Labels on their own stream are still being joined when the last window closes:
        # a request the trigger declines for want of labels is asked again meanwhile.
        patience = time.monotonic() + (180 if self.opts.label_delay_s is not None else 0)
        try:
            runs = tc.runs(model=self.model)
            if runs:
                return str(runs[0]["run_id"])  # drift inside the history already started one
            resp = tc.train("first model: nothing serves yet", model=self.model)
            while (
                not resp.get("started")
                and "waiting for labels" in str(resp.get("reason"))
                and time.monotonic() < patience
            ):
                self.progress.decision = f"no run: {resp.get('reason')}"
                time.sleep(2.0)  # poll interval: the monitor joins labels on its own
                resp = tc.train("first model: nothing serves yet", model=self.model)
            if resp.get("started"):
                return str(resp["run_id"])
            # A request repeated after a trigger restart finds its own run.
            runs = tc.runs(model=self.model)
            if runs:
                return str(runs[0]["run_id"])
            raise LoopError(f"the trigger declined the first run: {resp.get('reason')}")
        finally:
            tc.close()

    def drift(self, second: pa.Table, sent_before: int) -> ModelCandidate | None:
        """Phase 2: replay what came after; the candidate of the run the trigger starts by
        itself, or None when the data gave it no reason (only the bundled story must)."""
        known = set(self.tail.state.runs) if self.tail else set()
        self.progress.drift_started = self.replay(
            second, f"phase 2: replaying what came after ({second.num_rows:,} examples)"
        )
        if self.story:
            return self.next_run(known)
        self.progress.phase = "phase 2: windows closing"
        self.settle(sent_before + second.num_rows, "every later window validated")
        assert self.tail is not None
        judged = set(self.tail.state.periods)
        retrying(lambda: self._trigger_caught_up(judged), 300, "the trigger")
        started = [rid for rid in self.tail.state.runs if rid not in known]
        if not started:
            self.refresh_decision()
            return None
        return self.next_run(known)

    def next_run(self, known: set[str]) -> ModelCandidate:
        """The candidate of the next run the trigger starts by itself."""
        self.progress.phase = "phase 2: waiting for the trigger"
        run_ev: TrainingRun = self.wait(
            lambda s: next((evs[0] for rid, evs in s.runs.items() if rid not in known), None),
            300,
            "a drift-triggered run",
        )
        self.progress.drift_run = run_ev.run_id
        self.progress.phase = f"phase 2: retraining ({run_ev.reason})"
        ended = self.follow_run(run_ev.run_id)
        if ended.state != "succeeded":
            raise LoopError(f"the retraining failed in {ended.failed_component}: {ended.log_tail}")
        return self.candidate_of(run_ev.run_id)

    def blessed_or_next(self, cand: ModelCandidate, retries: int = 2) -> ModelCandidate:
        """A candidate the gate did not bless re-arms the trigger, which retries while the
        shift holds: the demo follows its next run (a few times), as an operator would."""
        for _ in range(retries):
            if cand.blessed:
                return cand
            self.say(
                f"[yellow]not blessed[/yellow] {cand.candidate_id}: "
                f"{'; '.join(cand.failed_checks)}; waiting for the trigger's next run"
            )
            cand = self.next_run(set(self.tail.state.runs) if self.tail else set())
        if not cand.blessed:
            raise LoopError(f"the candidate was not blessed: {'; '.join(cand.failed_checks)}")
        return cand

    def run(self) -> Progress:
        first, second = self.load()
        self.start()
        return self.run_started(first, second)

    def run_started(self, first: pa.Table, second: pa.Table) -> Progress:
        sample = second.slice(0, self.opts.predict_rows)
        cand = self.history(first)
        self.progress.phase = "phase 1: promoting the first model"
        self.approve(cand, "demo: the first model", by_demo=True)
        self.progress.before = retrying(lambda: self.predict(sample), 120, "predictions")
        maybe = self.drift(second, first.num_rows)
        if maybe is None:
            self.progress.phase = f"done: no retraining needed ({self.progress.decision})"
            return self.progress
        cand = self.blessed_or_next(maybe)
        self.progress.phase = "phase 2: approval"
        # An operator who rejects a candidate leaves the shift unresolved: the trigger
        # retries by itself after its cooldown, and the operator judges the next one.
        while True:
            said = self.opts.operator(cand, self.state) if self.opts.operator else None
            if said is not False and self.approve(cand, "", by_demo=False).decision != "rejected":
                break
            self.progress.rejected.append(cand.candidate_id)
            cand = self.blessed_or_next(
                self.next_run(set(self.tail.state.runs) if self.tail else set())
            )
        self.progress.stable_moved = time.time()
        self.progress.after = retrying(lambda: self.predict(sample), 120, "predictions")
        self.progress.phase = "done"
        return self.progress
