"""The provider emulator driven by the REAL sendgrid and twilio clients over loopback."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

import pytest
import requests
from python_http_client.exceptions import BadRequestsError, HTTPError, TooManyRequestsError, UnauthorizedError
from sendgrid import SendGridAPIClient
from sendgrid.helpers.eventwebhook import EventWebhook
from sendgrid.helpers.mail import Category, CustomArg, Header, Mail, MailSettings, Personalization, SandBoxMode, To
from twilio.base.exceptions import TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.request_validator import RequestValidator
from twilio.rest import Client

from channels.emulator import Faults, ProviderEmulator
from channels.emulator_twilio import num_segments
from channels.emulator_webhooks import (
    SENDGRID_SIGNATURE_HEADER,
    SENDGRID_TIMESTAMP_HEADER,
    generate_sendgrid_webhook_keypair,
)

SID, TOKEN = ProviderEmulator.TWILIO_ACCOUNT_SID, ProviderEmulator.TWILIO_AUTH_TOKEN
TIMEOUT = 5.0
# What a dropped connection looks like to each client (see the report table in the emulator docs).
SENDGRID_DROP_ERRORS = (urllib.error.URLError, ConnectionError)


@pytest.fixture
def emulator() -> Iterator[ProviderEmulator]:
    with ProviderEmulator(seed=7) as emu:
        yield emu


def sendgrid_client(emu: ProviderEmulator) -> SendGridAPIClient:
    client = SendGridAPIClient(api_key="SG.test", host=emu.url)
    client.client.timeout = TIMEOUT
    return client


class _LoopbackTwilioHttpClient(TwilioHttpClient):
    """Rewrites the https://api.twilio.com prefix: works for every resource, whatever the domain object caches."""

    def __init__(self, base_url: str) -> None:
        super().__init__(timeout=TIMEOUT)
        self.base_url = base_url

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        return super().request(method, url.replace("https://api.twilio.com", self.base_url, 1), *args, **kwargs)


def twilio_client(emu: ProviderEmulator, token: str = TOKEN) -> Client:
    return Client(SID, token, http_client=_LoopbackTwilioHttpClient(emu.url))


def offer_mail(n: int = 3) -> Mail:
    mail = Mail(from_email="club@example.com", subject="Your offer", plain_text_content="Hi", html_content="<p>Hi</p>")
    for i in range(n):
        p = Personalization()
        p.add_to(To(f"member{i}@example.com"))
        p.add_custom_arg(CustomArg("outbox_id", f"ob-{i}"))
        mail.add_personalization(p, index=i)  # without index= it inserts at 0
    mail.add_custom_arg(CustomArg("campaign", "spring"))
    mail.add_category(Category("tier-upgrade"))
    mail.add_header(Header("List-Unsubscribe", "<https://example.com/u/1>"))
    mail.add_header(Header("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"))
    return mail


def test_bounded_retention_keeps_the_most_recent_records() -> None:
    """The sandbox's emulator keeps recent history only, so a long campaign does not grow its memory."""
    with ProviderEmulator(retain=4) as emu:
        for _ in range(3):
            assert sendgrid_client(emu).send(offer_mail(2)).status_code == 202
        assert [e.custom_args["outbox_id"] for e in emu.emails] == ["ob-0", "ob-1"] * 2
        assert len(emu.requests) == 3  # fewer than the bound: nothing dropped yet
        for _ in range(3):
            sendgrid_client(emu).send(offer_mail(1))
        assert len(emu.requests) == 4
        assert [e.custom_args["outbox_id"] for e in emu.emails] == ["ob-1", "ob-0", "ob-0", "ob-0"]
        assert len(emu.find_email("outbox_id", "ob-0")) == 3  # lookups see what is kept


# -- SendGrid ------------------------------------------------------------------------------------


