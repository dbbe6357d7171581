"""The campaign report in a real browser (Chromium through Playwright), against uvicorn on loopback.

A small seeded programme whose past campaign is attributed, on a SQLite *file* database shared with the
server thread. With ``LOYALFLOW_SCREENSHOTS=1`` the test also saves the screenshots in ``docs/screenshots/``.
Skipped when Chromium or Playwright is missing.
"""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy.engine import Engine

from loyalty import clv, measurement
from loyalty.programme import Programme
from loyalty.reports import Numbers, verdict
from loyalty.seed import default_as_of
from loyalty.seed_campaign import CAMPAIGN_NAME
from tests.browser import CHROMIUM, browser_needed, free_port, served
from tests.conftest import REPO_ROOT
from tests.test_reports import seed_and_attribute
from tests.test_web_reports import reports_app

SCREENSHOTS = REPO_ROOT / "docs" / "screenshots"
pytestmark = browser_needed


def test_campaign_report_shows_charts_and_numbers(sqlite_engine: Engine, programme: Programme,
                                                  tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    screenshots = os.environ.get("LOYALFLOW_SCREENSHOTS") == "1"
    # The pages measure as of now, so the programme is seeded up to today; bigger for the screenshots.
    today = default_as_of()
    run_id = seed_and_attribute(sqlite_engine, programme, tmp_path, members=4000 if screenshots else 400, as_of=today)
    if screenshots:
        clv.fit_lifetime(sqlite_engine, as_of=today)  # the predicted-value histogram
    measured = measurement.measure_run(sqlite_engine, run_id, programme=programme)
    n = Numbers(programme.currency)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with served(reports_app(sqlite_engine, base), port), sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            page = browser.new_page(viewport={"width": 760, "height": 1000})
            page.goto(f"{base}/reports")
            page.get_by_role("link", name=CAMPAIGN_NAME).click()
            expect(page.get_by_role("heading", level=1)).to_contain_text(CAMPAIGN_NAME)
            lift = page.get_by_role("img", name="Conversion lift per arm, with 95% intervals")
            cumulative = page.get_by_role("img", name="Cumulative conversion rate, treated vs holdout")
            expect(lift).to_be_visible()
            expect(cumulative).to_be_visible()
            assert lift.locator("g.bar").count() >= 1 and lift.locator("g.error-bar").count() >= 1
            assert (lift.bounding_box() or {}).get("width", 0) > 600  # readable, not squeezed
            expect(page.locator("#verdict")).to_contain_text(verdict(measured, n).headline)
            expect(page.locator("#verdict")).to_contain_text(n.lift(measured.overall.conversion_lift))
            expect(page.locator("#worth-it")).to_contain_text(n.roi(measured.overall.roi))
            arms = page.locator("#arms")
            for arm in measured.arms:
                expect(arms).to_contain_text(arm.arm)
                expect(arms).to_contain_text(n.rate(arm.conversion_rate, 2))
            if screenshots:
                SCREENSHOTS.mkdir(parents=True, exist_ok=True)
                page.set_viewport_size({"width": 1000, "height": 1000})  # a laptop: the wide tables fit
                page.screenshot(path=str(SCREENSHOTS / "report-campaign.png"), full_page=True)
                page.goto(f"{base}/reports/programme")
                expect(page.get_by_role("img", name="Members per tier")).to_be_visible()
                page.screenshot(path=str(SCREENSHOTS / "report-programme.png"), full_page=True)
        finally:
            browser.close()
