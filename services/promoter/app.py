"""Wiring: ``create_app(settings)`` -> the approval API (FastAPI, OpenAPI at /docs)
plus a FastStream subscriber on ``ctrain.candidates``.

Routes are thin: authenticate, call the core, shape the answer. Errors map to
HTTP in one place: unknown id 404, a state that forbids the action 409 naming
it, no token 401, a token without the role 403, a malformed body 422 naming the
field (FastAPI's validation). No `from __future__ import annotations`: FastAPI resolves
the route signatures, which use a dependency alias local to ``create_app``.
"""

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Query
from fastapi.responses import JSONResponse
from faststream.kafka.fastapi import KafkaMessage
from pydantic import BaseModel, Field

from services.promoter.auth import Identity, TokenBook
from services.promoter.console import Upstreams, add_console, upstreams
from services.promoter.core import SERVING_LEASE, Promoter, PromoterConfig
from services.promoter.errors import NotFound, PromoterError
from services.promoter.metrics import PromoterMetrics
from services.promoter.quality import RollbackPolicy
from services.promoter.serving import ServingFleet
from services.promoter.settings import PromoterSettings
from shared import topics
from shared.config import CtrainConfig, config_of
from shared.consume import Consumer, decode
from shared.events import ModelCandidate, PromotionEvent, WindowScored
from shared.kafka import (
    BrokerEpoch,
    event_dead_letters,
    health,
    make_router,
    one_event_at_a_time,
)
from shared.lease import Leadership, instance_name
from shared.metrics import Readiness, new_registry
from shared.periodic import every
from shared.redis import make_redis
from shared.serve import service_app, service_routes
from shared.settings import CommonSettings
from shared.tasks import HEADLINE_METRIC

log = logging.getLogger(__name__)


class Decision(BaseModel):
    reason: str = Field(min_length=1, max_length=2000, description="Why; kept in the audit trail.")


class Rollback(BaseModel):
    reason: str = Field(min_length=1, max_length=2000, description="Why; kept in the audit trail.")
    version: int | None = Field(
        default=None, ge=1, description="Target version (default: previous)."
    )


def smoke_examples(c: ModelCandidate, n: int) -> list[bytes]:
    """A few raw rows of the candidate's evaluation window, as serving will see them."""
    from shared.shard import read_shard
    from shared.tfexample import rows_to_examples

    if not c.eval_data_uri:
        raise NotFound(f"candidate {c.candidate_id} names no evaluation data for a smoke test")
    return rows_to_examples(read_shard(c.eval_data_uri).slice(0, n))


def gate_from(
    cfg: CtrainConfig | None, settings: PromoterSettings
) -> tuple[dict[str, str], frozenset[str], dict[str, frozenset[str]]]:
    """Each model's gate: the models file's promotion section, then the environment's
    POLICIES / TWO_APPROVERS on top (they name models, so they stay per model)."""
    policies: dict[str, str] = {}
    two: set[str] = set()
    approvers: dict[str, frozenset[str]] = {}
    for name, m in cfg.models.items() if cfg else []:
        if m.promotion.policy:
            policies[name] = m.promotion.policy
        if m.promotion.two_approvers:
            two.add(name)
        if m.promotion.approvers:
            approvers[name] = frozenset(m.promotion.approvers)
    policies.update(settings.policies)
    two.update(settings.two_approvers)
    return policies, frozenset(two), approvers


def rollback_from(
    cfg: CtrainConfig | None, settings: PromoterSettings, policies: dict[str, str]
) -> dict[str, RollbackPolicy]:
    """Each model's watch after a promotion: on by default where promotion is automatic
    (no human looked), off where an approver decided, unless the models file says."""
    out: dict[str, RollbackPolicy] = {}
    models = cfg.models.items() if cfg else []
    for name, m in models:
        p = m.promotion
        auto = policies.get(name, settings.default_policy) == "auto"
        out[name] = RollbackPolicy(
            enabled=p.auto_rollback if p.auto_rollback is not None else auto,
            windows=p.rollback_windows or settings.rollback_windows,
            margin=p.rollback_margin if p.rollback_margin is not None else settings.rollback_margin,
            metric=HEADLINE_METRIC[m.task],
            min_coverage=settings.rollback_min_coverage,
        )
    for name, policy in policies.items():
        if name not in out:
            out[name] = RollbackPolicy(
                enabled=policy == "auto",
                windows=settings.rollback_windows,
                margin=settings.rollback_margin,
                min_coverage=settings.rollback_min_coverage,
            )
    return out