def test_sendgrid_send_records_each_personalization(emulator: ProviderEmulator) -> None:
    response = sendgrid_client(emulator).send(offer_mail())
    assert response.status_code == 202
    x_message_id = response.headers["X-Message-Id"]
    assert x_message_id
    assert [e.to for e in emulator.emails] == [(f"member{i}@example.com",) for i in range(3)]
    first = emulator.emails[0]
    assert first.custom_args == {"campaign": "spring", "outbox_id": "ob-0"}
    assert first.message_id == f"{x_message_id}.0"
    assert first.categories == ("tier-upgrade",)
    assert first.headers["List-Unsubscribe"] == "<https://example.com/u/1>"
    assert first.subject == "Your offer"
    assert ("text/plain", "Hi") in first.content
    assert emulator.find_email("outbox_id", "ob-2") == [emulator.emails[2]]
    # A second send gets a fresh X-Message-Id.
    assert sendgrid_client(emulator).send(offer_mail(1)).headers["X-Message-Id"] != x_message_id
    # The raw log keeps the exact request for contract checks.
    raw = emulator.requests[0]
    assert (raw.method, raw.path, raw.status) == ("POST", "/v3/mail/send", 202)
    assert json.loads(raw.body)["personalizations"][2]["custom_args"] == {"outbox_id": "ob-2"}


def test_sendgrid_lookup_endpoint(emulator: ProviderEmulator) -> None:
    sendgrid_client(emulator).send(offer_mail())
    with urllib.request.urlopen(f"{emulator.url}/_emulator/emails?custom_arg=outbox_id&value=ob-1") as r:
        found = json.loads(r.read())
    assert [f["to"] for f in found] == [["member1@example.com"]]


def test_sendgrid_sandbox_mode_records_nothing(emulator: ProviderEmulator) -> None:
    mail = offer_mail()
    settings = MailSettings()
    settings.sandbox_mode = SandBoxMode(True)
    mail.mail_settings = settings
    assert sendgrid_client(emulator).send(mail).status_code == 200
    assert emulator.emails == []


def test_sendgrid_rejects_non_string_custom_args(emulator: ProviderEmulator) -> None:
    body = offer_mail().get()
    body["personalizations"][1]["custom_args"]["outbox_id"] = 42
    with pytest.raises(BadRequestsError) as err:
        sendgrid_client(emulator).send(body)
    errors = json.loads(err.value.body)["errors"]
    assert errors[0]["field"] == "personalizations.1.custom_args.outbox_id"
    assert "string" in errors[0]["message"]
    assert emulator.emails == []


def test_sendgrid_rejects_too_many_recipients_and_missing_parts(emulator: ProviderEmulator) -> None:
    body = offer_mail(1).get()
    body["personalizations"] = [{"to": [{"email": f"m{i}@example.com"}]} for i in range(1001)]
    del body["content"]
    with pytest.raises(BadRequestsError) as err:
        sendgrid_client(emulator).send(body)
    fields = {e["field"] for e in json.loads(err.value.body)["errors"]}
    assert fields == {"personalizations", "content"}


def test_sendgrid_requires_a_bearer_key(emulator: ProviderEmulator) -> None:
    emulator.sendgrid_api_keys = {"SG.other"}
    with pytest.raises(UnauthorizedError):
        sendgrid_client(emulator).send(offer_mail())


def test_sendgrid_429_carries_retry_after(emulator: ProviderEmulator) -> None:
    emulator.faults = Faults(rate_limit_rate=1.0, retry_after_s=7)
    with pytest.raises(TooManyRequestsError) as err:
        sendgrid_client(emulator).send(offer_mail())
    assert err.value.headers["Retry-After"] == "7"
    assert int(err.value.headers["X-RateLimit-Reset"]) > 0
    assert emulator.emails == [] and emulator.stats["rate_limit"] == 1


def test_sendgrid_5xx_is_an_http_error(emulator: ProviderEmulator) -> None:
    emulator.faults = Faults(error_5xx_rate=1.0)
    with pytest.raises(HTTPError) as err:
        sendgrid_client(emulator).send(offer_mail())
    assert err.value.status_code in (500, 503)
    assert emulator.emails == []


def test_sendgrid_drop_before_processing(emulator: ProviderEmulator) -> None:
    emulator.faults = Faults(drop_rate=1.0)
    with pytest.raises(SENDGRID_DROP_ERRORS):
        sendgrid_client(emulator).send(offer_mail())
    assert emulator.emails == [] and emulator.stats["drop"] == 1
    assert emulator.requests[0].status is None


