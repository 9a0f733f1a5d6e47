"""Models as configuration: one file declares every model a deployment runs.

Each model names its stream (and the Kafka topic its examples arrive on), its
schema and model module, the task type, and the settings of each service that
differ from the service's defaults. Every service reads the same file (path
from ``CTRAIN_CONFIG``), keeps what concerns it, and keeps its state per model.

A section's keys are the service's own setting names without the prefix
(``trigger.cooldown_s`` is ``CTRAIN_TRIGGER_COOLDOWN_S``). An environment
variable still wins over the file, but only where the file declares one model:
with several, an environment variable may only set what the file leaves unset
(a default for all of them), since overriding one model's choice globally would
silently retune the others.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeAlias, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator
from pydantic.fields import FieldInfo

from shared import topics
from shared.model_fields import (
    PolicyFields,
    QualityFields,
    RollbackFields,
    ValidationFields,
    WindowFields,
)
from shared.settings import CommonSettings, SettingsError, StrictSettings
from shared.tasks import Task

_NAME = r"^[a-z0-9][a-z0-9_-]{0,62}$"


class _Section(BaseModel):
    # Every key defaults to None: "not set here, the service's default applies".
    model_config = ConfigDict(extra="forbid")

    def given(self) -> dict[str, Any]:
        return {k: v for k, v in self.model_dump().items() if v is not None}

    if TYPE_CHECKING:  # a derived section's keys are its fields class's (shared/model_fields.py)

        def __getattr__(self, name: str) -> Any: ...


def section_of(fields: type[BaseModel], name: str, doc: str | None) -> type[_Section]:
    """A models-file section derived from the settings it sets: the same keys, types,
    constraints and descriptions, each optional (None: the service's own value applies)."""
    keys: dict[str, Any] = {
        key: (f.rebuild_annotation() | None, FieldInfo.merge_field_infos(f, default=None))
        for key, f in fields.model_fields.items()
    }
    return create_model(name, __base__=_Section, __doc__=doc, **keys)


# Each section a service's per-model settings fill, by its key in a model's entry.
SECTION_FIELDS: dict[str, type[BaseModel]] = {
    "windows": WindowFields,
    "validation": ValidationFields,
    "trigger": PolicyFields,
    "promotion": RollbackFields,
    "quality": QualityFields,
}

if TYPE_CHECKING:
    Windows: TypeAlias = _Section
    Validation: TypeAlias = _Section
    TriggerPolicy: TypeAlias = _Section
    Quality: TypeAlias = _Section
    Rollback: TypeAlias = _Section
else:
    Windows = section_of(WindowFields, "Windows", WindowFields.__doc__)
    Validation = section_of(ValidationFields, "Validation", ValidationFields.__doc__)
    TriggerPolicy = section_of(PolicyFields, "TriggerPolicy", PolicyFields.__doc__)
    Quality = section_of(QualityFields, "Quality", QualityFields.__doc__)
    Rollback = section_of(RollbackFields, "Rollback", RollbackFields.__doc__)


class Promotion(Rollback):
    """How a blessed candidate reaches serving (promoter): the model's own gate keys and
    the promoter's rollback settings (``CTRAIN_PROMOTER_ROLLBACK_*``)."""

    policy: Literal["auto", "manual"] | None = Field(
        default=None,
        description="auto: promote when blessed; manual: wait for an approver (absent: the "
        "promoter's POLICIES, else its DEFAULT_POLICY).",
    )
    two_approvers: bool | None = Field(
        default=None, description="Two distinct approvers must approve."
    )
    approvers: list[str] | None = Field(
        default=None,
        description="Identities allowed to approve this model (empty or absent: any approver).",
    )
    auto_rollback: bool | None = Field(
        default=None,
        description="Roll a promotion back by itself when live quality says the new version is "
        "worse (absent: on for policy auto, off for manual).",
    )


class Labels(BaseModel):
    """How the model's labels reach it (docs/models.md, "Labels"). Unlike the other
    sections these keys are the model's own: no service has an environment variable
    for them."""

    model_config = ConfigDict(extra="forbid")

    source: Literal["inline", "stream"] = Field(
        default="inline",
        description="inline: every example carries its label features (ingest rejects one "
        "without); stream: examples arrive without them and labels are joined from "
        "ctrain.labels.",
    )
    id_field: str = Field(
        default="",
        description="A feature of the example holding a business id that label records name "
        "(empty: only the `<topic>:<partition>:<offset>` id).",
    )
    label_maturity_s: float = Field(
        default=0.0,
        ge=0,
        description="A window's labels are complete enough to use once its end is this old "
        "in event time (the newest example or label seen).",
    )
    label_default: dict[str, float | int | str] | None = Field(
        default=None,
        description="Label features given to examples still unlabelled at maturity (e.g. "
        "{is_fraud: 0}); absent: such examples are left out and counted.",
    )
    horizon_s: float = Field(
        default=90 * 86_400.0,
        gt=0,
        description="A label whose event time is more than this after its example's window "
        "end is dead-lettered (late_label).",
    )
    early_tolerance_s: float = Field(
        default=86_400.0,
        ge=0,
        description="A label may arrive before its example: it is held until windows this "
        "much newer than the label have been judged, then dead-lettered (unknown_example).",
    )


class ModelSpec(BaseModel):
    """One model: its data, its code, and how each service treats it."""

    model_config = ConfigDict(extra="forbid")

    stream: str = Field(pattern=_NAME, description="Logical stream of the model's examples.")
    topic: str = Field(
        default="",
        description="Kafka topic the stream's examples arrive on, one stream per topic "
        "(empty: ctrain.examples.<stream>).",
    )
    schema_path: str = Field(
        alias="schema", description="schema.pbtxt of the stream (relative: to this file)."
    )
    module: str = Field(description="Model module file (relative: to this file).")
    task: Task = Field(default="binary", description="binary, multiclass or regression.")
    windows: Windows = Field(default_factory=Windows)
    validation: Validation = Field(default_factory=Validation)
    trigger: TriggerPolicy = Field(default_factory=TriggerPolicy)
    promotion: Promotion = Field(default_factory=Promotion)
    quality: Quality = Field(default_factory=Quality)
    labels: Labels = Field(default_factory=Labels)


class CtrainConfig(BaseModel):
    """The whole file."""

    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = Field(default=1, description="Format version of this file.")
    models: dict[str, ModelSpec] = Field(min_length=1, description="Models by name.")

    @field_validator("models")
    @classmethod
    def _one_model_per_stream(cls, models: dict[str, ModelSpec]) -> dict[str, ModelSpec]:
        import re

        for name in models:
            if not re.match(_NAME, name):
                raise ValueError(
                    f"model name {name!r}: use lower-case letters, digits, '-' and '_' "
                    "(it names directories, Redis keys and TF Serving models)"
                )
        for m in models.values():
            m.topic = m.topic or topics.stream_topic(m.stream)
        seen_stream: dict[str, str] = {}
        seen_topic: dict[str, str] = {}
        for name, m in models.items():
            if m.stream in seen_stream:
                raise ValueError(
                    f"models {seen_stream[m.stream]!r} and {name!r} both read stream "
                    f"{m.stream!r}: one model per stream (skew is measured against the "
                    "stream's model); give the second model its own stream"
                )
            if m.topic in topics.ALL and m.topic != topics.EXAMPLES:
                raise ValueError(f"model {name!r}: topic {m.topic!r} is one of ctrain's own")
            if m.topic in seen_topic:
                raise ValueError(
                    f"streams {seen_topic[m.topic]!r} and {m.stream!r} both read topic "
                    f"{m.topic!r}: a stream's examples arrive on a topic of their own"
                )
            seen_stream[m.stream] = name
            seen_topic[m.topic] = m.stream
        return models

    # ------------------------------------------------------------ look-ups
    def model_of_stream(self, stream: str) -> str | None:
        return next((n for n, m in self.models.items() if m.stream == stream), None)

    def only(self) -> str | None:
        """The model's name when the file declares exactly one."""
        return next(iter(self.models)) if len(self.models) == 1 else None


def _explain(e: ValidationError, path: str) -> str:
    lines = []
    for err in e.errors():
        where = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            lines.append(f"  {where}: unknown key; valid keys here: {_valid_keys(err['loc'])}")
        else:
            lines.append(f"  {where}: {err['msg']}")
    return f"{path} is not a valid ctrain configuration:\n" + "\n".join(lines)


def _valid_keys(loc: tuple[Any, ...]) -> str:
    model: type[BaseModel] = CtrainConfig
    parts = list(loc[:-1])
    if parts[:1] == ["models"]:
        model = ModelSpec
        parts = parts[2:]
    for p in parts:
        field = model.model_fields.get(str(p))
        ann = field.annotation if field else None
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
    names = [f.alias or n for n, f in model.model_fields.items()]
    return ", ".join(sorted(names))


def parse_config(text: str, base_dir: Path, source: str = "<config>") -> CtrainConfig:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise SettingsError(f"{source} is not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise SettingsError(f"{source}: expected a mapping with a 'models' key")
    try:
        cfg = CtrainConfig.model_validate(raw)
    except ValidationError as e:
        raise SettingsError(_explain(e, source)) from e
    for m in cfg.models.values():
        m.schema_path = str((base_dir / m.schema_path).resolve())
        m.module = str((base_dir / m.module).resolve())
    return cfg


def load_config(path: str | Path) -> CtrainConfig:
    """Read and check the file; relative paths in it are relative to the file."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise SettingsError(f"cannot read the ctrain configuration {p}: {e.strerror}") from e
    cfg = parse_config(text, p.resolve().parent, str(p))
    for name, m in cfg.models.items():
        for what, f in (("schema", m.schema_path), ("module", m.module)):
            if not Path(f).is_file():
                raise SettingsError(f"{p}: model {name!r}: {what} file {f} does not exist")
    return cfg


S = TypeVar("S", bound=StrictSettings)


def apply(
    settings: S, section: Mapping[str, Any], *, models: int, env_prefix: str | None = None
) -> S:
    """``settings`` with the file's values, except where an environment variable set one.

    ``settings`` came from the environment; its explicitly set fields win over the
    file only when the file declares one model (see the module docstring).
    """
    from_env = settings.model_fields_set
    clash = sorted(k for k in section if k in from_env)
    if clash and models > 1:
        prefix = env_prefix or str(settings.model_config.get("env_prefix", ""))
        names = ", ".join(f"{prefix}{k.upper()}" for k in clash)
        raise SettingsError(
            f"{names} set in the environment, but the configuration declares {models} models "
            "and sets it for them: set it per model in the file"
        )
    update = {k: v for k, v in section.items() if k not in from_env}
    if not update:
        return settings
    merged = {**settings.model_dump(), **update}
    try:
        return type(settings).model_validate(merged)
    except ValidationError as e:
        raise SettingsError(f"configuration values rejected: {e}") from e


def config_of(common: CommonSettings) -> CtrainConfig | None:
    """The models file named by ``CTRAIN_CONFIG``, or None when there is none."""
    return load_config(common.config_path) if common.config_path else None


def model_settings(
    cfg: CtrainConfig, settings: S, section: Callable[[ModelSpec], Mapping[str, Any]]
) -> dict[str, S]:
    """Each model's effective ``settings``: the service's, with that model's section applied."""
    n = len(cfg.models)
    return {name: apply(settings, section(m), models=n) for name, m in cfg.models.items()}


def pick_model(cfg: CtrainConfig | None, asked: str | None) -> str:
    """The model a command means: the one asked for, or the file's only model."""
    if asked:
        if cfg is not None and asked not in cfg.models:
            raise SettingsError(
                f"no model {asked!r} in the configuration; models: {', '.join(sorted(cfg.models))}"
            )
        return asked
    if cfg is None:
        raise SettingsError("name the model (--model NAME) or set CTRAIN_CONFIG to a models file")
    only = cfg.only()
    if only is None:
        raise SettingsError(
            f"the configuration declares {len(cfg.models)} models "
            f"({', '.join(sorted(cfg.models))}): name one with --model"
        )
    return only
