"""Settings shared by every service (docs/architecture.md §3).

Each service derives its own class with its own prefix (``CTRAIN_INGEST_``...)
and embeds :class:`CommonSettings`, so the shared names stay unprefixed by the
service and a misspelled service key fails at start-up.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class SettingsError(ValueError):
    """A configuration problem that must stop a service at start-up."""


# The command line's own variables, not settings of any service: exported in the shell
# that also runs a service, `ctrain dev up` or `replay`, they are not typos.
CLIENT_VARIABLES = frozenset(
    {
        "CTRAIN_TOKEN",
        "CTRAIN_DEBUG",
        "CTRAIN_INGEST_URL",
        "CTRAIN_VALIDATOR_URL",
        "CTRAIN_TRIGGER_URL",
        "CTRAIN_PROMOTER_URL",
        "CTRAIN_MONITOR_URL",
        # `ctrain console screenshots` (the browser binary) and the tests' artifact dir.
        "CTRAIN_CHROMIUM",
        "CTRAIN_TEST_ARTIFACTS",
        # The trigger's warm step worker, in the environment of its pipeline components.
        "CTRAIN_STEP_WORKER",
    }
)


def reject_unknown_env(prefix: str, known: set[str], env: dict[str, str] | None = None) -> None:
    """Fail on environment variables that carry ``prefix`` but name no field.

    pydantic-settings silently ignores unknown environment variables, even with
    ``extra="forbid"`` (that only guards constructor kwargs and dotenv files), so a
    typo such as ``CTRAIN_INGEST_WINDOW_SIZ`` would otherwise be a silent no-op.
    """
    env = dict(os.environ) if env is None else env
    wanted = {f"{prefix}{name}".upper() for name in known}
    unknown = sorted(
        k
        for k in env
        if k.upper().startswith(prefix.upper())
        and k.upper() not in wanted
        and k.upper() not in CLIENT_VARIABLES
    )
    if unknown:
        raise SettingsError(
            f"unknown setting(s) {', '.join(unknown)}; valid {prefix}* keys: "
            + ", ".join(sorted(wanted))
        )


class StrictSettings(BaseSettings):
    """Base: unknown keys are errors, both as kwargs and as prefixed env vars."""

    model_config = SettingsConfigDict(extra="forbid", env_prefix="CTRAIN_")
    # Prefixes that belong to other classes and so are not typos of this one.
    foreign_prefixes: ClassVar[tuple[str, ...]] = ()

    def __init__(self, **values: Any) -> None:
        prefix = str(self.model_config.get("env_prefix", ""))
        known = set()
        for name, field in type(self).model_fields.items():
            alias = field.validation_alias
            if isinstance(alias, str) and alias.upper().startswith(prefix.upper()):
                known.add(alias[len(prefix) :])
            else:
                known.add(name)
        env = {
            k: v
            for k, v in os.environ.items()
            if not any(k.upper().startswith(p) for p in type(self).foreign_prefixes)
        }
        reject_unknown_env(prefix, known, env)
        super().__init__(**values)


SERVICE_PREFIXES = (
    "CTRAIN_INGEST_",
    "CTRAIN_VALIDATOR_",
    "CTRAIN_TRIGGER_",
    "CTRAIN_PROMOTER_",
    "CTRAIN_MONITOR_",
    "CTRAIN_REPLAY_",
    "CTRAIN_DEV_",
    "CTRAIN_SERVING_SERVER_",
)


class CommonSettings(StrictSettings):
    """The ``CTRAIN_*`` names every service reads (docs/architecture.md §3)."""

    model_config = SettingsConfigDict(extra="forbid", env_prefix="CTRAIN_", populate_by_name=True)
    foreign_prefixes: ClassVar[tuple[str, ...]] = SERVICE_PREFIXES

    kafka_bootstrap: str = Field(
        default="127.0.0.1:9092",
        description="Kafka bootstrap servers, comma-separated host:port (`ctrain dev up` "
        "starts the embedded broker when unset).",
    )
    kafka_idempotent: bool = Field(
        default=True,
        description=(
            "Idempotent producers (enable_idempotence). The embedded Tansu broker "
            "rejects aiokafka's InitProducerId, so `ctrain dev up` turns this off; "
            "correctness rests on deterministic ids either way."
        ),
    )
    kafka_partitions: int = Field(
        default=3, ge=1, description="Partitions per topic when ctrain creates topics."
    )
    kafka_replication: int = Field(
        default=1, ge=1, description="Replication factor when ctrain creates topics."
    )
    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0",
        description="Redis URL for small, hot state (`ctrain dev up` starts `redis-server` "
        "when unset).",
    )
    artifact_root: str = Field(
        default="./artifacts",
        description="Root of the artifact store: a local path, or gs:// / s3:// via tf.io.gfile.",
    )
    config_path: str = Field(
        default="",
        validation_alias="CTRAIN_CONFIG",
        description="The models file (ctrain.yaml, docs/config.md): every model's stream, "
        "schema, module and policies. Empty: one model from the environment alone (`ctrain "
        "dev up` and the demo then use the bundled example's models file).",
    )
    schema_path: str = Field(
        default="",
        validation_alias="CTRAIN_SCHEMA",
        description="Without a models file only: path of the TFMD schema.pbtxt describing "
        "the one stream's example features.",
    )
    serving_base: str = Field(
        default="./serving", description="TF Serving model base path (integer version dirs)."
    )
    serving_grpc: str = Field(
        default="127.0.0.1:8500",
        description="TF Serving gRPC host:port; replicas: a comma-separated list, or "
        "dns:///name:port (a headless Service) resolved to each pod.",
    )
    serving_rest: str = Field(default="127.0.0.1:8501", description="TF Serving REST host:port.")
    log_level: str = Field(default="INFO", description="Log level of every ctrain process.")
    log_json: bool = Field(default=True, description="Log one JSON object per line.")
    instance: str = Field(
        default="",
        description="This replica's name among its service's replicas (the holder of the "
        "leases it takes). Empty: host:pid:random. A process restarted under the same "
        "name (a pod's container restarting) takes its leases back at once; never give "
        "two live processes one name.",
    )
    lease_ttl_s: float = Field(
        default=10.0,
        ge=1.0,
        description="How long a replica's leadership of a model (trigger, promoter, monitor) "
        "outlives its last renewal in Redis; renewed every fifth of it. After a leader "
        "is killed another replica leads within about this plus a fifth (docs/deploy.md).",
    )

    @property
    def schema_file(self) -> Path | None:
        return Path(self.schema_path) if self.schema_path else None
