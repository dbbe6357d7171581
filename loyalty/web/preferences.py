"""Member-facing pages: one-click unsubscribe (RFC 8058) and the preference page.

Both are opened by a signed token in the URL (:mod:`loyalty.tokens`); there are no accounts and
no cookies. GET never changes anything (mail scanners prefetch links); POST does.

CSRF. The token *is* the credential, so a classic CSRF attack (riding a victim's cookies) does not
apply; what remains is a third-party page making the member's browser submit a form. Defences:

- unsubscribe POST has none on purpose: RFC 8058 requires a bare POST to work from the mail
  client, and the worst a forged one can do is the harmless opt-out the link exists for;
- the preference form (which can also opt *in*) carries a hidden ``csrf`` field, an HMAC of the
  token under the app secret, proving the POST came from a form we rendered for this token; and
  a browser's cross-origin submission is refused by its ``Sec-Fetch-Site`` header (or, from
  browsers without it, an ``Origin`` other than ``web.public_base_url``'s). Non-browser clients
  send neither header; they still need the token and the form field.
"""

from __future__ import annotations

import sqlalchemy as sa
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from loyalty.consent import set_consent
from loyalty.db import fetch_rows
from loyalty.models import CHANNEL_CONSENTS, MEMBERS
from loyalty.tokens import (
    PREFERENCES,
    UNSUBSCRIBE,
    ExpiredToken,
    InvalidToken,
    MemberToken,
    preferences_url,
    read_token,
)
from loyalty.types import Channel
from loyalty.web.context import CHANNEL_LABELS, CHANNEL_TITLES, Ctx, WebContext
from loyalty.web.forms import OptionalField, cross_site, csrf_matches, form_csrf

router = APIRouter()
FORM = "preferences-form"  # binds the hidden CSRF field to this form


def _read(ctx: WebContext, token: str, purpose: str) -> tuple[MemberToken, str] | HTMLResponse:
    """The token's member and first name, or the page explaining why the link does not work."""
    try:
        member = read_token(ctx.settings.web, token, purpose)
    except ExpiredToken:
        return ctx.message_page("This link has expired",
                                "For your security, links in our messages stop working after a while. "
                                "Please use the link in a more recent message.", status_code=410)
    except InvalidToken:
        return _invalid(ctx)
    if purpose == UNSUBSCRIBE and member.channel is None:
        return _invalid(ctx)
    name = _member_name(ctx, member.member_id)
    return _invalid(ctx) if name is None else (member, name)


def _invalid(ctx: WebContext) -> HTMLResponse:
    return ctx.message_page("This link is not valid",
                            "The link may have been copied incompletely. Please use the link exactly as it "
                            "appears in the message.", status_code=400)


def _member_name(ctx: WebContext, member_id: int) -> str | None:
    """The member's first name ("" if none), or None when the member no longer exists."""
    with ctx.engine.connect() as connection:
        rows = fetch_rows(connection, sa.select(MEMBERS.c.first_name).where(MEMBERS.c.id == member_id))
    return None if not rows else str(rows[0][0] or "")


@router.get("/unsubscribe/{token}", response_class=HTMLResponse)
def unsubscribe_page(token: str, ctx: Ctx) -> HTMLResponse:
    """Confirm before unsubscribing (a GET must not act: link scanners follow links)."""
    found = _read(ctx, token, UNSUBSCRIBE)
    if isinstance(found, HTMLResponse):
        return found
    member = found[0]
    return ctx.page("unsubscribe.html", channel=CHANNEL_LABELS[member.channel or ""],
                    preferences=preferences_url(ctx.settings.web, member.member_id))


@router.post("/unsubscribe/{token}", response_class=HTMLResponse)
def unsubscribe(token: str, ctx: Ctx) -> HTMLResponse:
    """RFC 8058 one-click unsubscribe: any POST body (``List-Unsubscribe=One-Click`` or none) works."""
    found = _read(ctx, token, UNSUBSCRIBE)
    if isinstance(found, HTMLResponse):
        return found
    member = found[0]
    with ctx.engine.begin() as connection:
        set_consent(connection, member.member_id, member.channel or "", False, source="unsubscribe_link")
    label = CHANNEL_LABELS[member.channel or ""]
    return ctx.message_page("You are unsubscribed", f"You will no longer receive {label} messages from us.",
                            link=preferences_url(ctx.settings.web, member.member_id),
                            link_text="Manage all your preferences")


def _consents(ctx: WebContext, member_id: int) -> dict[str, bool]:
    query = sa.select(CHANNEL_CONSENTS.c.channel, CHANNEL_CONSENTS.c.opted_in).where(
        CHANNEL_CONSENTS.c.member_id == member_id)
    with ctx.engine.connect() as connection:
        recorded = {str(channel): bool(opted_in) for channel, opted_in in fetch_rows(connection, query)}
    return {c.value: recorded.get(c.value, False) for c in Channel}  # no recorded choice means no


def _preferences_page(ctx: WebContext, token: str, member_id: int, name: str, *, saved: bool) -> HTMLResponse:
    consents = _consents(ctx, member_id)
    channels = [{"name": c, "title": CHANNEL_TITLES[c], "checked": on} for c, on in consents.items()]
    return ctx.page("preferences.html", first_name=name, channels=channels, csrf=form_csrf(ctx, FORM, token),
                    saved=saved)


@router.get("/preferences/{token}", response_class=HTMLResponse)
def preferences_page(token: str, ctx: Ctx) -> HTMLResponse:
    """The form: one checkbox per channel showing the current consent."""
    found = _read(ctx, token, PREFERENCES)
    if isinstance(found, HTMLResponse):
        return found
    member, name = found
    return _preferences_page(ctx, token, member.member_id, name, saved=False)


@router.post("/preferences/{token}", response_class=HTMLResponse)
def save_preferences(token: str, request: Request, ctx: Ctx, email: OptionalField = None, sms: OptionalField = None,
                     push: OptionalField = None, csrf: OptionalField = None) -> HTMLResponse:
    """Save the form: a ticked box (value "on") opts in, an unticked one (absent) opts out."""
    found = _read(ctx, token, PREFERENCES)
    if isinstance(found, HTMLResponse):
        return found
    member, name = found
    if cross_site(ctx, request) or not csrf_matches(ctx, FORM, token, csrf):
        return ctx.message_page("Your changes were not saved",
                                "This form was not submitted from our preference page. Please open the link "
                                "from your message again.", status_code=403)
    chosen = {Channel.EMAIL: email, Channel.SMS: sms, Channel.PUSH: push}
    with ctx.engine.begin() as connection:
        for channel, value in chosen.items():
            set_consent(connection, member.member_id, channel, value == "on", source="preference_page")
    return _preferences_page(ctx, token, member.member_id, name, saved=True)
