"""The webhook endpoints over the real app and database: signatures, replay, effects."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy.engine import Engine
from twilio.request_validator import RequestValidator

from channels.emulator_webhooks import (
    SENDGRID_SIGNATURE_HEADER,
    SENDGRID_TIMESTAMP_HEADER,
    generate_sendgrid_webhook_keypair,
)
from loyalty.consent import suppress
from loyalty.settings import SendGridSettings, Settings, TwilioSettings, WebSettings
from loyalty.web.app import create_app
from tests.test_delivery_events import (
    consent,
    event_count,
    new_member,
    outbox_row,
    sent_message,
    sg_event,
    suppressions,
)

PUBLIC = "https://rewards.example.com"
TWILIO_TOKEN = "twilio-auth-token-for-tests"
PRIVATE_KEY, PUBLIC_KEY = generate_sendgrid_webhook_keypair()


def make_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "web": WebSettings(public_base_url=PUBLIC, secret_key=SecretStr("web-secret")),
        "sendgrid": SendGridSettings(webhook_public_key=SecretStr(PUBLIC_KEY)),
        "twilio": TwilioSettings(auth_token=SecretStr(TWILIO_TOKEN)),
    } | overrides
    return Settings(**values)


@pytest.fixture
def client(engine: Engine) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(), engine)) as test_client:
        yield test_client


def signed(events: list[dict[str, Any]], *, timestamp: int | None = None,
           key: ec.EllipticCurvePrivateKey = PRIVATE_KEY) -> tuple[bytes, dict[str, str]]:
    """A SendGrid body and its headers, signed as SendGrid does (over timestamp + raw bytes)."""
    body = json.dumps(events).encode()
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    signature = key.sign(stamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    return body, {"Content-Type": "application/json", SENDGRID_SIGNATURE_HEADER: base64.b64encode(signature).decode(),
                  SENDGRID_TIMESTAMP_HEADER: stamp}


def twilio_post(client: TestClient, path: str, params: dict[str, str], *, token: str = TWILIO_TOKEN) -> Any:
    """Form-POST ``params`` signed for the *public* URL, as Twilio does behind our proxy."""
    signature = RequestValidator(token).compute_signature(PUBLIC + path, params)
    return client.post(path, data=params, headers={"X-Twilio-Signature": signature})


def test_signed_sendgrid_batch_applies_and_a_replay_changes_nothing(client: TestClient, engine: Engine) -> None:
    (a, a_mail), (b, b_mail) = new_member(engine), new_member(engine)
    ma, mb = sent_message(engine, a, "email", "sg1"), sent_message(engine, b, "email", "sg2")
    body, headers = signed([sg_event("delivered", ma, a_mail), sg_event("bounce", mb, b_mail, type="bounce"),
                            sg_event("unsubscribe", ma, a_mail)])
    first = client.post("/webhooks/sendgrid/events", content=body, headers=headers)
    assert first.status_code == 200 and first.json() == {"stored": 3, "duplicates": 0}
    assert outbox_row(engine, ma)[0] == "delivered" and outbox_row(engine, mb)[0] == "bounced"
    assert suppressions(engine) == {("email", b_mail, "hard_bounce")}
    assert consent(engine, a, "email") == (False, "sendgrid:unsubscribe")
    replay = client.post("/webhooks/sendgrid/events", content=body, headers=headers)
    assert replay.status_code == 200 and replay.json() == {"stored": 0, "duplicates": 3}
    assert event_count(engine) == 3


# 30 s past each bound: a loaded machine can take seconds between signing and checking.
@pytest.mark.parametrize("age", [630, -330])
def test_sendgrid_timestamps_outside_the_window_are_refused(client: TestClient, engine: Engine, age: int) -> None:
    member_id, email = new_member(engine)
    msg = sent_message(engine, member_id, "email", "sg3")
    body, headers = signed([sg_event("delivered", msg, email)], timestamp=int(time.time()) - age)
    response = client.post("/webhooks/sendgrid/events", content=body, headers=headers)
    assert response.status_code == 403
    assert event_count(engine) == 0 and outbox_row(engine, msg)[0] == "sent"


def test_forged_or_altered_sendgrid_posts_write_nothing(client: TestClient, engine: Engine) -> None:
    member_id, email = new_member(engine)
    msg = sent_message(engine, member_id, "email", "sg4")
    events = [sg_event("spamreport", msg, email)]
    other_key, _ = generate_sendgrid_webhook_keypair()
    forged_body, forged = signed(events, key=other_key)
    body, headers = signed(events)
    attempts = [(forged_body, forged),
                (body.replace(b"spamreport", b"unsubscribe"), headers),  # altered after signing
                (json.dumps(events, indent=1).encode(), headers),  # same JSON, other bytes
                (body, {"Content-Type": "application/json"}),  # unsigned
                (body, headers | {SENDGRID_SIGNATURE_HEADER: "not base64!"})]
    for content, hdrs in attempts:
        assert client.post("/webhooks/sendgrid/events", content=content, headers=hdrs).status_code == 403
    assert event_count(engine) == 0 and suppressions(engine) == set()
    assert consent(engine, member_id, "email") == (True, "import")


def test_without_a_verification_key_sendgrid_events_are_refused(engine: Engine) -> None:
    app = create_app(make_settings(sendgrid=SendGridSettings()), engine)
    with TestClient(app) as client:
        body, headers = signed([sg_event("delivered", 1, "x@example.com")])
        response = client.post("/webhooks/sendgrid/events", content=body, headers=headers)
    assert response.status_code == 503 and "webhook_public_key" in response.json()["detail"]
    assert event_count(engine) == 0


def test_twilio_status_callbacks(client: TestClient, engine: Engine) -> None:
    ok, _ = new_member(engine, phone="+15145550201")
    stopped, _ = new_member(engine, phone="+15145550202")
    m_ok, m_stop = sent_message(engine, ok, "sms", "SMok"), sent_message(engine, stopped, "sms", "SMstop")
    path = "/webhooks/twilio/status"
    assert twilio_post(client, path, {"MessageSid": "SMok", "MessageStatus": "delivered"}).status_code == 204
    late = twilio_post(client, path, {"MessageSid": "SMok", "MessageStatus": "sent"})
    assert late.status_code == 204 and outbox_row(engine, m_ok)[0] == "delivered"
    response = twilio_post(client, path, {"MessageSid": "SMstop", "MessageStatus": "undelivered",
                                          "ErrorCode": "21610", "To": "+15145550202"})
    assert response.status_code == 204
    assert outbox_row(engine, m_stop) == ("bounced", "twilio undelivered: error 21610")
    assert consent(engine, stopped, "sms") == (False, "twilio:undelivered")
    assert suppressions(engine) == {("sms", "+15145550202", "sms_stop")}


def test_twilio_signatures_are_checked_against_the_public_url(client: TestClient, engine: Engine) -> None:
    member_id, _ = new_member(engine, phone="+15145550203")
    msg = sent_message(engine, member_id, "sms", "SMx")
    params = {"MessageSid": "SMx", "MessageStatus": "delivered"}
    internal = RequestValidator(TWILIO_TOKEN).compute_signature("http://testserver/webhooks/twilio/status", params)
    wrong_token = twilio_post(client, "/webhooks/twilio/status", params, token="other")
    assert wrong_token.status_code == 403
    assert client.post("/webhooks/twilio/status", data=params,
                       headers={"X-Twilio-Signature": internal}).status_code == 403
    assert client.post("/webhooks/twilio/status", data=params).status_code == 403
    assert outbox_row(engine, msg)[0] == "sent" and event_count(engine) == 0


def test_inbound_stop_then_start(client: TestClient, engine: Engine) -> None:
    phone = "+15145550204"
    (a, _), (b, _) = new_member(engine, phone=phone), new_member(engine, phone=phone)
    with engine.begin() as connection:  # an invalid-number suppression must survive START
        suppress(connection, "sms", "+15145550299", "invalid_address")
    path = "/webhooks/twilio/inbound"
    stop = twilio_post(client, path, {"From": phone, "Body": "  stop "})
    assert stop.status_code == 200 and stop.headers["content-type"].startswith("application/xml")
    assert stop.text.endswith("<Response/>")
    assert consent(engine, a, "sms") == consent(engine, b, "sms") == (False, "sms_stop")
    assert ("sms", phone, "sms_stop") in suppressions(engine)
    start = twilio_post(client, path, {"From": phone, "Body": "Start"})
    assert start.status_code == 200 and "<Message>" not in start.text
    assert consent(engine, a, "sms") == consent(engine, b, "sms") == (True, "sms_start")
    assert suppressions(engine) == {("sms", "+15145550299", "invalid_address")}


def test_inbound_help_and_other_texts(client: TestClient, engine: Engine) -> None:
    member_id, _ = new_member(engine, phone="+15145550205")
    help_reply = twilio_post(client, "/webhooks/twilio/inbound", {"From": "+15145550205", "Body": "help"})
    assert "<Response><Message>" in help_reply.text and "Reply STOP" in help_reply.text
    other = twilio_post(client, "/webhooks/twilio/inbound", {"From": "+15145550205", "Body": "stop please <3"})
    assert other.text.endswith("<Response/>")
    assert consent(engine, member_id, "sms") == (True, "import")  # only the exact keyword counts
    with engine.connect() as connection:
        assert connection.execute(sa.text("SELECT count(*) FROM suppressions")).scalar_one() == 0


def test_stop_from_an_unknown_number_still_suppresses_it(client: TestClient, engine: Engine) -> None:
    twilio_post(client, "/webhooks/twilio/inbound", {"From": "+15145550206", "Body": "QUIT"})
    assert suppressions(engine) == {("sms", "+15145550206", "sms_stop")}


def test_healthz(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
