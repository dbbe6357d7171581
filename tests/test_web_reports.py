"""``/reports`` over HTTP: who may see them (Basic password, loopback without one) and what they show."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy.engine import Engine

from loyalty.programme import Programme
from loyalty.seed_campaign import CAMPAIGN_NAME
from loyalty.settings import Settings, WebSettings
from loyalty.web.app import create_app
from tests.test_reports import Tags, assert_self_contained, seed_and_attribute

LOOPBACK, PUBLIC = "http://127.0.0.1:8000", "https://rewards.example.com"


def reports_app(engine: Engine, base_url: str, password: str | None = None) -> FastAPI:
    """The web app as served, with these web settings."""
    web = WebSettings(public_base_url=base_url, secret_key=SecretStr("k"),
                      reports_password=SecretStr(password) if password is not None else None)
    return create_app(Settings(web=web, config_dir=Path("config")), engine)


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.fixture
def seeded(engine: Engine, programme: Programme, tmp_path: Path) -> int:
    return seed_and_attribute(engine, programme, tmp_path)


def test_loopback_without_password_shows_index_campaign_and_programme(engine: Engine, seeded: int) -> None:
    with TestClient(reports_app(engine, LOOPBACK)) as client:
        index = client.get("/reports")
        assert index.status_code == 200
        assert f'href="/reports/campaigns/{CAMPAIGN_NAME}?run={seeded}"' in index.text
        assert 'href="/reports/programme"' in index.text
        for url in (f"/reports/campaigns/{CAMPAIGN_NAME}", f"/reports/campaigns/{CAMPAIGN_NAME}?run={seeded}"):
            page = client.get(url)
            assert page.status_code == 200 and f"run {seeded}" in page.text
            assert len(Tags(page.text).svgs(page.text)) == 2 and "Did it work?" in page.text
            assert "script-src 'none'" in page.headers["content-security-policy"]
            assert_self_contained(page.text)
        programme = client.get("/reports/programme")
        assert programme.status_code == 200 and "Members per tier" in programme.text
        assert client.get("/reports/campaigns/win_back").status_code == 404  # no run
        assert client.get(f"/reports/campaigns/win_back?run={seeded}").status_code == 404  # another campaign's run
        assert client.get("/reports/campaigns/x?run=999999").status_code == 404


def test_public_address_without_password_is_not_found(engine: Engine) -> None:
    with TestClient(reports_app(engine, PUBLIC)) as client:
        assert client.get("/reports").status_code == 404
        assert client.get("/reports/programme").status_code == 404
    with TestClient(reports_app(engine, PUBLIC, password="")) as client:  # empty is no password
        assert client.get("/reports", headers=basic("a", "")).status_code == 404


def test_password_is_required_and_checked(engine: Engine) -> None:
    with TestClient(reports_app(engine, PUBLIC, password="s3cret")) as client:
        missing = client.get("/reports")
        assert missing.status_code == 401 and missing.headers["www-authenticate"].startswith("Basic ")
        assert client.get("/reports", headers=basic("anyone", "wrong")).status_code == 401
        assert client.get("/reports", headers={"Authorization": "Basic %%%"}).status_code == 401
        assert client.get("/reports", headers={"Authorization": "Bearer s3cret"}).status_code == 401
        assert client.get("/reports", headers=basic("anyone", "s3cret")).status_code == 200
        assert client.get("/reports/programme", headers=basic("", "s3cret")).status_code == 200
    with TestClient(reports_app(engine, LOOPBACK, password="s3cret")) as client:  # loopback too, once set
        assert client.get("/reports").status_code == 401
