"""Each model's serving layout and the one config every model server replica is given.

A layout is what serving should hold for one model: the versions loaded, the labels
(``stable``, ``previous``) and which candidate each version came from. The layouts live
in Redis (written fenced by the leading replica); the config submitted to TF Serving is
built from all of them at once, since a config that leaves a model out unloads it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from redis.asyncio import Redis

from services.promoter.serving import ModelLayout, ServingClient, ServingFleet
from shared.lease import Lease

log = logging.getLogger(__name__)
LAYOUTS = "ctrain:promoter:layouts"


class Layouts:
    def __init__(
        self,
        redis: Redis,
        serving: ServingClient | ServingFleet,
        serving_base: str,
        lease: Lease | None,
        leads: Callable[[], bool],
    ) -> None:
        self.redis = redis
        self.serving = serving
        self.serving_base = serving_base
        self.lease = lease
        self.leads = leads
        # What this process last submitted to serving per model, and one submit at a time.
        self._applied: dict[str, dict[str, Any]] = {}
        self._lock = asyncio.Lock()

    async def all(self) -> dict[str, dict[str, Any]]:
        raw: Any = await self.redis.hgetall(LAYOUTS)
        return {k.decode(): orjson.loads(v) for k, v in raw.items()}

    async def save(self, model: str, layout: dict[str, Any]) -> None:
        if self.lease is not None:
            await self.lease.hset(LAYOUTS, model, orjson.dumps(layout))  # fenced
        else:
            await self.redis.hset(LAYOUTS, model, orjson.dumps(layout))

    def base(self, model: str) -> str:
        return str(Path(self.serving_base) / model)

    async def _config(self, extra: dict[str, dict[str, Any]]) -> list[ModelLayout]:
        all_layouts = {**(await self.all()), **self._applied, **extra}
        return [
            ModelLayout(
                m,
                self.base(m),
                tuple(int(v) for v in lay["versions"]),
                {k: int(v) for k, v in lay["labels"].items()},
            )
            for m, lay in sorted(all_layouts.items())
            if lay["versions"]
        ]

    async def apply(self, model: str, layout: dict[str, Any]) -> None:
        """Submit the full config: every model, or the ones left out would unload.

        One config at a time, built from what this process last applied for each model
        (a promotion's "loading" layout is applied but not yet saved): two models promoted
        at once otherwise each submitted a config without the other's new version, and
        serving unloaded it before its label could move (seen with three models)."""
        async with self._lock:
            config = await self._config({model: layout})
            if self.lease is not None:
                # Serving cannot check a token: the last look is here, and the layout a
                # deposed leader may still write is the one the fenced record holds.
                await self.lease.check()
            await self.serving.reload(config)
            self._applied[model] = layout

    async def reconcile(self) -> list[str]:
        """Bring every model server replica whose labels differ from the layouts (one that
        restarted with an older config, or joined later) to them; returns those replicas."""
        if not isinstance(self.serving, ServingFleet) or not self.leads():
            return []
        fixed: list[str] = []
        async with self._lock:
            layouts = {**(await self.all()), **self._applied}
            models = await self._config({})
            for m, lay in layouts.items():
                labels = {k: int(v) for k, v in lay["labels"].items()}
                for address in await self.serving.behind(m, labels):
                    if address not in fixed:
                        if self.lease is not None:
                            await self.lease.check()
                        await self.serving.catch_up(address, models)
                        fixed.append(address)
        for address in fixed:
            log.warning(
                "serving replica behind the layout: config applied", extra={"replica": address}
            )
        return fixed

    def next_version(self, model: str, prior: dict[str, Any]) -> int:
        base = Path(self.base(model))
        on_disk = [int(p.name) for p in base.iterdir() if p.name.isdigit()] if base.is_dir() else []
        return max([0, *on_disk, *(int(v) for v in prior["versions"])]) + 1

    def copy(self, src: str, model: str, version: int) -> None:
        """Copy the SavedModel beside the final place, then rename: TF Serving loads a
        version directory as soon as it appears, so it must appear whole."""
        dest = Path(self.base(model)) / str(version)
        if dest.exists():
            return  # a resumed promotion: the rename already happened
        tmp = dest.parent / f".{version}.{os.getpid()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src, tmp)
        os.replace(tmp, dest)
