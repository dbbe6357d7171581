"""Signed member tokens: round trips, purposes, tampering and expiry (with a fixed clock, no sleeping)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from pydantic import SecretStr

from loyalty.settings import WebSettings
from loyalty.tokens import (
    PREFERENCES,
    UNSUBSCRIBE,
    ExpiredToken,
    InvalidToken,
    MemberToken,
    make_token,
    preferences_url,
    read_token,
    unsubscribe_url,
)
from loyalty.types import utcnow

WEB = WebSettings(public_base_url="https://rewards.example.com/", secret_key=SecretStr("s3cret-for-tests"),
                  token_max_age_days=30)


def test_round_trip_with_and_without_channel() -> None:
    assert read_token(WEB, make_token(WEB, 42, UNSUBSCRIBE, "sms"), UNSUBSCRIBE) == MemberToken(42, "sms")
    assert read_token(WEB, make_token(WEB, 7, PREFERENCES), PREFERENCES) == MemberToken(7, None)


def test_a_token_only_opens_its_own_purpose() -> None:
    token = make_token(WEB, 42, UNSUBSCRIBE, "email")
    with pytest.raises(InvalidToken):
        read_token(WEB, token, PREFERENCES)


@pytest.mark.parametrize("mangle", [
    # Not the last character: its low base64 bits are padding and may not change the bytes.
    lambda t: t[:-5] + ("A" if t[-5] != "A" else "B") + t[-4:],  # signature
    lambda t: "x" + t,  # payload
    lambda t: t.split(".")[0],  # truncated
    lambda t: "",
    lambda t: "not-a-token",
])
def test_tampered_tokens_are_invalid(mangle: object) -> None:
    token = make_token(WEB, 42, UNSUBSCRIBE, "email")
    with pytest.raises(InvalidToken) as caught:
        read_token(WEB, mangle(token), UNSUBSCRIBE)  # type: ignore[operator]
    assert not isinstance(caught.value, ExpiredToken)


def test_another_secret_cannot_read_it() -> None:
    other = WEB.model_copy(update={"secret_key": SecretStr("another")})
    with pytest.raises(InvalidToken):
        read_token(other, make_token(WEB, 42, PREFERENCES), PREFERENCES)


def test_expiry_follows_token_max_age_days() -> None:
    now = utcnow()
    old = make_token(WEB, 42, PREFERENCES, now=now - timedelta(days=31))
    recent = make_token(WEB, 42, PREFERENCES, now=now - timedelta(days=29))
    with pytest.raises(ExpiredToken):
        read_token(WEB, old, PREFERENCES)
    assert read_token(WEB, recent, PREFERENCES).member_id == 42
    # Reading "as of" a time is the same clock: the recent token expires two days later.
    with pytest.raises(ExpiredToken):
        read_token(WEB, recent, PREFERENCES, now=now + timedelta(days=2))


def test_urls_use_the_public_base_and_carry_no_secret() -> None:
    unsub, prefs = unsubscribe_url(WEB, 42, "email"), preferences_url(WEB, 42)
    assert unsub.startswith("https://rewards.example.com/unsubscribe/")
    assert prefs.startswith("https://rewards.example.com/preferences/")
    token = unsub.rsplit("/", 1)[1]
    assert read_token(WEB, token, UNSUBSCRIBE) == MemberToken(42, "email")
    assert "s3cret" not in unsub + prefs
    assert "s3cret" not in repr(WEB) and "s3cret" not in str(WEB)


def test_unknown_channel_is_refused_when_signing() -> None:
    with pytest.raises(ValueError, match="unknown channel"):
        make_token(WEB, 42, UNSUBSCRIBE, "fax")