def test_sendgrid_drop_after_accept_is_ambiguous(emulator: ProviderEmulator) -> None:
    emulator.faults = Faults(drop_after_accept_rate=1.0)
    with pytest.raises(SENDGRID_DROP_ERRORS) as err:
        sendgrid_client(emulator).send(offer_mail())
    # urllib turns the closed socket into http.client.RemoteDisconnected (a ConnectionResetError).
    assert isinstance(err.value, ConnectionError), type(err.value)
    assert len(emulator.emails) == 3 and emulator.stats["drop_after_accept"] == 1
    assert emulator.find_email("outbox_id", "ob-1")  # the outbox can reconcile


def test_delay_slows_the_answer(emulator: ProviderEmulator) -> None:
    emulator.faults = Faults(delay_s=0.3)
    client = sendgrid_client(emulator)
    client.client.timeout = 0.1
    with pytest.raises(TimeoutError):
        client.send(offer_mail())
    assert emulator.stats["delay"] == 1


def test_fault_rate_is_binomial_and_nothing_failing_is_recorded(emulator: ProviderEmulator) -> None:
    emulator.faults = Faults(error_5xx_rate=0.2)
    client, n, failures = sendgrid_client(emulator), 500, 0
    for _ in range(n):
        try:
            client.send(offer_mail(1))
        except HTTPError:
            failures += 1
    injected = emulator.stats["error_5xx"]
    # mean 100, sd ~8.9: five sd either side
    assert 55 <= injected <= 145
    assert failures == injected
    assert len(emulator.emails) == n - injected


# -- Twilio --------------------------------------------------------------------------------------


def test_twilio_create_and_fetch(emulator: ProviderEmulator) -> None:
    client = twilio_client(emulator)
    message = client.messages.create(
        to="+447700900123", from_="+15005550006", body="Gold! 500 bonus points", status_callback="https://x/cb"
    )
    assert message.sid.startswith("SM") and len(message.sid) == 34
    assert message.status == "queued" and message.num_segments == "1"
    assert message.to == "+447700900123"
    recorded = emulator.sms[0]
    assert (recorded.sid, recorded.status_callback) == (message.sid, "https://x/cb")
    assert emulator.find_sms("+447700900123", "Gold! 500 bonus points") == [recorded]
    assert client.messages(message.sid).fetch().body == "Gold! 500 bonus points"


def test_twilio_fetch_unknown_is_404(emulator: ProviderEmulator) -> None:
    with pytest.raises(TwilioRestException) as err:
        twilio_client(emulator).messages("SM" + "f" * 32).fetch()
    assert (err.value.status, err.value.code) == (404, 20404)


@pytest.mark.parametrize(("to", "code"), [("07700 900123", 21211), ("+447700900999", 21610)])
def test_twilio_permanent_errors(emulator: ProviderEmulator, to: str, code: int) -> None:
    emulator.opt_out("+447700900999")
    with pytest.raises(TwilioRestException) as err:
        twilio_client(emulator).messages.create(to=to, from_="+15005550006", body="hi")
    assert (err.value.status, err.value.code) == (400, code)
    assert emulator.sms == []


def test_twilio_wrong_token_is_401(emulator: ProviderEmulator) -> None:
    with pytest.raises(TwilioRestException) as err:
        twilio_client(emulator, token="wrong").messages.create(to="+447700900123", from_="+15005550006", body="hi")
    assert (err.value.status, err.value.code) == (401, 20003)


def test_twilio_faults(emulator: ProviderEmulator) -> None:
    client = twilio_client(emulator)
    emulator.faults = Faults(rate_limit_rate=1.0)
    with pytest.raises(TwilioRestException) as err:
        client.messages.create(to="+447700900123", from_="+15005550006", body="hi")
    assert (err.value.status, err.value.code) == (429, 20429)
    emulator.faults = Faults(error_5xx_rate=1.0)
    with pytest.raises(TwilioRestException) as err:
        client.messages.create(to="+447700900123", from_="+15005550006", body="hi")
    assert err.value.status in (500, 503)
    assert emulator.sms == []
    emulator.faults = Faults(drop_after_accept_rate=1.0)
    with pytest.raises(requests.exceptions.ConnectionError):  # not a subclass of the builtin ConnectionError
        client.messages.create(to="+447700900123", from_="+15005550006", body="hi")
    assert len(emulator.find_sms("+447700900123", "hi")) == 1


def test_segment_approximation() -> None:
    assert num_segments("a" * 160) == 1
    assert num_segments("a" * 161) == 2
    assert num_segments("é" * 70) == 1
    assert num_segments("é" * 71) == 2


