"""The docs' settings tables against the code that declares the settings: a setting
added, renamed or removed without its doc fails here (README "Configuration",
docs/config.md "Sections")."""

from __future__ import annotations

import re

import pytest
from pydantic import BaseModel
from pydantic_settings import BaseSettings

from services.ingest.settings import IngestSettings
from services.monitor.settings import MonitorSettings
from services.promoter.settings import PromoterSettings
from services.trigger.settings import TriggerSettings
from services.validator.settings import ValidatorSettings
from shared.config import ModelSpec
from shared.settings import CommonSettings
from tests.conftest import ROOT

pytestmark = pytest.mark.unit
README = (ROOT / "README.md").read_text()
SERVICES: dict[str, type[BaseSettings]] = {
    "ingest": IngestSettings,
    "validator": ValidatorSettings,
    "trigger": TriggerSettings,
    "promoter": PromoterSettings,
    "monitor": MonitorSettings,
}


def _env_names(cls: type[BaseSettings], prefix: str) -> set[str]:
    out = set()
    for name, f in cls.model_fields.items():
        alias = f.validation_alias if isinstance(f.validation_alias, str) else None
        out.add(alias or f"{prefix}{name.upper()}")
    return out


def _section(start: str, end: str) -> str:
    i = README.index(start)
    return README[i : README.index(end, i + len(start))]


def test_the_readme_names_every_shared_variable_and_no_other() -> None:
    table = _section("Shared by every service", "Per-service variables follow")
    named = set(re.findall(r"`(CTRAIN_[A-Z_]+)`", table))
    assert named == _env_names(CommonSettings, "CTRAIN_")


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_the_readme_names_every_variable_of_each_service(service: str) -> None:
    order = list(SERVICES)
    start = f"{service} (`CTRAIN_{service.upper()}_…`)"
    nxt = order[order.index(service) + 1] if service != order[-1] else None
    end = f"{nxt} (`CTRAIN_{nxt.upper()}_…`)" if nxt else "A misspelled key"
    named = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", _section(start, end)))
    fields = {
        n.removeprefix(f"CTRAIN_{service.upper()}_") for n in _env_names(SERVICES[service], "")
    }
    fields = {f.upper() for f in fields}
    missing = fields - named
    assert missing == set(), f"README's {service} section does not name {sorted(missing)}"
    # Anything else it names in capitals is a setting of a service (the monitor's part
    # names the trigger's quality policy) or a value.
    every = {f.upper() for cls in SERVICES.values() for f in cls.model_fields}
    assert {n for n in named - every if "_" in n} == set()


def test_the_models_file_sections_table_lists_every_key() -> None:
    text = (ROOT / "docs" / "config.md").read_text()
    rows = {
        m.group(1): m.group(2)
        for m in re.finditer(r"^\| `([a-z_]+)` \| [^|]+ \| (.+) \|$", text, re.MULTILINE)
    }
    sections = {
        name: f.annotation
        for name, f in ModelSpec.model_fields.items()
        if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel)
    }
    assert set(sections) <= set(rows), sorted(set(sections) - set(rows))
    for name, model in sections.items():
        listed = set(re.findall(r"`([a-z_]+)`", rows[name]))
        keys = set(model.model_fields)
        assert keys - listed == set(), f"docs/config.md's {name} row lacks {sorted(keys - listed)}"
        values = {"auto", "manual", "inline", "stream"}
        assert listed - keys - values == set(), f"{name}: {sorted(listed - keys - values)}"


def test_the_readme_layout_names_every_module() -> None:
    """Each module of shared/, ctrain/ and every service is named on its Layout line."""
    layout = README[README.index("## Layout") :]
    lines = {line.split()[0]: line for line in layout.splitlines() if line[:1].isalpha()}
    every_service = set(re.findall(r"\b([a-z_]+)\b", lines["services/*/"]))
    for pkg in ("shared", "ctrain", "ctrain/commands", *(f"services/{s}" for s in SERVICES)):
        line = lines[f"{pkg}/"]
        named = set(re.findall(r"\b([a-z_]+)\b", line))
        if pkg.startswith("services/"):
            named |= every_service
        modules = {p.stem for p in (ROOT / pkg).glob("*.py") if not p.stem.startswith("__")}
        assert modules - named == set(), (
            f"README's Layout line for {pkg}/ lacks {sorted(modules - named)}"
        )


def test_ci_runs_the_readme_test_command_exactly() -> None:
    commands = re.findall(r"```bash\n(.+?)\n```", README)
    test_command = next(c for c in commands if c.endswith("pytest -q"))
    assert "pip install -q uv" in test_command and test_command.startswith("python3 -m venv ")
    assert test_command in (ROOT / ".ci" / "run").read_text()
