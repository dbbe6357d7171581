"""Run the web app with uvicorn (``loyalflow serve``)."""

from __future__ import annotations

import uvicorn

from loyalty.settings import Settings
from loyalty.web.app import create_app


def serve(settings: Settings, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve the app until interrupted (no reload).

    The access log is off: its request lines would contain the unsubscribe and preference
    tokens, which are credentials. Behind a reverse proxy, set ``web.public_base_url`` to the
    public address: Twilio signatures and the links in messages are built from it.
    """
    app = create_app(settings)
    uvicorn.run(app, host=host, port=port, access_log=False, proxy_headers=True, log_level="info")
