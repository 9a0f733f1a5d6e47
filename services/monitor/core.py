"""The monitor core: each judged window scored by the serving model, delayed labels joined.

No Kafka and no HTTP here: the app hands over decoded events and publishes what the
core returns through the callables it was given. Every handler is safe to repeat (a
record may be handled again after an outage at any await point): predictions are
stored under the validation's id and the version that made them, labels are attached
once per example (first label wins), and each ``WindowScored`` has a deterministic id
published once.

What is scored: the ``scope: "period"`` validations (the unit the trigger acts on), by
the version the ``stable`` label names when the window arrives. Examples whose label is
in the window (the module's ``RAW_LABEL_FEATURES`` present) get it from the model's own
``transform_features`` signature, on the same version, so the label definition lives
only in the module's ``preprocessing_fn``. The others wait for labels on
``ctrain.labels``; each time the window's label coverage crosses a configured step, its
metrics are computed again from the stored predictions (serving is not asked twice).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import orjson
import pyarrow as pa

from services.monitor import quality
from services.monitor.data import (
    ModelView,
    WindowData,
    load_window,
    predictions_uri,
    read_shard_table,
    read_table,
    write_table,
)
from services.monitor.errors import NotFound, WindowUnreadable
from services.monitor.labeljoin import LabelJoin
from services.monitor.local import LocalModels
from services.monitor.metrics import MonitorMetrics
from services.monitor.serving import NoSuchVersion, Scorer
from services.monitor.store import QualityStore
from shared import contract
from shared import labels as lb
from shared.artifacts import ArtifactStore
from shared.events import (
    QualityMetrics,
    SliceMetrics,
    WindowScored,
    WindowValidated,
)
from shared.ids import stable_id

log = logging.getLogger(__name__)
STABLE = "stable"


def _ms(t: Any) -> int:
    return int(t.timestamp() * 1000) if t is not None else 0


def encode(table: pa.Table) -> list[bytes]:
    from shared.tfexample import rows_to_examples

    return rows_to_examples(table)


class _Read:
    """A window's rows and their tf.Examples, read once however many versions score them."""

    def __init__(self, store: ArtifactStore, v: WindowValidated, m: ModelView) -> None:
        self.args = (store, v, m)
        self.got: tuple[WindowData, list[bytes]] | None = None

    async def __call__(self) -> tuple[WindowData, list[bytes]]:
        if self.got is None:
            data = await asyncio.to_thread(load_window, *self.args)
            self.got = data, await asyncio.to_thread(encode, data.table)
        return self.got


