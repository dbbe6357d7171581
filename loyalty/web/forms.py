"""Defences shared by the member-facing forms opened by a signed token (preferences, surveys).

The token in the URL is the credential, so there is no cookie for a classic CSRF attack to ride;
what remains is a third-party page making the member's browser submit one of our forms. Each form
carries a hidden field, an HMAC of the token under the app secret and the form's purpose, and a
browser's cross-origin POST is refused by its ``Sec-Fetch-Site`` header (or ``Origin``).
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import Form, Request

from loyalty.web.context import WebContext

OptionalField = Annotated[str | None, Form()]


def form_csrf(ctx: WebContext, purpose: str, token: str) -> str:
    """The hidden form value binding a POST for ``purpose`` to a form rendered for ``token``."""
    key = ctx.settings.web.secret_key.get_secret_value().encode()
    return hmac.new(key, purpose.encode() + b"\x00" + token.encode(), hashlib.sha256).hexdigest()


def csrf_matches(ctx: WebContext, purpose: str, token: str, submitted: str | None) -> bool:
    """Whether the submitted hidden field is the one :func:`form_csrf` rendered (constant time)."""
    return hmac.compare_digest(submitted or "", form_csrf(ctx, purpose, token))


def cross_site(ctx: WebContext, request: Request) -> bool:
    """Whether a browser says this POST comes from another origin.

    ``Sec-Fetch-Site`` first: our pages send ``Referrer-Policy: no-referrer``, under which browsers
    send ``Origin: null`` even for our own form, so ``Origin`` can only refuse, never confirm.
    """
    fetch_site = request.headers.get("Sec-Fetch-Site")
    if fetch_site is not None:
        return fetch_site not in ("same-origin", "none")  # same-site is a sibling subdomain: refuse too
    origin = request.headers.get("Origin")
    if origin is None or origin == "null":
        return False
    public = urlsplit(ctx.base_url)
    return origin.lower() != f"{public.scheme}://{public.netloc}".lower()
