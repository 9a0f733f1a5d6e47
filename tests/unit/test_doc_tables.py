"""The docs against the code: the settings tables are written from the settings'
declarations (ctrain/settings_doc.py) and fail here while they differ; the README's
Layout names every module; CI runs the README's test command."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from ctrain import settings_doc
from ctrain.cli import main
from ctrain.settings_doc import SERVICES
from shared.config import Labels, ModelSpec, Promotion
from shared.settings import CommonSettings
from tests.conftest import ROOT

pytestmark = pytest.mark.unit
README = (ROOT / "README.md").read_text()


def test_the_docs_settings_tables_are_the_declarations() -> None:
    """README's and docs/config.md's tables are what the settings classes declare."""
    stale = settings_doc.sync(write=False, root=ROOT)
    assert stale == [], f"{stale}: run `ctrain settings --write-docs`"


def test_a_table_that_disagrees_with_the_code_is_caught(tmp_path: Path) -> None:
    """A default, a name or a row changed by hand in a doc is found and written back."""
    for rel in settings_doc.DOCS:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text((ROOT / rel).read_text())
    readme = tmp_path / "README.md"
    good = readme.read_text()
    row = "| `CTRAIN_TRIGGER_COOLDOWN_S` | float ≥ 0 | `600` |"
    assert row in good
    readme.write_text(good.replace(row, "| `CTRAIN_TRIGGER_COOLDOWN_S` | float ≥ 0 | `60` |"))
    assert settings_doc.sync(write=False, root=tmp_path) == ["README.md"]
    assert settings_doc.sync(write=True, root=tmp_path) == ["README.md"]
    assert readme.read_text() == good


def test_the_command_checks_and_rewrites(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for rel in settings_doc.DOCS:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text((ROOT / rel).read_text())
    config = tmp_path / "docs" / "config.md"
    config.write_text(
        config.read_text().replace(
            "`labels.horizon_s` | float > 0 | `7776000`", "`labels.horizon_s` | float > 0 | `1`"
        )
    )
    monkeypatch.setattr(settings_doc, "ROOT", tmp_path)
    assert main(["settings", "--check-docs"]) == 1
    assert "ctrain settings --write-docs" in capsys.readouterr().err
    assert main(["settings", "--write-docs"]) == 0
    assert main(["settings", "--check-docs"]) == 0
    assert "`labels.horizon_s` | float > 0 | `7776000`" in config.read_text()


def test_an_unknown_block_name_is_an_error() -> None:
    with pytest.raises(settings_doc.DocsOutOfDate, match="unknown settings block 'ingset'"):
        settings_doc.render("<!-- settings:ingset -->\n<!-- /settings:ingset -->")


@pytest.mark.parametrize("cls", [CommonSettings, *SERVICES.values(), ModelSpec, Labels, Promotion])
def test_every_setting_says_what_it_is(cls: type[BaseModel]) -> None:
    undocumented = [n for n, f in cls.model_fields.items() if not (f.description or "").strip()]
    if cls is ModelSpec:  # its sections are documented by their own classes' docstrings
        undocumented = [
            n
            for n in undocumented
            if not isinstance(ModelSpec.model_fields[n].annotation, type)
            or not issubclass(ModelSpec.model_fields[n].annotation, BaseModel)  # type: ignore[arg-type]
        ]
    assert undocumented == []


def test_every_service_variable_has_a_row() -> None:
    for service, cls in SERVICES.items():
        table = settings_doc.settings_table(cls, f"CTRAIN_{service.upper()}_")
        for name in cls.model_fields:
            assert f"`{settings_doc.env_name(cls, name, f'CTRAIN_{service.upper()}_')}`" in table


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
