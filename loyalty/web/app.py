"""The web app: provider webhooks, one-click unsubscribe, the preference page, surveys and reports.

:func:`create_app` wires the routers (:mod:`loyalty.web.webhooks`, :mod:`loyalty.web.preferences`,
:mod:`loyalty.web.surveys`, :mod:`loyalty.web.reports`)
to one :class:`~loyalty.web.context.WebContext`. Every response carries security headers; pages
are opened by tokens in their URLs, so ``Referrer-Policy: no-referrer`` keeps those tokens from
leaking to any site a page links to, and ``Cache-Control: no-store`` keeps them out of caches.
Request logging is left to uvicorn's access log, which :mod:`loyalty.web.server` turns off
because its lines would contain the tokens.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response
from sqlalchemy.engine import Engine

from loyalty.db import create_db_engine
from loyalty.settings import Settings
from loyalty.web import events, preferences, preview, reports, surveys, webhooks
from loyalty.web.context import WebContext, is_loopback, page_environment, sendgrid_verifier

SECURITY_HEADERS = {
    # Pages inline their CSS (one small <style>), hence 'unsafe-inline' for styles only; no scripts at all.
    "Content-Security-Policy": ("default-src 'self'; style-src 'self' 'unsafe-inline'; script-src 'none'; "
                                "img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


def create_app(settings: Settings, engine: Engine | None = None, *, enable_preview: bool | None = None) -> FastAPI:
    """The FastAPI application; builds an engine from ``settings.database_url`` unless given one.

    The template preview (``/preview``, member data by id, no login) is mounted when
    ``enable_preview`` is true, or by default when ``web.public_base_url`` is a loopback address.
    """
    app = FastAPI(title="loyalflow", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.web = WebContext(settings=settings, engine=engine or create_db_engine(settings.database_url),
                               pages=page_environment(), sendgrid=sendgrid_verifier(settings))
    app.include_router(webhooks.router)
    app.include_router(events.router)  # POST /events/transactions, bearer-token authenticated
    app.include_router(preferences.router)
    app.include_router(surveys.router)  # /survey/{token}: NPS answers from email links
    app.include_router(reports.router)  # /reports: HTTP Basic, or loopback only when no password is set
    if enable_preview if enable_preview is not None else is_loopback(settings.web.public_base_url):
        app.include_router(preview.router)  # sets its own CSP: script-src 'self' for its reload script

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        response = await call_next(request)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    return app

