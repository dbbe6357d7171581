"""The template preview page in a real browser (Chromium through Playwright), against uvicorn on loopback.

Runs on a SQLite file database and a copy of the shipped templates (the test edits one file to
see the page reload by itself). Skipped when Chromium or Playwright is missing.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy.engine import Engine

from loyalty.settings import WebSettings
from loyalty.web.app import create_app
from tests.browser import CHROMIUM, browser_needed, free_port, served
from tests.conftest import REPO_ROOT
from tests.test_delivery_events import new_member
from tests.test_web_webhooks import make_settings

SCREENSHOT = REPO_ROOT / "docs" / "screenshots" / "preview.png"


@pytest.fixture
def templates_copy(tmp_path: Path) -> Path:
    target = tmp_path / "templates"
    shutil.copytree(REPO_ROOT / "templates", target)
    return target


def preview_settings(base: str, templates: Path) -> object:
    return make_settings(web=WebSettings(public_base_url=base, secret_key=SecretStr("preview-secret")),
                         config_dir=REPO_ROOT / "config", templates_dir=templates)


@pytest.fixture
def server(sqlite_engine: Engine, templates_copy: Path) -> Iterator[str]:
    """The app served by uvicorn in a thread; yields its base URL."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with served(create_app(preview_settings(base, templates_copy), sqlite_engine), port):  # type: ignore[arg-type]
        yield base


def test_preview_is_off_on_public_hosts_and_keeps_a_strict_csp(engine: Engine, templates_copy: Path) -> None:
    public = create_app(preview_settings("https://rewards.example.com", templates_copy), engine)  # type: ignore[arg-type]
    with TestClient(public) as client:
        assert client.get("/preview").status_code == 404
    local = create_app(preview_settings("http://127.0.0.1:8000", templates_copy), engine)  # type: ignore[arg-type]
    with TestClient(local) as client:
        page = client.get("/preview", params={"name": "welcome", "persona": "mallory"})
        assert page.status_code == 200
        csp = page.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp.split(
            "script-src")[1].split(";")[0]
        assert "<script>alert(1)" not in page.text and 'sandbox=""' in page.text
        assert client.get("/preview/version").json()["version"].isdigit()
        assert client.get("/preview/preview.js").headers["content-type"].startswith("text/javascript")


@browser_needed
def test_switch_member_and_channel(server: str, sqlite_engine: Engine, templates_copy: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    member_id, _ = new_member(sqlite_engine, first_name="Émilie", last_name="Gagnon", locale="fr_CA")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1000})
            page.goto(f"{server}/preview")
            expect(page.get_by_role("heading", name="Message preview")).to_be_visible()
            for panel in ("email", "sms", "push"):
                expect(page.locator(f"#panel-{panel}")).to_be_visible()
            # a persona, one channel
            page.get_by_label("Template").select_option("offers/bonus_500")
            page.get_by_label("Persona").select_option("olivia")
            page.get_by_label("Channel").select_option("sms")
            page.get_by_role("button", name="Show").click()
            expect(page.locator("#sms-body")).to_contain_text("Olivia, earn 500 points extra")
            expect(page.locator("#sms-meta")).to_contain_text("1 segment · GSM-7")
            expect(page.locator("#panel-email")).to_have_count(0)
            expect(page.get_by_label("lint")).to_contain_text("Lint: 0 findings")
            # a real member from the database, the email in both widths
            page.get_by_label("or member id").fill(str(member_id))
            page.get_by_label("Channel").select_option("email")
            page.get_by_role("button", name="Show").click()
            expect(page.locator("#who")).to_contain_text("Émilie Gagnon (fr_CA)")
            for width in ("desktop", "mobile"):
                frame = page.frame_locator(f'iframe[title="email, {width} width"]')
                expect(frame.get_by_text("Bonjour Émilie,")).to_be_visible()
            # the page re-renders by itself when a marketer saves a file
            page.get_by_label("Channel").select_option("push")
            page.get_by_role("button", name="Show").click()
            expect(page.locator("#push-title")).to_have_text("500 points boni")
            push = templates_copy / "offers" / "bonus_500" / "fr" / "push.json"
            push.write_text(push.read_text(encoding="utf-8").replace('"{{ offer.value|points }} boni"',
                                                                          '"Votre boni de {{ offer.value|points }}"'),
                            encoding="utf-8")
            expect(page.locator("#push-title")).to_have_text("Votre boni de 500 points", timeout=10_000)
            page.get_by_label("Channel").select_option("all")
            page.get_by_role("button", name="Show").click()
            expect(page.locator("#panel-sms")).to_be_visible()
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOT), full_page=True)
        finally:
            browser.close()
