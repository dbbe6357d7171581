"""WebPushAdapter driven through the REAL pywebpush client against the provider emulator over loopback.

The emulator plays the push service (it verifies VAPID) and `make_browser_subscription` plays the browser,
so a test decrypts what the push service received exactly as the browser would.
"""

from __future__ import annotations

import base64
import json
import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
from pydantic import SecretStr

from channels.base import Outcome, OutgoingMessage, SendResult
from channels.emulator import Faults, ProviderEmulator, RecordedPush
from channels.emulator_push import make_browser_subscription, make_vapid_keypair
from channels.push_webpush import DEFAULT_RETRY_AFTER, WebPushAdapter
from loyalty.settings import PushSettings

SUBJECT = "mailto:rewards@example.com"
VAPID_PRIVATE, VAPID_PUBLIC = make_vapid_keypair()


@pytest.fixture
def emulator() -> Iterator[ProviderEmulator]:
    with ProviderEmulator(seed=5) as emu:
        yield emu


@pytest.fixture
def adapter() -> Iterator[WebPushAdapter]:
    made = WebPushAdapter(VAPID_PRIVATE, SUBJECT, timeout=2.0, ttl=3600)
    yield made
    made.close()


Subscription = tuple[dict[str, Any], Callable[[bytes], bytes]]


def subscribe(emu: ProviderEmulator) -> Subscription:
    return make_browser_subscription(emu, VAPID_PUBLIC)


def push(message_id: int, sub: dict[str, Any], **content: Any) -> OutgoingMessage:
    body = {"title": "Double points", "body": "This weekend only", **content}
    return OutgoingMessage(message_id, f"key-{message_id}", "push", sub["endpoint"], body, push_keys=sub["keys"])


def send_one(adapter: WebPushAdapter, message: OutgoingMessage) -> SendResult:
    [result] = adapter.send_batch([message])
    return result


def test_browser_decrypts_title_and_body(emulator: ProviderEmulator, adapter: WebPushAdapter) -> None:
    sub, decrypt = subscribe(emulator)
    result = send_one(adapter, push(1, sub, url="https://loyalty.example.com/offers", topic="weekend-offer"))
    assert result.outcome is Outcome.ACCEPTED
    [recorded] = emulator.find_push(sub["endpoint"])
    assert result.provider_id == f"{emulator.url}/webpush/messages/{recorded.id}"
    assert isinstance(recorded.body, bytes)
    payload = json.loads(decrypt(recorded.body))
    assert payload == {"title": "Double points", "body": "This weekend only", "url": "https://loyalty.example.com/offers"}
    headers = recorded.headers
    assert (headers["content-encoding"], headers["ttl"], headers["urgency"], headers["topic"]) == (
        "aes128gcm", "3600", "normal", "weekend-offer"
    )
    assert "authorization" not in headers  # the emulator does not keep VAPID tokens
    looked_up = requests.get(f"{emulator.url}/_emulator/push", params={"to": sub["endpoint"]}, timeout=2).json()
    assert [item["id"] for item in looked_up] == [recorded.id]
    assert json.loads(decrypt(base64.urlsafe_b64decode(looked_up[0]["body"] + "==")))["title"] == "Double points"


def test_batch_sends_one_request_per_subscription_in_order(
    emulator: ProviderEmulator, adapter: WebPushAdapter
) -> None:
    subs = [subscribe(emulator) for _ in range(12)]
    results = adapter.send_batch([push(i, s, body=f"hello {i}") for i, (s, _) in enumerate(subs)])
    assert [r.message_id for r in results] == list(range(12))
    assert all(r.outcome is Outcome.ACCEPTED for r in results)
    for i, (sub, decrypt) in enumerate(subs):
        [recorded] = emulator.find_push(sub["endpoint"])
        assert isinstance(recorded.body, bytes)
        assert json.loads(decrypt(recorded.body))["body"] == f"hello {i}"


def test_wrong_vapid_key_is_permanent_and_never_leaks(emulator: ProviderEmulator) -> None:
    other_private, _ = make_vapid_keypair()
    sub, _ = subscribe(emulator)  # subscribed with VAPID_PUBLIC
    adapter = WebPushAdapter(other_private, SUBJECT, timeout=2.0)
    result = send_one(adapter, push(1, sub))
    adapter.close()
    assert result.outcome is Outcome.PERMANENT
    assert "VAPID" in (result.reason or "") and "403" in (result.reason or "")
    assert other_private not in (result.reason or "") and VAPID_PRIVATE not in (result.reason or "")
    assert emulator.push == []


def test_vapid_header_is_verified_by_the_push_service(emulator: ProviderEmulator, adapter: WebPushAdapter) -> None:
    sub, _ = subscribe(emulator)
    forged = {"Authorization": "vapid t=eyJhbGciOiJFUzI1NiJ9.e30.AAAA,k=" + VAPID_PUBLIC, "TTL": "60",
              "Content-Encoding": "aes128gcm"}
    assert requests.post(sub["endpoint"], data=b"x", headers=forged, timeout=2).status_code == 403
    assert requests.post(sub["endpoint"], data=b"x", headers={"TTL": "60"}, timeout=2).status_code == 401
    assert send_one(adapter, push(1, sub)).outcome is Outcome.ACCEPTED


