"""What every request handler needs: settings, the engine, page rendering and verifiers.

Built once by :func:`loyalty.web.app.create_app` and kept on ``app.state.web``; handlers get it
through the :data:`Ctx` dependency rather than importing globals.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, cast
from urllib.parse import urlsplit

import jinja2
from fastapi import Depends, Request
from fastapi.responses import HTMLResponse
from sendgrid.helpers.eventwebhook import EventWebhook
from sqlalchemy.engine import Engine

from loyalty.reports import report_environment
from loyalty.settings import Settings

CHANNEL_LABELS = {"email": "email", "sms": "text (SMS)", "push": "push notification"}
CHANNEL_TITLES = {"email": "Email", "sms": "Text messages (SMS)", "push": "Push notifications"}


def page_environment() -> jinja2.Environment:
    """The Jinja environment for ``loyalty/web/pages`` (HTML is always autoescaped); reports render with it too."""
    return report_environment()


def is_loopback(url: str) -> bool:
    """Whether ``url`` names this machine (a marketer's own, where preview and reports need no password)."""
    return urlsplit(url).hostname in ("127.0.0.1", "localhost", "::1")


def sendgrid_verifier(settings: Settings) -> EventWebhook | None:
    """The SendGrid signature verifier, or None when no verification key is configured.

    A configured but malformed key raises here, at startup, rather than refusing every event later.
    """
    key = settings.sendgrid.webhook_public_key
    if key is None or not key.get_secret_value().strip():
        return None
    try:
        return EventWebhook(key.get_secret_value().strip())
    except ValueError as exc:
        raise ValueError("sendgrid.webhook_public_key is not a base64 DER P-256 public key") from exc


@dataclass
class WebContext:
    """Per-app state shared by the routers."""

    settings: Settings
    engine: Engine
    pages: jinja2.Environment
    sendgrid: EventWebhook | None

    @property
    def base_url(self) -> str:
        """The public base URL without a trailing slash (what Twilio signs, where links point)."""
        return self.settings.web.public_base_url.rstrip("/")

    def page(self, template: str, *, status_code: int = 200, **values: Any) -> HTMLResponse:
        """Render ``pages/<template>`` as an HTML response."""
        html = self.pages.get_template(template).render(**values)
        return HTMLResponse(html, status_code=status_code)

    def message_page(self, title: str, message: str, *, status_code: int = 200, link: str | None = None,
                     link_text: str = "") -> HTMLResponse:
        """A small page saying one thing (done, invalid link, expired link...)."""
        return self.page("message.html", status_code=status_code, title=title, message=message, link=link,
                         link_text=link_text)


def web_context(request: Request) -> WebContext:
    """The app's :class:`WebContext` (a FastAPI dependency)."""
    return cast(WebContext, request.app.state.web)


Ctx = Annotated[WebContext, Depends(web_context)]
