"""The sandbox: with no provider keys, the real clients send to the in-process emulator and the
mailbox under var/sandbox shows what members would have received."""

from __future__ import annotations

import json
from email import policy
from email.parser import BytesParser
from pathlib import Path

import pytest
import sqlalchemy as sa
from pydantic import SecretStr
from sqlalchemy.engine import Engine

from channels.email_sendgrid import SendGridAdapter
from channels.sandbox import sandbox_browser_keys
from channels.sms_twilio import TwilioSmsAdapter
from loyalty.db import session_scope
from loyalty.delivery import needs_sandbox, open_channels
from loyalty.dispatch import dispatch
from loyalty.models import PushSubscription
from loyalty.outbox import NewMessage, enqueue
from loyalty.settings import DispatchSettings, SendGridSettings, Settings, TwilioSettings
from loyalty.types import PushKind
from tests.factories import add_contactable_member, queue


@pytest.fixture
def settings(tmp_path: Path, engine: Engine) -> Settings:
    return Settings(var_dir=tmp_path / "var", database_url=engine.url.render_as_string(hide_password=False))


def test_without_keys_every_channel_is_sandboxed(settings: Settings) -> None:
    assert needs_sandbox(settings) == {"email", "sms", "push"}
    assert needs_sandbox(Settings(sendgrid={"api_key": "SG.x"})) == {"sms", "push"}


def test_sandbox_mailbox_holds_what_members_would_get(engine: Engine, settings: Settings) -> None:
    with session_scope(engine) as session:
        member = add_contactable_member(session, first_name="Zoé")
        browser = PushSubscription(member_id=member.id, kind=PushKind.WEBPUSH, endpoint="https://push.example.net/wp/z",
                                   p256dh=sandbox_browser_keys()[0], auth=sandbox_browser_keys()[1])
        session.add(browser)
    assert member.id is not None
    queue(engine, [member.id], "email", content={"subject": "Double points, Zoé", "html": "<p>Bonjour Zoé</p>",
                                                 "text": "Bonjour Zoé"})
    queue(engine, [member.id], "sms", content={"body": "Double points this weekend!"})
    with session_scope(engine) as session:
        enqueue(session, [NewMessage(key="push-1", member_id=member.id, channel="push", template="t", payload={
            "to": browser.endpoint, "push_keys": {"p256dh": browser.p256dh, "auth": browser.auth},
            "content": {"title": "Gold!", "body": "You reached Gold"}})])
    with open_channels(settings) as opened:
        stats = dispatch(engine, opened.adapters.values(), settings=DispatchSettings(), poll_seconds=0.01)
    assert {channel: s.sent for channel, s in stats.items()} == {"email": 1, "sms": 1, "push": 1}

    (eml,) = (settings.sandbox_dir / "email").glob("*.eml")
    mail = BytesParser(policy=policy.default).parsebytes(eml.read_bytes())
    assert mail["Subject"] == "Double points, Zoé" and mail["To"] == member.email
    assert "Bonjour Zoé" in mail.get_body(("html",)).get_content()  # type: ignore[union-attr]
    (sms,) = [json.loads(line) for line in (settings.sandbox_dir / "sms.jsonl").read_text().splitlines()]
    assert sms["to"] == member.phone and sms["body"] == "Double points this weekend!" and sms["segments"] == 1
    (push,) = [json.loads(line) for line in (settings.sandbox_dir / "push.jsonl").read_text().splitlines()]
    assert push["kind"] == "webpush" and push["payload"] == {"title": "Gold!", "body": "You reached Gold"}
    with engine.connect() as connection:
        statuses = connection.execute(sa.text("SELECT DISTINCT status FROM outbox_messages")).scalars().all()
    assert statuses == ["sent"]


def test_configured_providers_get_their_real_adapters_with_the_request_timeout(settings: Settings) -> None:
    configured = settings.model_copy(update={
        "sendgrid": SendGridSettings(api_key=SecretStr("SG.real"), host="http://127.0.0.1:9"),
        "twilio": TwilioSettings(account_sid="AC" + "1" * 32, auth_token=SecretStr("tok"), from_number="+15005550006",
                                 base_url="http://127.0.0.1:9"),
        "dispatch": DispatchSettings(request_timeout_seconds=3.5)})
    with open_channels(configured) as opened:
        assert opened.sandboxed == {"push"}
        email, sms = opened.adapters["email"], opened.adapters["sms"]
        assert isinstance(email, SendGridAdapter) and email.host == "http://127.0.0.1:9"
        assert email._client.client.timeout == 3.5
        assert isinstance(sms, TwilioSmsAdapter) and sms._http.timeout == 3.5


def _recorded(subject: str, content: tuple[tuple[str, str], ...], headers: dict[str, str]) -> object:
    from channels.emulator_records import RecordedEmail

    return RecordedEmail(message_id="m1.0", x_message_id="m1", index=0, from_email="rewards@example.com",
                         to=("zoe@example.com",), cc=(), bcc=(), subject=subject, content=content, template_id=None,
                         headers=headers, custom_args={"outbox_id": "7"}, categories=(), accepted_at=1_700_000_000.0)


def test_eml_files_round_trip_and_refuse_header_injection() -> None:
    from channels.sandbox import eml_bytes

    html = "<p>Bonjour Zoé, 1\u202f250 points =D0 à dépenser</p>" + "x" * 200
    email = _recorded("Joyeux anniversaire, Zoé ! 🎂", (("text/plain", "Bonjour Zoé\r\nligne 2"), ("text/html", html)),
                      {"List-Unsubscribe": "<https://r.example.com/u/abc>\r\nBcc: victim@example.com"})
    parsed = BytesParser(policy=policy.default).parsebytes(eml_bytes(email))  # type: ignore[arg-type]
    assert parsed["Subject"] == "Joyeux anniversaire, Zoé ! 🎂" and parsed["To"] == "zoe@example.com"
    assert parsed["Bcc"] is None and "victim@example.com" in parsed["List-Unsubscribe"]  # one line, no new header
    assert parsed["X-Loyalflow-Custom-Args"] == '{"outbox_id": "7"}'
    text, rich = parsed.get_body(("plain",)), parsed.get_body(("html",))
    assert text is not None and rich is not None and not parsed.defects
    assert text.get_content().rstrip("\n") == "Bonjour Zoé\nligne 2" and rich.get_content().rstrip("\n") == html
    plain_only = BytesParser(policy=policy.default).parsebytes(
        eml_bytes(_recorded("Hi", (("text/plain", "Only text"),), {})))  # type: ignore[arg-type]
    assert not plain_only.is_multipart() and plain_only.get_content().rstrip("\n") == "Only text"
