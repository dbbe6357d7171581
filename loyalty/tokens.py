"""Signed, expiring member tokens for links in messages (unsubscribe, preference page).

A token is an itsdangerous ``URLSafeTimedSerializer`` value: the member id (and channel) plus
the time it was signed, HMAC-SHA256 signed with ``web.secret_key``. The *purpose* is the salt, so
an unsubscribe token cannot open the preference page and vice versa. Nothing is stored: the
signature is the proof, and ``token_max_age_days`` bounds how long a leaked link works.

Tokens are credentials: never log them, and serve the pages they open with
``Referrer-Policy: no-referrer`` (see :mod:`loyalty.web.app`).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from itsdangerous import BadSignature, SignatureExpired, TimestampSigner, URLSafeTimedSerializer

from loyalty.settings import WebSettings
from loyalty.types import Channel

UNSUBSCRIBE = "unsubscribe"
PREFERENCES = "preferences"
_SALT_PREFIX = "loyalflow.member-token."
_CHANNELS = frozenset(c.value for c in Channel)


class InvalidToken(Exception):
    """The token is malformed, forged, or was made for another purpose."""


class ExpiredToken(InvalidToken):
    """The token was genuine but is older than ``token_max_age_days``."""


@dataclass(frozen=True)
class MemberToken:
    """What a valid token says: whose it is and, for an unsubscribe link, which channel."""

    member_id: int
    channel: str | None = None


class _ClockSigner(TimestampSigner):
    """A timestamp signer whose clock can be fixed (tests, and signing "as of" a time)."""

    def __init__(self, *args: Any, clock: Callable[[], int] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._clock = clock or (lambda: int(time.time()))

    def get_timestamp(self) -> int:
        return self._clock()


def _serializer(web: WebSettings, purpose: str, now: datetime | None) -> URLSafeTimedSerializer:
    # Built per call so the secret never sits in a long-lived object that might be repr'd or logged.
    clock = None if now is None else (lambda: int(now.timestamp()))
    return URLSafeTimedSerializer(
        web.secret_key.get_secret_value(), salt=_SALT_PREFIX + purpose, signer=_ClockSigner,
        signer_kwargs={"digest_method": hashlib.sha256, "clock": clock})


def make_token(web: WebSettings, member_id: int, purpose: str, channel: str | None = None, *,
               now: datetime | None = None) -> str:
    """A URL-safe token naming ``member_id`` (and ``channel``) for ``purpose``, signed at ``now``."""
    if channel is not None and channel not in _CHANNELS:
        raise ValueError(f"unknown channel {channel!r}")
    payload: dict[str, Any] = {"m": int(member_id)}
    if channel is not None:
        payload["c"] = channel
    return str(_serializer(web, purpose, now).dumps(payload))


def read_token(web: WebSettings, token: str, purpose: str, *, now: datetime | None = None) -> MemberToken:
    """Check ``token`` for ``purpose`` and return what it says.

    Raises :class:`ExpiredToken` for a genuine token older than ``web.token_max_age_days`` and
    :class:`InvalidToken` for anything else wrong (checked in that order; ``ExpiredToken`` is an
    ``InvalidToken``, so catch it first).
    """
    max_age = web.token_max_age_days * 86400
    try:
        payload = _serializer(web, purpose, now).loads(token, max_age=max_age)
    except SignatureExpired:
        raise ExpiredToken("token expired") from None
    except BadSignature:
        raise InvalidToken("token invalid") from None
    return _member_token(payload)


def _member_token(payload: Any) -> MemberToken:
    """Validate a signed payload's shape (a genuine signature over junk is still junk)."""
    if not isinstance(payload, dict):
        raise InvalidToken("token invalid")
    member_id, channel = payload.get("m"), payload.get("c")
    if not isinstance(member_id, int) or isinstance(member_id, bool) or member_id <= 0:
        raise InvalidToken("token invalid")
    if channel is not None and channel not in _CHANNELS:
        raise InvalidToken("token invalid")
    return MemberToken(member_id=member_id, channel=channel)


def _base(web: WebSettings) -> str:
    return web.public_base_url.rstrip("/")


def unsubscribe_url(web: WebSettings, member_id: int, channel: str, *, now: datetime | None = None) -> str:
    """The one-click unsubscribe link for ``member_id`` on ``channel`` (also the List-Unsubscribe URL)."""
    return f"{_base(web)}/unsubscribe/{make_token(web, member_id, UNSUBSCRIBE, channel, now=now)}"


def preferences_url(web: WebSettings, member_id: int, *, now: datetime | None = None) -> str:
    """The link to ``member_id``'s preference page."""
    return f"{_base(web)}/preferences/{make_token(web, member_id, PREFERENCES, now=now)}"