class Monitor:
    def __init__(
        self,
        models: dict[str, ModelView],
        store: ArtifactStore,
        state: QualityStore,
        scorer: Scorer,
        metrics: MonitorMetrics,
        publish: Callable[[WindowScored], Awaitable[None]],
        join: LabelJoin,
        *,
        local: LocalModels | None = None,
    ) -> None:
        self.local = local or LocalModels()
        self.models = models
        self.by_stream = {m.stream: m for m in models.values()}
        self.store = store
        self.state = state
        self.scorer = scorer
        self.metrics = metrics
        self.publish = publish
        self.join = join

    def model(self, name: str) -> ModelView:
        m = self.models.get(name)
        if m is None:
            raise NotFound(f"no model {name!r}; models: {', '.join(sorted(self.models))}")
        return m

    # ------------------------------------------------------------- windows
    async def on_validation(self, v: WindowValidated) -> WindowScored | None:
        """Score a judged period with the stable version; None when there is nothing to do."""
        m = self.by_stream.get(v.stream)
        if m is None or v.scope != "period":
            return None
        # Labels are joined whether or not a version serves yet: training needs them too.
        try:
            await self.join.index(v)
        except lb.LabelsUnreadable as e:
            raise WindowUnreadable(str(e)) from e
        await self.state.note_members(
            m.name, v.window_id, [x.window_id for x in v.members], _ms(v.window_start)
        )
        win = await self.state.window(m.name, v.window_id)
        read = _Read(self.store, v, m)
        if win.get("validation_id") != v.id:
            if not await self._score(m, v, read):
                return None
            win = await self.state.window(m.name, v.window_id)
        await self._score_others(m, v, win, read)
        return await self.publish_scores(m, v.window_id)

    async def _score(self, m: ModelView, v: WindowValidated, read: _Read) -> bool:
        started = time.monotonic()
        data, examples = await read()
        n = data.table.num_rows
        if n == 0:
            self.metrics.unscored.labels(m.name, "empty").inc()
            return False
        try:
            version, scores = await self.scorer.predict(
                m.name, examples, m.output_key, label=STABLE
            )
        except NoSuchVersion as e:
            log.info("window not scored: no stable version", extra={"window": v.window_id})
            self.metrics.unscored.labels(m.name, "no_stable_version").inc()
            log.debug("%s", e)
            return False
        labels = np.full(n, np.nan)
        rows = np.flatnonzero(data.labelled)
        if len(rows):
            _, got = await self.scorer.predict(
                m.name,
                [examples[i] for i in rows],
                m.label_key,
                version=version,
                signature=contract.TRANSFORM_SIGNATURE,
            )
            labels[rows] = np.asarray(got, dtype=np.float64).reshape(-1)
        table = self._predictions(m, data, scores, labels)
        name = f"{v.id}-v{version}.parquet"
        uri = predictions_uri(self.store, m.name, v.window_id, name)
        await asyncio.to_thread(write_table, self.store, uri, table)
        await self.state.save_window(
            m.name,
            v.window_id,
            {
                "validation_id": v.id,
                "version": version,
                "rows": n,
                "in_window": len(rows),
                "file": uri,
                "stream": v.stream,
                "start_ms": _ms(v.window_start),
                "end_ms": _ms(v.window_end),
                "members": orjson.dumps(data.members).decode(),
            },
            _ms(v.window_start),
        )
        self.metrics.rows.labels(m.name).inc(n)
        self.metrics.scoring_seconds.labels(m.name).observe(time.monotonic() - started)
        return True

    @staticmethod
    def _predictions(
        m: ModelView, data: WindowData, scores: np.ndarray, labels: np.ndarray
    ) -> pa.Table:
        cols: dict[str, Any] = {
            "example_id": pa.array(
                data.ids if data.ids is not None else [None] * len(labels), pa.string()
            ),
            "label": pa.array(labels, pa.float64(), mask=np.isnan(labels)),
        }
        s = np.asarray(scores, dtype=np.float64)
        if m.task == "multiclass" and s.ndim == 2 and s.shape[1] > 1:
            cols["score"] = pa.array(list(s), pa.list_(pa.float64()))
        else:
            cols["score"] = pa.array(
                quality.positive_probability(s) if m.task == "binary" else s.reshape(-1)
            )
        for feature in sorted({f for spec in m.slices for f in spec}):
            if feature in data.table.column_names:
                cols[f"slice:{feature}"] = data.table.column(feature).cast(pa.string())
        return pa.table(cols)

    async def _score_others(
        self, m: ModelView, v: WindowValidated, win: dict[str, str], read: _Read
    ) -> None:
        """The version ``stable`` replaced (while the promoter watches a promotion), and each
        candidate waiting for approval on the windows newer than its evaluation window."""
        watch = await self.state.watch(m.name)
        if (
            watch
            and int(watch.get("stable", -1)) == int(win["version"])
            and "file:previous" not in win
        ):
            _, examples = await read()
            try:
                version, scores = await self.scorer.predict(
                    m.name, examples, m.output_key, label="previous"
                )
            except NoSuchVersion:
                version = None
            if version is not None:
                await self._save_role(m, v, "previous", version, scores)
        start = int(win.get("start_ms") or 0)
        for cid, c in (await self.state.challengers(m.name)).items():
            if f"file:challenger:{cid}" in win:
                continue
            eval_start = await self.state.member_start(m.name, str(c.get("eval_window", "")))
            if eval_start is not None and start <= eval_start:
                continue  # not newer than the window it was evaluated on
            _, examples = await read()
            scores = await self.local.predict(str(c["model_uri"]), examples, m.output_key)
            await self._save_role(m, v, f"challenger:{cid}", 0, scores)

    async def _save_role(
        self, m: ModelView, v: WindowValidated, role: str, version: int, scores: np.ndarray
    ) -> None:
        s = np.asarray(scores, dtype=np.float64)
        col = (
            pa.array(list(s), pa.list_(pa.float64()))
            if m.task == "multiclass" and s.ndim == 2 and s.shape[1] > 1
            else pa.array(quality.positive_probability(s) if m.task == "binary" else s.reshape(-1))
        )
        uri = predictions_uri(
            self.store, m.name, v.window_id, f"{v.id}-{role.replace(':', '-')}-v{version}.parquet"
        )
        await asyncio.to_thread(write_table, self.store, uri, pa.table({"score": col}))
        await self.state.set_fields(
            m.name, v.window_id, {f"file:{role}": uri, f"version:{role}": version}
        )
        self.metrics.rows.labels(m.name).inc(len(s))

    async def publish_scores(self, m: ModelView, window_id: str) -> WindowScored | None:
        """Every scored version's metrics on the window with the labels it has now; each
        event published when new. Returns the stable version's."""
        win = await self.state.window(m.name, window_id)
        if not win:
            return None
        table = await asyncio.to_thread(read_table, self.store, win["file"])
        labels = await self._with_joined(m, win, table)
        stable = self._scored(m, window_id, win, table, _scores(table), labels, "stable")
        await self._emit(stable)
        await self.state.save_scored(m.name, window_id, stable.to_bytes())
        for key in sorted(k.removeprefix("file:") for k in win if k.startswith("file:")):
            role_table = await asyncio.to_thread(read_table, self.store, win[f"file:{key}"])
            e = self._scored(m, window_id, win, table, _scores(role_table), labels, key)
            await self._emit(e)
            await self.state.save_role_scored(m.name, window_id, key, e.to_bytes())
            if e.role == "challenger" and e.candidate_id:
                await self.state.compare(m.name, e.candidate_id, window_id, _comparison(e, stable))
        await self.state.raise_step(m.name, window_id, stable.coverage_step)
        return stable

    async def _emit(self, event: WindowScored) -> None:
        if not await self.state.published(event.id):
            await self.publish(event)
            await self.state.mark_published(event.id)
            self.metrics.scored.labels(event.model, event.role).inc()
        self.metrics.observe(event)

    def _scored(
        self,
        m: ModelView,
        window_id: str,
        win: dict[str, str],
        table: pa.Table,
        scores: np.ndarray,
        labels: np.ndarray,
        role_key: str,
    ) -> WindowScored:
        role, _, candidate = role_key.partition(":")
        known = ~np.isnan(labels)
        n = len(labels)
        coverage = float(known.sum() / n) if n else 0.0
        step = max([s for s in m.coverage_steps if coverage >= s], default=0.0)
        realized = (
            quality.realized(m.task, scores[known], labels[known], m.threshold)
            if known.any()
            else {}
        )
        estimated = quality.estimated(m.task, scores, m.threshold)
        slices = self._slices(m, table, scores, labels, known)
        version = int(win["version"] if role == "stable" else win[f"version:{role_key}"])
        return WindowScored(
            id=stable_id("score", m.name, window_id, win["validation_id"], role_key, version, step),
            model=m.name,
            version=version,
            role=role,  # type: ignore[arg-type]
            candidate_id=candidate or None,
            window_id=window_id,
            stream=win.get("stream", m.stream),
            window_start=_dt(int(win["start_ms"])) if win.get("start_ms") else None,
            window_end=_dt(int(win["end_ms"])) if win.get("end_ms") else None,
            example_count=n,
            labelled_count=int(known.sum()),
            label_coverage=round(coverage, 6),
            coverage_step=step,
            metrics=QualityMetrics(realized=realized, estimated=estimated, slices=slices),
        )

    def _slices(
        self,
        m: ModelView,
        table: pa.Table,
        scores: np.ndarray,
        labels: np.ndarray,
        known: np.ndarray,
    ) -> list[SliceMetrics]:
        out: list[SliceMetrics] = []
        for spec in m.slices:
            cols = [f"slice:{f}" for f in spec]
            if not all(c in table.column_names for c in cols):
                continue
            values = list(zip(*(table.column(c).to_pylist() for c in cols), strict=True))
            groups: dict[tuple[Any, ...], list[int]] = {}
            for i, key in enumerate(values):
                if known[i]:
                    groups.setdefault(key, []).append(i)
            for key, idx in sorted(groups.items(), key=lambda kv: str(kv[0])):
                if len(idx) < m.slice_min_examples:
                    continue
                ix = np.asarray(idx)
                metrics = quality.realized(m.task, scores[ix], labels[ix], m.threshold)
                metrics["count"] = float(len(idx))
                name = ",".join(f"{f}={v}" for f, v in zip(spec, key, strict=True))
                out.append(SliceMetrics(slice=name, metrics=metrics))
        return out

    # -------------------------------------------------------------- labels
    async def _with_joined(self, m: ModelView, win: dict[str, str], table: pa.Table) -> np.ndarray:
        """In-window labels, completed by the joined ones (NaN: none). A joined label is
        the model's raw label features: its value comes from the version's own
        ``transform_features``, as for the labels in the window."""
        labels = np.asarray(table.column("label").to_numpy(), np.float64).copy()
        base = 0
        for _shard, uri, rows in orjson.loads(win.get("members") or "[]"):
            joined = await asyncio.to_thread(lb.read_joined, self.store, uri)
            if joined.num_rows:
                data = await asyncio.to_thread(read_shard_table, uri)
                got, idx = lb.joined_only(data, joined, m.label_features)
                idx = idx + base
                fresh = np.isnan(labels[idx])
                if fresh.any():
                    examples = await asyncio.to_thread(encode, got.filter(pa.array(fresh)))
                    _, values = await self.scorer.predict(
                        m.name,
                        examples,
                        m.label_key,
                        version=int(win["version"]),
                        signature=contract.TRANSFORM_SIGNATURE,
                    )
                    labels[idx[fresh]] = np.asarray(values, dtype=np.float64).reshape(-1)
            base += int(rows)
        return labels

    async def on_joined(self, model: str, shards: set[str]) -> None:
        """Labels were joined to these shards: rescore their scored windows whose label
        coverage crossed a step."""
        m = self.models.get(model)
        if m is None:
            return
        for window_id in sorted(await self.state.periods_of(m.name, sorted(shards))):
            win = await self.state.window(m.name, window_id)
            if win.get("file"):
                await self._maybe_rescore(m, window_id, win)

    async def _maybe_rescore(self, m: ModelView, window_id: str, win: dict[str, str]) -> None:
        rows = int(win.get("rows") or 0)
        if not rows:
            return
        shards = [x[0] for x in orjson.loads(win.get("members") or "[]")]
        joined = sum((await self.join.state.counts(m.name, shards)).values())
        coverage = min(1.0, (int(win.get("in_window") or 0) + joined) / rows)
        done = float(win.get("step") or 0)
        if any(done < s <= coverage for s in m.coverage_steps):
            await self.publish_scores(m, window_id)

    # ---------------------------------------------------------------- views
    async def history(self, model: str, limit: int) -> list[dict[str, Any]]:
        m = self.model(model)
        out = []
        for window_id in await self.state.latest(m.name, limit):
            raw = await self.state.scored(m.name, window_id)
            if raw is not None:
                out.append(summary(WindowScored.model_validate_json(raw)))
        return out

    async def scored(self, model: str, window_id: str) -> WindowScored:
        m = self.model(model)
        raw = await self.state.scored(m.name, window_id)
        if raw is None:
            raise NotFound(f"window {window_id!r} of model {model!r} has not been scored")
        return WindowScored.model_validate_json(raw)


