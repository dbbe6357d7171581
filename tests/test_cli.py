"""The command line, run in-process against a real SQLite database."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from loyalty.cli import app
from tests.conftest import REPO_ROOT

runner = CliRunner()


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project folder with the shipped config and its own SQLite database."""
    shutil.copytree(REPO_ROOT / "config", tmp_path / "config")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LOYALFLOW_DATABASE_URL", raising=False)
    monkeypatch.delenv("LOYALFLOW_CONFIG_DIR", raising=False)
    monkeypatch.setenv("LOYALFLOW_CONFIG_FILE", str(tmp_path / "config" / "loyalflow.toml"))
    monkeypatch.setenv("COLUMNS", "200")
    return tmp_path


def test_db_upgrade_creates_the_database_and_syncs_the_catalogue(workdir: Path) -> None:
    result = runner.invoke(app, ["db", "upgrade"])
    assert result.exit_code == 0, result.output
    assert "4 tiers and 6 offers synced" in result.output
    assert (workdir / "var" / "loyalflow.db").exists()
    assert runner.invoke(app, ["db", "current"]).output.strip() == "0001"


def test_maintenance_commands_run_on_an_empty_programme(workdir: Path) -> None:
    runner.invoke(app, ["db", "upgrade"])
    expired = runner.invoke(app, ["points", "expire", "--as-of", "2026-01-01T00:00:00"])
    assert expired.exit_code == 0, expired.output
    assert "expired 0 points from 0 members" in expired.output
    evaluated = runner.invoke(app, ["tiers", "evaluate"])
    assert "0 upgrades and 0 downgrades" in evaluated.output


def test_unknown_member_exits_non_zero_with_a_clear_message(workdir: Path) -> None:
    runner.invoke(app, ["db", "upgrade"])
    result = runner.invoke(app, ["members", "show", "NOPE"])
    assert result.exit_code == 1
    assert "no member with external id or id 'NOPE'" in result.output


def test_a_broken_config_file_exits_2_naming_it(workdir: Path) -> None:
    (workdir / "config" / "tiers.yaml").write_text("tiers: []\n")
    result = runner.invoke(app, ["db", "upgrade"])
    assert result.exit_code == 2
    assert "tiers.yaml" in result.output and "tiers" in result.output
