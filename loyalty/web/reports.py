"""``/reports``: the campaign and programme reports in the browser (the pages ``loyalflow report`` writes).

They show business figures, so every page needs a credential: HTTP Basic with
``web.reports_password`` (any user name; compared in constant time). Without a password set they
are served only when ``web.public_base_url`` is a loopback address (a marketer's own machine), and
are 404 elsewhere, like the template preview. Pages are the self-contained documents of
:mod:`loyalty.reports`: inline CSS and SVG, no script, so the app's CSP needs no exception.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections import defaultdict
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import HTMLResponse

from loyalty import kpis, measurement, reports
from loyalty.measurement import RunListing
from loyalty.programme import Programme, load_programme
from loyalty.web.context import Ctx, WebContext, is_loopback

REALM = 'Basic realm="loyalflow reports", charset="UTF-8"'


def _basic_password(header: str) -> bytes | None:
    """The password of an ``Authorization: Basic`` header, or None when there is none."""
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    _, colon, password = decoded.partition(b":")
    return password if colon else None


def require_access(request: Request, ctx: Ctx) -> None:
    """Let the request through, or answer 401 (wrong or missing password) or 404 (no password, not loopback)."""
    secret = ctx.settings.web.reports_password
    expected = secret.get_secret_value().encode() if secret is not None else b""
    if not expected:  # an empty password is no password: it would let anyone in
        if is_loopback(ctx.settings.web.public_base_url):
            return
        raise HTTPException(status_code=404)
    given = _basic_password(request.headers.get("authorization", ""))
    # compare_digest on equal-length digests: constant time whatever the length of the guess.
    if given is None or not hmac.compare_digest(_digest(given), _digest(expected)):
        raise HTTPException(status_code=401, detail="Reports need a password.", headers={"WWW-Authenticate": REALM})


def _digest(value: bytes) -> bytes:
    return hmac.new(b"loyalflow-reports", value, "sha256").digest()


router = APIRouter(prefix="/reports", dependencies=[Depends(require_access)])


def _programme(request: Request, ctx: WebContext) -> Programme:
    """The programme (currency, offer costs), loaded once per app."""
    programme = getattr(request.app.state, "reports_programme", None)
    if programme is None:
        programme = load_programme(ctx.settings.config_dir)
        request.app.state.reports_programme = programme
    return programme


@router.get("", response_class=HTMLResponse)
def reports_index(ctx: Ctx) -> HTMLResponse:
    """The programme report's link, and every campaign with its runs (newest first)."""
    campaigns: dict[str, list[RunListing]] = defaultdict(list)
    for run in reversed(measurement.list_runs(ctx.engine)):
        campaigns[run.campaign].append(run)
    rows = [{"name": name, "href": f"/reports/campaigns/{quote(name, safe='')}", "runs": runs}
            for name, runs in sorted(campaigns.items())]
    return ctx.page("report_index.html", campaigns=rows, index_href=None)


@router.get("/programme", response_class=HTMLResponse)
def programme_report(request: Request, ctx: Ctx) -> HTMLResponse:
    """Programme KPIs as of now."""
    programme = _programme(request, ctx)
    k = kpis.programme_kpis(ctx.engine)
    return HTMLResponse(reports.programme_report_html(k, name=programme.name, currency=programme.currency,
                                                      index_href="/reports"))


@router.get("/campaigns/{name}", response_class=HTMLResponse)
def campaign_report(request: Request, ctx: Ctx, name: str,
                    run: Annotated[int | None, Query(ge=1)] = None) -> HTMLResponse:
    """One run of campaign ``name``: ``?run=ID``, or the latest completed run."""
    run_id = run if run is not None else measurement.latest_run_id(ctx.engine, name)
    if run_id is None:
        return ctx.message_page("No report", "This campaign has no completed run yet.", status_code=404,
                                link="/reports", link_text="All reports")
    programme = _programme(request, ctx)
    try:
        m = measurement.measure_run(ctx.engine, run_id, programme=programme)
    except LookupError:
        m = None
    if m is None or m.campaign != name:
        return ctx.message_page("No report", "This campaign has no such run.", status_code=404,
                                link="/reports", link_text="All reports")
    return HTMLResponse(reports.campaign_report_html(m, currency=programme.currency, index_href="/reports"))
