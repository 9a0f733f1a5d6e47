"""Shared helpers of the deployment checks: paths, the services' settings, parsers."""

from __future__ import annotations

import importlib
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic_core import PydanticUndefined

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
ENV_EXAMPLE = ROOT / ".env.example"
RULES = DEPLOY / "prometheus" / "rules.yml"
DASHBOARDS = DEPLOY / "grafana" / "dashboards"
K8S = DEPLOY / "k8s"
OVERLAYS = ("dev", "prod")

# name -> default HTTP port (the settings classes' defaults; checked below)
SERVICES = {"ingest": 8081, "validator": 8082, "trigger": 8083, "promoter": 8084, "monitor": 8085}
# The topic each scalable consumer reads (its HPA must not outgrow the partitions).
# The trigger, promoter and monitor run one replica each: no HPA.
CONSUMES = {"ingest": "ctrain.examples", "validator": "ctrain.windows"}

# Settings that must be set explicitly in a container, beyond those without a default:
# a default that only makes sense on a developer's machine (127.0.0.1, ./artifacts).
REQUIRED_COMMON = {
    "CTRAIN_KAFKA_BOOTSTRAP",
    "CTRAIN_REDIS_URL",
    "CTRAIN_ARTIFACT_ROOT",
    "CTRAIN_CONFIG",
    "CTRAIN_SERVING_BASE",
    "CTRAIN_SERVING_GRPC",
}
REQUIRED = {
    "ingest": {"CTRAIN_INGEST_HTTP_HOST", "CTRAIN_INGEST_HTTP_PORT"},
    "validator": {"CTRAIN_VALIDATOR_HTTP_HOST", "CTRAIN_VALIDATOR_HTTP_PORT"},
    "trigger": {"CTRAIN_TRIGGER_HTTP_HOST", "CTRAIN_TRIGGER_HTTP_PORT", "CTRAIN_TRIGGER_BACKEND"},
    "promoter": {
        "CTRAIN_PROMOTER_HTTP_HOST",
        "CTRAIN_PROMOTER_HTTP_PORT",
        "CTRAIN_PROMOTER_TOKENS_FILE",
    },
    "monitor": {"CTRAIN_MONITOR_HTTP_HOST", "CTRAIN_MONITOR_HTTP_PORT"},
}

# Metrics the rules and dashboards use that the services do not export yet
# (docs/deploy.md, "Metrics the services must add"): name -> (type, labels).
PENDING_METRICS = {
    "ctrain_validator_feature_crossed_streak": ("gauge", ("feature", "measure", "baseline")),
    "ctrain_promoter_candidates": ("gauge", ("model", "state")),
    "ctrain_promoter_pending_approval_oldest_timestamp_seconds": ("gauge", ("model",)),
    "ctrain_promoter_approval_wait_seconds": ("histogram", ("model",)),
    "ctrain_promoter_serving_version": ("gauge", ("model", "label")),
    "ctrain_promoter_serving_observed_version": ("gauge", ("model", "label")),
}
# TF Serving's own metric names (tensorflow/serving's Prometheus exporter).
TF_SERVING_METRICS = {
    ":tensorflow:serving:request_count",
    ":tensorflow:serving:request_latency_bucket",
    ":tensorflow:serving:request_latency_sum",
    ":tensorflow:serving:request_latency_count",
}


def settings_classes(service: str) -> tuple[type, type]:
    from shared.settings import CommonSettings

    mod = importlib.import_module(f"services.{service}.settings")
    cls = next(
        v
        for k, v in vars(mod).items()
        if k.endswith("Settings") and isinstance(v, type) and v.__module__ == mod.__name__
    )
    return CommonSettings, cls


def env_names(cls: type) -> dict[str, Any]:
    """Environment variable name -> field info, as pydantic-settings reads them."""
    prefix = str(cls.model_config.get("env_prefix", ""))  # type: ignore[attr-defined]
    out = {}
    for name, f in cls.model_fields.items():  # type: ignore[attr-defined]
        alias = f.validation_alias
        out[(alias if isinstance(alias, str) else prefix + name).upper()] = f
    return out


def known_env(service: str) -> set[str]:
    common, own = settings_classes(service)
    return set(env_names(common)) | set(env_names(own))


def required_env(service: str) -> set[str]:
    req = set(REQUIRED_COMMON) | REQUIRED[service]
    for cls in settings_classes(service):
        req |= {k for k, f in env_names(cls).items() if f.default is PydanticUndefined}
    return req


@contextmanager
def environ(env: dict[str, str]) -> Iterator[None]:
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update({k: v for k, v in saved.items() if not k.startswith("CTRAIN_")})
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def load_settings(service: str, env: dict[str, str]) -> tuple[Any, Any]:
    """What the service would load at start-up with exactly ``env`` (raises if invalid)."""
    mod = importlib.import_module(f"services.{service}.settings")
    with environ(env):
        return mod.load_settings()


# ---------------------------------------------------------------- compose
def dotenv(path: Path = ENV_EXAMPLE) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            k, _, v = line.partition("=")
            out[k.strip()] = v.strip()
    return out


_INTERP = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}")


def interpolate(value: Any, env: dict[str, str]) -> Any:
    if isinstance(value, str):
        return _INTERP.sub(lambda m: env.get(m.group(1), m.group(2) or ""), value)
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    return value


def compose_vars(text: str) -> set[str]:
    return {m.group(1) for m in _INTERP.finditer(text)}


def compose(resolved: bool = True) -> dict[str, Any]:
    raw = yaml.safe_load(COMPOSE.read_text())
    return interpolate(raw, dotenv()) if resolved else raw


def compose_env(svc: dict[str, Any]) -> dict[str, str]:
    env = svc.get("environment", {})
    if isinstance(env, list):
        env = dict(e.split("=", 1) for e in env)
    return {
        k: "" if v is None else str(v).lower() if isinstance(v, bool) else str(v)
        for k, v in env.items()
    }


# ---------------------------------------------------------------- Dockerfile
@dataclass
class Stage:
    base: str
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, op: str) -> list[str]:
        return [a for o, a in self.instructions if o == op]

    def last(self, op: str) -> str | None:
        found = self.all(op)
        return found[-1] if found else None

    def json(self, op: str) -> list[str] | None:
        a = self.last(op)
        return None if a is None else json.loads(a)

    def env(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for a in self.all("ENV"):
            for m in re.finditer(r'([A-Za-z_][A-Za-z0-9_]*)=("[^"]*"|\S+)', a):
                out[m.group(1)] = m.group(2).strip('"')
        return out


def dockerfile_stages(path: Path = DOCKERFILE) -> dict[str, Stage]:
    text = re.sub(r"\\\n", " ", path.read_text())
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        op, _, arg = line.partition(" ")
        op = op.upper()
        if op == "FROM":
            m = re.match(r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", arg, re.I)
            assert m, line
            current = Stage(m.group(1), m.group(2) or f"stage{len(stages)}")
            stages[current.name] = current
        elif current is not None:
            current.instructions.append((op, " ".join(arg.split())))
    return stages


def stage_chain(stages: dict[str, Stage], name: str) -> list[Stage]:
    """The stage and its ancestors (FROM another stage), nearest first."""
    chain = []
    while name in stages:
        chain.append(stages[name])
        name = stages[name].base
    return chain