# -- Webhooks ------------------------------------------------------------------------------------


class _Received:
    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str], bytes]] = []


@pytest.fixture
def receiver() -> Iterator[tuple[str, _Received]]:
    received = _Received()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.requests.append((self.path, dict(self.headers.items()), body))
            self.send_response(204)
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()
        server.server_close()


def test_sendgrid_events_are_signed_like_sendgrid(emulator: ProviderEmulator, receiver: tuple[str, _Received]) -> None:
    url, received = receiver
    sendgrid_client(emulator).send(offer_mail(2))
    private_key, public_key = generate_sendgrid_webhook_keypair()
    events = [(emulator.emails[0], "delivered"), (emulator.emails[1], "bounce")]
    assert emulator.fire_sendgrid_events(url + "/hooks/sendgrid", events, private_key) == 204
    _, headers, raw = received.requests[0]
    signature, timestamp = headers[SENDGRID_SIGNATURE_HEADER], headers[SENDGRID_TIMESTAMP_HEADER]
    verifier = EventWebhook(public_key)
    assert verifier.verify_signature(raw.decode(), signature, timestamp)
    assert not verifier.verify_signature(raw.decode().replace("bounce", "open"), signature, timestamp)
    payload = json.loads(raw)
    assert [(e["event"], e["email"], e["outbox_id"]) for e in payload] == [
        ("delivered", "member0@example.com", "ob-0"),
        ("bounce", "member1@example.com", "ob-1"),
    ]
    assert payload[0]["sg_message_id"] == emulator.emails[0].message_id
    assert payload[0]["sg_event_id"] != payload[1]["sg_event_id"]


def test_twilio_status_callback_is_signed_like_twilio(
    emulator: ProviderEmulator, receiver: tuple[str, _Received]
) -> None:
    url, received = receiver
    sid = twilio_client(emulator).messages.create(to="+447700900123", from_="+15005550006", body="hi").sid
    callback = url + "/hooks/twilio?member=42"
    assert emulator.fire_twilio_status(callback, sid, "undelivered", error_code=30003) == 204
    _, headers, raw = received.requests[0]
    params = {k: v[0] for k, v in parse_qs(raw.decode()).items()}
    assert (params["MessageSid"], params["MessageStatus"], params["ErrorCode"]) == (sid, "undelivered", "30003")
    validator = RequestValidator(TOKEN)
    assert validator.validate(callback, params, headers["X-Twilio-Signature"])
    assert not validator.validate(callback, {**params, "MessageStatus": "delivered"}, headers["X-Twilio-Signature"])
    # The stored resource follows the callback, so a fetch during reconciliation agrees.
    assert twilio_client(emulator).messages(sid).fetch().status == "undelivered"


def test_twilio_messaging_service_and_lookup_endpoint(emulator: ProviderEmulator) -> None:
    mg = "MG" + "1" * 32
    message = twilio_client(emulator).messages.create(to="+447700900123", messaging_service_sid=mg, body="hi")
    assert (message.status, message.messaging_service_sid) == ("accepted", mg)
    with urllib.request.urlopen(f"{emulator.url}/_emulator/sms?to=%2B447700900123&body=hi") as r:
        assert [s["sid"] for s in json.loads(r.read())] == [message.sid]


def test_concurrent_sends_are_all_recorded_and_reset_clears(emulator: ProviderEmulator) -> None:
    def send(i: int) -> None:
        body = offer_mail(1).get()
        body["personalizations"][0]["custom_args"]["outbox_id"] = f"c-{i}"
        sendgrid_client(emulator).send(body)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(e.custom_args["outbox_id"] for e in emulator.emails) == sorted(f"c-{i}" for i in range(20))
    assert len({e.x_message_id for e in emulator.emails}) == 20
    emulator.reset()
    assert (emulator.emails, emulator.requests, dict(emulator.stats)) == ([], [], {})


def test_malformed_but_valid_json_gets_an_answer(emulator: ProviderEmulator) -> None:
    body = offer_mail(1).get()
    body["headers"] = ["not", "an", "object"]
    with pytest.raises(HTTPError) as err:
        sendgrid_client(emulator).send(body)
    assert err.value.status_code == 500 and emulator.stats["emulator_error"] == 1
