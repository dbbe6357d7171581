"""The preference page in a real browser (Chromium through Playwright), against uvicorn on loopback.

Runs on a SQLite *file* database so the server thread and the test share it. Skipped when
Chromium or Playwright is missing.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pydantic import SecretStr
from sqlalchemy.engine import Engine

from loyalty.settings import WebSettings
from loyalty.tokens import preferences_url
from loyalty.web.app import create_app
from tests.browser import CHROMIUM, browser_needed, free_port, served
from tests.conftest import REPO_ROOT
from tests.test_delivery_events import consent, new_member
from tests.test_web_webhooks import make_settings

SCREENSHOT = REPO_ROOT / "docs" / "screenshots" / "preferences.png"
pytestmark = browser_needed


@pytest.fixture
def server(sqlite_engine: Engine) -> Iterator[WebSettings]:
    """The app served by uvicorn in a thread; yields its web settings (base URL = where it listens)."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    settings = make_settings(web=WebSettings(public_base_url=base, secret_key=SecretStr("browser-secret")))
    with served(create_app(settings, sqlite_engine), port):
        yield settings.web


def test_untick_sms_and_save(server: WebSettings, sqlite_engine: Engine) -> None:
    from playwright.sync_api import expect, sync_playwright

    member_id, _ = new_member(sqlite_engine)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            page = browser.new_page(viewport={"width": 720, "height": 900})
            page.goto(preferences_url(server, member_id))
            sms = page.get_by_label("Text messages (SMS)")
            expect(sms).to_be_checked()
            sms.uncheck()
            page.get_by_role("button", name="Save preferences").click()
            expect(page.get_by_role("status")).to_contain_text("Saved")
            expect(page.get_by_label("Text messages (SMS)")).not_to_be_checked()
            expect(page.get_by_label("Email")).to_be_checked()
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOT), full_page=True)
        finally:
            browser.close()
    assert consent(sqlite_engine, member_id, "sms") == (False, "preference_page")
    assert consent(sqlite_engine, member_id, "email") == (True, "preference_page")