def test_pem_key_and_application_server_key(emulator: ProviderEmulator) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    adapter = WebPushAdapter(pem, SUBJECT, timeout=2.0)
    sub, _ = make_browser_subscription(emulator, adapter.application_server_key)
    assert send_one(adapter, push(1, sub)).outcome is Outcome.ACCEPTED
    adapter.close()
    with pytest.raises(ValueError, match="not a valid") as raised:
        WebPushAdapter("not-a-key-secret", SUBJECT)
    assert "not-a-key-secret" not in str(raised.value)


def test_gone_subscription_asks_to_remove_it(emulator: ProviderEmulator, adapter: WebPushAdapter) -> None:
    sub, _ = subscribe(emulator)
    emulator.gone_push_endpoints.add(sub["endpoint"])
    result = send_one(adapter, push(1, sub))
    assert (result.outcome, result.effects) == (Outcome.PERMANENT, ("remove_subscription",))
    assert "410" in (result.reason or "")


def test_rate_limit_is_transient_with_retry_after(emulator: ProviderEmulator, adapter: WebPushAdapter) -> None:
    sub, _ = subscribe(emulator)
    emulator.faults = Faults(rate_limit_rate=1.0, retry_after_s=9)
    result = send_one(adapter, push(1, sub))
    assert (result.outcome, result.retry_after) == (Outcome.TRANSIENT, 9.0)
    emulator.faults = Faults(rate_limit_rate=1.0, retry_after_s=-1)
    assert send_one(adapter, push(2, sub)).retry_after == DEFAULT_RETRY_AFTER  # ignored header: default
    assert emulator.push == []


def test_server_error_is_transient(emulator: ProviderEmulator, adapter: WebPushAdapter) -> None:
    sub, _ = subscribe(emulator)
    emulator.faults = Faults(error_5xx_rate=1.0)
    assert send_one(adapter, push(1, sub)).outcome is Outcome.TRANSIENT


def test_drop_after_accept_is_unknown(emulator: ProviderEmulator, adapter: WebPushAdapter) -> None:
    sub, _ = subscribe(emulator)
    emulator.faults = Faults(drop_after_accept_rate=1.0)
    result = send_one(adapter, push(1, sub))
    assert result.outcome is Outcome.UNKNOWN
    assert len(emulator.find_push(sub["endpoint"])) == 1  # the push service has it


def test_read_timeout_is_unknown(emulator: ProviderEmulator) -> None:
    sub, _ = subscribe(emulator)
    emulator.faults = Faults(delay_s=0.5)
    adapter = WebPushAdapter(VAPID_PRIVATE, SUBJECT, timeout=0.1)
    result = send_one(adapter, push(1, sub))
    adapter.close()
    assert result.outcome is Outcome.UNKNOWN and "ReadTimeout" in (result.reason or "")


def test_connection_refused_is_transient(adapter: WebPushAdapter) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sub, _ = make_browser_subscription(f"http://127.0.0.1:{port}")
    result = send_one(adapter, push(1, sub))
    assert result.outcome is Outcome.TRANSIENT and "not reached" in (result.reason or "")


def test_limits_and_bad_input_are_refused_without_a_request(
    emulator: ProviderEmulator, adapter: WebPushAdapter
) -> None:
    sub, _ = subscribe(emulator)
    fits = push(1, sub, body="")
    room = adapter.max_body_bytes - adapter.body_bytes(fits)
    assert send_one(adapter, push(2, sub, body="a" * room)).outcome is Outcome.ACCEPTED  # encrypts to 4096 bytes
    assert send_one(adapter, push(3, sub, body="a" * (room + 1))).outcome is Outcome.PERMANENT
    assert send_one(adapter, push(4, sub, topic="not a valid topic!")).outcome is Outcome.PERMANENT
    no_keys = OutgoingMessage(5, "key-5", "push", sub["endpoint"], {"title": "t"})
    assert "p256dh" in (send_one(adapter, no_keys).reason or "")
    bad_keys = push(6, {"endpoint": sub["endpoint"], "keys": {"p256dh": "AAAA", "auth": "AAAA"}})
    assert send_one(adapter, bad_keys).effects == ("invalid_address",)
    assert len(emulator.push) == 1


def test_from_settings_and_listener(emulator: ProviderEmulator) -> None:
    seen: list[tuple[str, object]] = []
    emulator.add_listener(lambda kind, record: seen.append((kind, record)))
    emulator.add_listener(lambda kind, record: 1 / 0)  # a broken listener never breaks the request
    settings = PushSettings(vapid_private_key=SecretStr(VAPID_PRIVATE), messages_per_second=7)
    adapter = WebPushAdapter.from_settings(settings, timeout=2.0)
    assert adapter.rate_per_second == 7.0
    sub, _ = subscribe(emulator)
    assert send_one(adapter, push(1, sub)).outcome is Outcome.ACCEPTED
    adapter.close()
    assert [(kind, type(record)) for kind, record in seen] == [("push", RecordedPush)]
    with pytest.raises(ValueError, match="not configured"):
        WebPushAdapter.from_settings(PushSettings())