def summary(e: WindowScored) -> dict[str, Any]:
    return {
        "window_id": e.window_id,
        "start": e.window_start.isoformat() if e.window_start else None,
        "end": e.window_end.isoformat() if e.window_end else None,
        "version": e.version,
        "role": e.role,
        "examples": e.example_count,
        "labelled": e.labelled_count,
        "label_coverage": e.label_coverage,
        "realized": e.metrics.realized,
        "estimated": e.metrics.estimated,
    }


def _scores(table: pa.Table) -> np.ndarray:
    col = table.column("score")
    if pa.types.is_list(col.type):
        return np.asarray(col.to_pylist(), np.float64)
    return np.asarray(col.to_numpy(), np.float64)


def _comparison(challenger: WindowScored, stable: WindowScored) -> bytes:
    return orjson.dumps(
        {
            "window_id": challenger.window_id,
            "start": challenger.window_start.isoformat() if challenger.window_start else None,
            "labelled": challenger.labelled_count,
            "challenger": challenger.metrics.realized,
            "stable": stable.metrics.realized,
            "stable_version": stable.version,
            "challenger_estimated": challenger.metrics.estimated,
            "stable_estimated": stable.metrics.estimated,
        }
    )


def _dt(ms: int) -> Any:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ms / 1000, UTC)
