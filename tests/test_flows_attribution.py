"""The attribution and retraining flows, end to end on a temporary Prefect API (SQLite)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from typer.testing import CliRunner

from loyalty.models import CAMPAIGN_OUTCOMES
from loyalty.programme import Programme
from loyalty.seed import seed_programme
from recommenders import registry
from tests.test_attribution import END, SLOT, build_campaign

pytestmark = [pytest.mark.usefixtures("prefect_api"), pytest.mark.parametrize("backend", ["sqlite"], indirect=True)]
SEED_AS_OF = datetime(2026, 6, 25, tzinfo=UTC)


def _artifact(key: str) -> dict[str, Any]:
    """The newest artifact stored under ``key`` on the test API."""
    from prefect.client.orchestration import get_client

    # A raw filter request: this Prefect client sends null for the filters it is not given, which its server refuses.
    body = {"artifacts": {"key": {"any_": [key]}}, "sort": "CREATED_DESC", "limit": 1, "offset": 0}
    with get_client(sync_client=True) as client:
        found: list[dict[str, Any]] = client.request("POST", "/artifacts/filter", json=body).json()
    assert found, f"no artifact {key!r}"
    return found[0]


def _final_rows(engine: Engine) -> int:
    o = CAMPAIGN_OUTCOMES.c
    with engine.connect() as connection:
        return int(connection.execute(sa.select(sa.func.count()).where(o.final)).scalar_one())


def test_attribution_flow_open_then_closed_then_nothing(app_env: Engine) -> None:
    from flows.attribution import attribute_campaigns

    campaign = build_campaign(app_env)
    early = attribute_campaigns(as_of=SLOT + timedelta(days=3), chunk_size=2)
    assert early == {"runs": 1, "chunks": 3, "rows": 5, "inserted": 5, "updated": 0, "final": 0}
    table = str(_artifact("campaign-attribution")["data"])
    assert f'"run_id": {campaign.run}' in table and '"members": 5' in table
    closed = attribute_campaigns(as_of=END + timedelta(days=1), chunk_size=2)
    assert closed == {"runs": 1, "chunks": 3, "rows": 5, "inserted": 0, "updated": 5, "final": 5}
    assert _final_rows(app_env) == 5
    assert attribute_campaigns(as_of=END + timedelta(days=2), chunk_size=2) == {"runs": 0, "chunks": 0}


def test_attribute_command(app_env: Engine) -> None:
    import typer

    from loyalty.cli import main_callback
    from loyalty.cli_attribution import attribution_app

    build_campaign(app_env)
    root = typer.Typer()  # loyalty.cli mounts attribution_app the same way (top level, no group name)
    root.callback()(main_callback)
    root.add_typer(attribution_app)
    result = CliRunner().invoke(root, ["attribute", "--as-of", (END + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S"),
                                       "--chunk-size", "3"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "attributed 1 runs" in result.output and "5 rows added, 0 updated, 5 final" in result.output
    assert "spring" in result.output and "66.67%" in result.output and "50.00%" in result.output
    assert _final_rows(app_env) == 5


def test_training_flow_skips_without_enough_data(app_env: Engine, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.training import train_recommender

    monkeypatch.setenv("LOYALFLOW_VAR_DIR", str(tmp_path / "var"))
    build_campaign(app_env)  # five members in a completed run
    result = train_recommender(min_rows=100)
    assert result == {"skipped": "only 5 assigned members in completed campaign runs (min_rows=100)",
                      "rows": 5, "holdout": 2, "treated": 3}
    assert "only 5 assigned members" in str(_artifact("recommender-training")["data"])
    assert not (tmp_path / "var" / "models").exists()


def test_training_flow_skips_without_holdout(app_env: Engine, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.training import train_recommender
    from loyalty.models import CAMPAIGN_ASSIGNMENTS

    monkeypatch.setenv("LOYALFLOW_VAR_DIR", str(tmp_path / "var"))
    build_campaign(app_env)
    with app_env.begin() as connection:
        connection.execute(CAMPAIGN_ASSIGNMENTS.update().values(arm="bonus_500", offer_code="bonus_500"))
    assert train_recommender(min_rows=1)["skipped"].startswith("no holdout member")


def test_training_flow_saves_an_artifact(app_env: Engine, programme: Programme, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.training import train_recommender

    monkeypatch.setenv("LOYALFLOW_VAR_DIR", str(tmp_path / "var"))
    report = seed_programme(app_env, programme, members=1_500, seed=5, as_of=SEED_AS_OF, truth_dir=tmp_path / "t")
    assert report.assigned >= 500
    result = train_recommender(method="t", min_rows=500)
    path = Path(result["path"])
    assert path.parent == tmp_path / "var" / "models" and path.exists()
    artifact = registry.load(path)
    assert artifact.card.method == "t" and artifact.card.data_window["rows"] == report.assigned
    assert result["metrics"] == artifact.card.metrics and result["metrics"]["test_rows"] > 0
    markdown = str(_artifact("recommender-training")["data"])
    assert result["version"] in markdown and "| arm | uplift@30% | Qini AUC |" in markdown
    assert all(f"| {arm} |" in markdown for arm in result["arms"])
