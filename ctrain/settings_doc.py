"""The docs' settings tables, written from the settings' one declaration.

Every variable of every service (name, type and constraint, default, description) is
declared once, on its settings class or, for the settings a models file may set per
model, in ``shared/model_fields.py``. The README's tables and docs/config.md's section
tables are generated from those declarations between ``<!-- settings:NAME -->`` and
``<!-- /settings:NAME -->`` markers: ``ctrain settings --write-docs`` rewrites them and
``tests/unit/test_doc_tables.py`` fails while a doc and the code disagree.
"""

from __future__ import annotations

import functools
import json
import re
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import annotated_types as at
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from services.ingest.settings import IngestSettings
from services.monitor.settings import MonitorSettings
from services.promoter.settings import PromoterSettings
from services.trigger.settings import TriggerSettings
from services.validator.settings import ValidatorSettings
from shared.config import SECTION_FIELDS, Labels, ModelSpec, Promotion
from shared.settings import CommonSettings

SERVICES: dict[str, type[BaseModel]] = {
    "ingest": IngestSettings,
    "validator": ValidatorSettings,
    "trigger": TriggerSettings,
    "promoter": PromoterSettings,
    "monitor": MonitorSettings,
}
ROOT = Path(__file__).resolve().parent.parent
_BLOCK = re.compile(r"(<!-- settings:([a-z_]+) -->\n)(.*?)(<!-- /settings:\2 -->)", re.DOTALL)


class DocsOutOfDate(Exception):
    """A doc's generated table differs from what the declarations give."""


def env_name(cls: type[BaseModel], name: str, prefix: str) -> str:
    alias = cls.model_fields[name].validation_alias
    return alias if isinstance(alias, str) else f"{prefix}{name.upper()}"


def _type(f: FieldInfo) -> str:
    ann = f.annotation
    args = [a for a in typing.get_args(ann) if a is not type(None)]
    if isinstance(ann, types.UnionType) or typing.get_origin(ann) is typing.Union:
        ann = args[0] if len(args) == 1 else ann
    origin = typing.get_origin(ann)
    if origin is Literal:
        text = " \\| ".join(f"`{a}`" for a in typing.get_args(ann))
    elif origin in (list, tuple, set, frozenset):
        text = "JSON list"
    elif origin is dict:
        text = "JSON object"
    elif origin is typing.Annotated:
        text = "JSON list" if typing.get_origin(typing.get_args(ann)[0]) is list else "value"
    else:
        text = getattr(ann, "__name__", str(ann))
    bounds = []
    for m in f.metadata:
        for cls, attr, sign in (
            (at.Ge, "ge", "≥"),
            (at.Gt, "gt", ">"),
            (at.Le, "le", "≤"),
            (at.Lt, "lt", "<"),
        ):
            if isinstance(m, cls):
                bounds.append(f"{sign} {_value(getattr(m, attr))}")
    return ", ".join([text, *bounds]) if len(bounds) > 1 else " ".join([text, *bounds])


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def _default(f: FieldInfo) -> str:
    v = f.get_default(call_default_factory=True)
    if v is None:
        return "—"
    if isinstance(v, (list, dict)):
        return f"`{json.dumps(v)}`"
    if v == "":
        return '`""`'
    return f"`{_value(v)}`"


def _cell(text: str) -> str:
    return " ".join((text or "").split()).replace("|", "\\|")


def settings_table(cls: type[BaseModel], prefix: str) -> str:
    """One row per variable: name, type and constraint, default, the models-file key
    that sets it per model, and its description."""
    rows = [
        "| variable | type | default | per model | meaning |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, f in cls.model_fields.items():
        section = next(
            (s for s, g in SECTION_FIELDS.items() if issubclass(cls, g) and name in g.model_fields),
            None,
        )
        per_model = f"`{section}.{name}`" if section else ""
        rows.append(
            f"| `{env_name(cls, name, prefix)}` | {_type(f)} | {_default(f)} | {per_model} "
            f"| {_cell(f.description or '')} |"
        )
    return "\n".join(rows) + "\n"


def _service_of(section: str) -> str:
    group = SECTION_FIELDS[section]
    return next(
        f"{s} (`CTRAIN_{s.upper()}_…`)" for s, c in SERVICES.items() if issubclass(c, group)
    )


def sections_table() -> str:
    """docs/config.md: each section of a model, the service that reads it, its keys."""
    rows = ["| section | read by | keys |", "| --- | --- | --- |"]
    for name, f in ModelSpec.model_fields.items():
        model = f.annotation
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            continue
        if name in SECTION_FIELDS:
            by = _service_of(name)
            if model is Promotion:
                by += "; its own keys in the table below"
        else:
            by = "the model's own keys (no environment variables): the table below"
        keys = ", ".join(f"`{k}`" for k in model.model_fields)
        rows.append(f"| `{name}` | {by} | {keys} |")
    return "\n".join(rows) + "\n"


def own_keys_table() -> str:
    """docs/config.md: the keys that are a model's own, with no service variable."""
    rows = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    own = {k for k in Promotion.model_fields if k not in SECTION_FIELDS["promotion"].model_fields}
    for section, cls, keys in (
        ("promotion", Promotion, [k for k in Promotion.model_fields if k in own]),
        ("labels", Labels, list(Labels.model_fields)),
    ):
        for k in keys:
            f = cls.model_fields[k]
            default = "—" if section == "promotion" else _default(f)
            rows.append(
                f"| `{section}.{k}` | {_type(f)} | {default} | {_cell(f.description or '')} |"
            )
    return "\n".join(rows) + "\n"


def blocks() -> dict[str, Callable[[], str]]:
    """Every generated block by its marker name."""
    out: dict[str, Callable[[], str]] = {
        "common": lambda: settings_table(CommonSettings, "CTRAIN_"),
        "sections": sections_table,
        "own_keys": own_keys_table,
    }
    for service, cls in SERVICES.items():
        out[service] = functools.partial(settings_table, cls, f"CTRAIN_{service.upper()}_")
    return out


def render(text: str) -> str:
    """``text`` with each marked block written anew; unknown marker names are an error."""
    known = blocks()

    def fill(m: re.Match[str]) -> str:
        if m.group(2) not in known:
            raise DocsOutOfDate(f"unknown settings block {m.group(2)!r}; known: {sorted(known)}")
        return m.group(1) + known[m.group(2)]() + m.group(4)

    return _BLOCK.sub(fill, text)


DOCS = ("README.md", "docs/config.md")


def sync(write: bool, root: Path | None = None) -> list[str]:
    """The docs whose tables differ from the declarations (rewritten when ``write``)."""
    stale = []
    for rel in DOCS:
        path = (root or ROOT) / rel
        text = path.read_text()
        new = render(text)
        if new != text:
            stale.append(rel)
            if write:
                path.write_text(new)
    return stale