def create_app(common: CommonSettings, settings: PromoterSettings) -> FastAPI:
    registry = new_registry()
    metrics = PromoterMetrics(registry)
    book = TokenBook.load(settings.tokens_file, settings.tokens)
    ups = Upstreams(upstreams(settings), settings.upstream_timeout_s)
    redis = make_redis(common)
    router = make_router(common)

    async def publish(ev: PromotionEvent) -> None:
        await router.broker.publish(ev.to_bytes(), topic=topics.PROMOTIONS, key=ev.key)

    cfg = config_of(common)
    policies, two, approvers = gate_from(cfg, settings)
    leadership = Leadership(
        redis,
        "promoter",
        [SERVING_LEASE],
        ttl_s=common.lease_ttl_s,
        holder=instance_name(common.instance),
        gauge=metrics.leader,
    )
    promoter = Promoter(
        redis=redis,
        serving=ServingFleet(common.serving_grpc, config_file=settings.serving_config_file),
        config=PromoterConfig(
            serving_base=common.serving_base,
            policies=policies,
            default_policy=settings.default_policy,
            two_approvers=two,
            approvers=approvers,
            available_timeout_s=settings.available_timeout_s,
            smoke_examples=settings.smoke_examples,
            rollback=rollback_from(cfg, settings, policies),
        ),
        publish=publish,
        smoke=smoke_examples,
        metrics=metrics,
        lease=leadership.lease(SERVING_LEASE),
    )

    async def gained(_: str) -> None:
        await promoter.resume()

    async def lost(_: str) -> None:
        # A promotion under way stops; it stays "promoting" and the new leader resumes it.
        for task in list(promoter.tasks):
            task.cancel()

    leadership.on_gain, leadership.on_loss = gained, lost

    async def handle_candidate(body: bytes) -> None:
        await promoter.on_candidate(decode(ModelCandidate, body))

    candidates_in = Consumer(
        topics.CANDIDATES,
        metrics.consumer,
        event_dead_letters(router.broker, "promoter", settings.group_id),
    )

    async def handle_quality(body: bytes) -> None:
        await promoter.on_quality(decode(WindowScored, body))

    quality_in = Consumer(
        topics.QUALITY,
        metrics.consumer,
        event_dead_letters(router.broker, "promoter", settings.group_id),
    )

    epoch = BrokerEpoch(common)

    async def why_not_ready() -> str | None:
        # Serving unreachable is said as such (never as "no version behind the label").
        return await health(
            redis, router.broker, candidates_in.outage, quality_in.outage, epoch=epoch
        ) or (await promoter.health())

    ready = Readiness(registry, "promoter", why_not_ready)

    @one_event_at_a_time(router, topics.CANDIDATES, settings.group_id)
    async def on_candidate(msg: KafkaMessage) -> None:
        await candidates_in.consume(msg, handle_candidate)

    @one_event_at_a_time(router, topics.QUALITY, settings.group_id)
    async def on_quality(msg: KafkaMessage) -> None:
        await quality_in.consume(msg, handle_quality)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async def gauges() -> None:
            while True:
                try:
                    await promoter.refresh_gauges()
                except Exception:  # a scrape gap, not a crash
                    log.exception("refreshing promoter gauges failed")
                await asyncio.sleep(15)  # refresh period of the state gauges

        async with router.lifespan_context(app):
            await leadership.step()  # lead (and resume) before the first record if free
            leading = asyncio.create_task(leadership.run())
            sweeping = asyncio.create_task(every(1, promoter.sweep, "acting as the leader"))
            refresher = asyncio.create_task(gauges())
            readiness = asyncio.create_task(every(5, ready, "checking readiness"))
            yield
            refresher.cancel()
            readiness.cancel()
            sweeping.cancel()
            leading.cancel()
            await epoch.close()
            # A promotion waiting out an outage stops here; it stays "promoting" in Redis
            # and resume() finishes it at the next start.
            for task in list(promoter.tasks):
                task.cancel()
            await leadership.release()  # another replica leads at its next renewal
        await promoter.serving.close()
        await ups.close()

    app = service_app(
        "ctrain promoter — approval API",
        lifespan,
        description="Candidates, approvals, rollbacks and the audit trail. "
        "Authenticate with `Authorization: Bearer <token>`.",
    )
    app.include_router(router)
    service_routes(
        app, registry, ready, PromoterError, ok=lambda: {"leads": leadership.leads(SERVING_LEASE)}
    )

    def who(authorization: Annotated[str | None, Header()] = None) -> Identity:
        return book.identify(authorization)

    Who = Annotated[Identity, Depends(who)]

    @app.get("/v1/leaders", include_in_schema=False)
    async def leaders() -> JSONResponse:
        """Which replica leads (promotes, rolls back, writes serving's config)."""
        return JSONResponse({"this": leadership.holder, "leaders": await leadership.leaders()})

    @app.get("/v1/candidates")
    async def list_candidates(
        user: Who,
        state: Annotated[str | None, Query(max_length=40)] = None,
        model: Annotated[str | None, Query(max_length=200)] = None,
    ) -> dict[str, Any]:
        TokenBook.require(user, "viewer")
        recs = await promoter.store.find(model=model, state=state)
        return {"candidates": [r.to_public() for r in recs]}

    @app.get("/v1/candidates/{cid}")
    async def show_candidate(cid: str, user: Who) -> dict[str, Any]:
        TokenBook.require(user, "viewer")
        rec = await promoter._get(cid)
        c = rec.candidate
        base = c.baseline_metrics
        overall = {
            k: {"candidate": v, "baseline": (base.overall.get(k) if base else None)}
            for k, v in c.metrics.overall.items()
        }
        base_slices = {s.slice: s.metrics for s in (base.slices if base else [])}
        slices = [
            {
                "slice": s.slice,
                "metrics": {
                    k: {"candidate": v, "baseline": base_slices.get(s.slice, {}).get(k)}
                    for k, v in s.metrics.items()
                },
            }
            for s in c.metrics.slices
        ]
        return {
            **rec.to_public(),
            "metrics": {"overall": overall, "slices": slices},
            # Live data since its evaluation, beside the serving version (the monitor).
            "live": await promoter.quality.live(c.model, c.candidate_id),
            "trigger_reason": c.reason,
            "trigger_evidence": c.trigger_evidence,
            "lineage": {
                "windows": c.windows,
                "eval_window": c.eval_window,
                "eval_windows": c.eval_windows,
                "train_examples": c.train_examples,
                "eval_examples": c.eval_examples,
                # Labels from their own stream: labelled / defaulted / left out, per part
                # and per shard (None: labels travel inside the examples).
                "labels": c.labels,
                "run_id": c.run_id,
                "module_sha256": c.module_sha256,
                "model_uri": c.model_uri,
                "eval_uri": c.eval_uri,
            },
        }

    @app.post("/v1/candidates/{cid}/approve")
    async def approve(cid: str, body: Decision, user: Who) -> dict[str, Any]:
        return (await promoter.approve(cid, user, body.reason)).to_public()

    @app.post("/v1/candidates/{cid}/reject")
    async def reject(cid: str, body: Decision, user: Who) -> dict[str, Any]:
        return (await promoter.reject(cid, user, body.reason)).to_public()

    @app.post("/v1/models/{name}/rollback")
    async def rollback(name: str, body: Rollback, user: Who) -> dict[str, Any]:
        return await promoter.rollback(name, user, body.reason, body.version)

    @app.get("/v1/models/{name}")
    async def model(name: str, user: Who) -> dict[str, Any]:
        TokenBook.require(user, "viewer")
        return await promoter.model_view(name)

    @app.get("/v1/audit")
    async def audit(user: Who, count: Annotated[int, Query(ge=1, le=1000)] = 100) -> dict[str, Any]:
        TokenBook.require(user, "viewer")
        return {"entries": await promoter.store.audit_log(count)}

    add_console(app, book, ups)
    app.state.promoter = promoter
    app.state.upstreams = ups
    return app
