"""The command line, run in-process against a real SQLite database."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory
from typer.testing import CliRunner

from loyalty.cli import app
from loyalty.db import MIGRATIONS_DIR, create_db_engine, session_scope
from tests.conftest import REPO_ROOT
from tests.factories import add_contactable_member, queue

runner = CliRunner()


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project folder with the shipped config and its own SQLite database (the shipped templates)."""
    shutil.copytree(REPO_ROOT / "config", tmp_path / "config")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LOYALFLOW_DATABASE_URL", raising=False)
    monkeypatch.delenv("LOYALFLOW_CONFIG_DIR", raising=False)
    monkeypatch.setenv("LOYALFLOW_CONFIG_FILE", str(tmp_path / "config" / "loyalflow.toml"))
    monkeypatch.setenv("LOYALFLOW_TEMPLATES_DIR", str(REPO_ROOT / "templates"))
    monkeypatch.setenv("COLUMNS", "200")
    return tmp_path


def test_db_upgrade_creates_the_database_and_syncs_the_catalogue(workdir: Path) -> None:
    result = runner.invoke(app, ["db", "upgrade"])
    assert result.exit_code == 0, result.output
    assert "4 tiers and 6 offers synced" in result.output
    assert (workdir / "var" / "loyalflow.db").exists()
    head = ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head()
    assert runner.invoke(app, ["db", "current"]).output.strip() == head


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


def test_import_reports_counts_and_the_rejects_file(workdir: Path) -> None:
    runner.invoke(app, ["db", "upgrade"])
    source = workdir / "members.csv"
    source.write_text("external_id,first_name,email,phone,locale\n"
                      "A1,Ana,ana@example.com,(514) 555-0134,fr_CA\n"
                      "A2,Bob,not-an-email,,en_CA\n")
    result = runner.invoke(app, ["import", "members", str(source)])
    assert result.exit_code == 0, result.output
    assert "1 rejected rows" in result.output
    rejects = (workdir / "members.csv.rejects.csv").read_text()
    assert "3," in rejects and "email" in rejects
    shown = runner.invoke(app, ["members", "show", "A1"])
    assert "+15145550134" in shown.output and "ana@example.com" in shown.output


def test_import_of_a_file_with_unknown_columns_fails_clearly(workdir: Path) -> None:
    runner.invoke(app, ["db", "upgrade"])
    source = workdir / "members.csv"
    source.write_text("external_id,shoe_size\nA1,42\n")
    result = runner.invoke(app, ["import", "members", str(source)])
    assert result.exit_code == 1
    assert "shoe_size" in result.output


@pytest.mark.usefixtures("prefect_api")
def test_demo_runs_the_whole_product_and_summarises(workdir: Path) -> None:
    env = {"LOYALFLOW_POLICY__QUIET_HOURS_START": "00:00", "LOYALFLOW_POLICY__QUIET_HOURS_END": "00:00"}
    result = runner.invoke(app, ["demo", "--members", "300"], env=env)
    assert result.exit_code == 0, result.output
    summary = (workdir / "var" / "demo" / "summary.md").read_text(encoding="utf-8")
    assert "## Campaign win_back" in summary and "| tier | member -> silver |" in summary
    assert "| tier-upgrade messages sent | 1 |" in summary and "uplift-" in summary
    emails = len(list((workdir / "var" / "sandbox" / "email").glob("*.eml")))
    assert emails > 1 and f"| emails (.eml) | var/sandbox/email | {emails} |" in summary
    # Measured: the seeded campaign's window is closed (figures final), the demo's own run has just started.
    assert "## Measurement" in summary and "## Reports" in summary and "loyalflow serve -> " in summary
    reports = Path("var") / "reports"  # relative to the project folder, like every path of the summary
    [seeded] = reports.glob("campaign-spring_reactivation-run-*.html")
    [own] = reports.glob("campaign-win_back-run-*.html")
    assert all(f"| {path} |" in summary for path in (seeded, own, reports / "programme.html"))
    assert "caution: window open" in summary and "Caution" not in seeded.read_text(encoding="utf-8")
    assert "spring_reactivation run" in result.output and "NPS" in (reports / "programme.html").read_text("utf-8")
    again = runner.invoke(app, ["demo", "--members", "300"], env=env)  # idempotent: reuses programme and model
    assert again.exit_code == 0, again.output
    assert "reusing the 300 members" in again.output and "already trained" in again.output
    shown = runner.invoke(app, ["members", "show", "S0000001"])
    assert shown.exit_code == 0 and "Points ledger" in shown.output


def test_outbox_dispatch_sends_through_the_sandbox_and_reports(workdir: Path) -> None:
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    engine = create_db_engine(f"sqlite:///{workdir / 'var' / 'loyalflow.db'}")
    with session_scope(engine) as session:
        ids = [add_contactable_member(session).id for _ in range(3)]
    queue(engine, [i for i in ids if i is not None], "email")
    queue(engine, [i for i in ids if i is not None], "sms")
    # Quiet hours are not in play whatever the time of day the test runs.
    env = {"LOYALFLOW_POLICY__QUIET_HOURS_START": "00:00", "LOYALFLOW_POLICY__QUIET_HOURS_END": "00:00"}
    result = runner.invoke(app, ["outbox", "dispatch"], env=env)
    assert result.exit_code == 0, result.output
    assert "sandbox mailbox" in result.output
    assert len(list((workdir / "var" / "sandbox" / "email").glob("*.eml"))) == 3
    assert len((workdir / "var" / "sandbox" / "sms.jsonl").read_text().splitlines()) == 3
    status = runner.invoke(app, ["outbox", "status"])
    assert "sent" in status.output and " 6 " in status.output
