"""FcmAdapter driven through the REAL firebase-admin client against the provider emulator over loopback.

The service account is a locally generated RSA key whose token_uri is the emulator, so google-auth's OAuth
exchange and every FCM v1 send happen for real, offline.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from firebase_admin import messaging

from channels.base import Outcome, OutgoingMessage, SendResult
from channels.emulator import Faults, ProviderEmulator
from channels.emulator_push import make_fcm_service_account
from channels.push_fcm import DEFAULT_RETRY_AFTER, FcmAdapter

PROJECT = "loyalflow-test"
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}
_ESCAPES: list[str] = []


def _watch_network(event: str, args: tuple[Any, ...]) -> None:
    # google-auth would like to call Google on its own (e.g. Regional Access Boundary lookups): record any try.
    if event == "socket.getaddrinfo" and args and args[0] not in _LOOPBACK:
        _ESCAPES.append(str(args[0]))


sys.addaudithook(_watch_network)  # hooks cannot be removed; this one only appends to a list


@pytest.fixture(autouse=True)
def _loopback_only() -> Iterator[None]:
    _ESCAPES.clear()
    yield
    assert _ESCAPES == [], f"a request tried to leave the machine: {_ESCAPES}"


@pytest.fixture
def emulator() -> Iterator[ProviderEmulator]:
    with ProviderEmulator(seed=7) as emu:
        yield emu


@pytest.fixture
def account(emulator: ProviderEmulator) -> dict[str, Any]:
    return make_fcm_service_account(emulator, PROJECT)


@pytest.fixture
def adapter(emulator: ProviderEmulator, account: dict[str, Any]) -> Iterator[FcmAdapter]:
    made = FcmAdapter(account, fcm_url=emulator.url, timeout=2.0)
    yield made
    made.close()


def push(message_id: int, token: str | None = None, **content: Any) -> OutgoingMessage:
    body = {"title": "Double points", "body": "This weekend only", **content}
    return OutgoingMessage(message_id, f"key-{message_id}", "push", token or f"token-{message_id}", body)


def send_one(adapter: FcmAdapter, message: OutgoingMessage) -> SendResult:
    [result] = adapter.send_batch([message])
    return result


def reasons(results: list[SendResult]) -> str:
    return " ".join(r.reason or "" for r in results)


def test_the_private_fcm_url_attribute_exists() -> None:
    # The adapter redirects this private attribute (per app); a firebase-admin upgrade must not drop it silently.
    assert messaging._MessagingService.FCM_URL.endswith("/v1/projects/{0}/messages:send")


def test_sends_notification_and_data(emulator: ProviderEmulator, adapter: FcmAdapter) -> None:
    message = push(1, "tok-a", url="https://loyalty.example.com/offers", image="https://cdn.example.com/a.png",
                   topic="weekend")
    result = send_one(adapter, message)
    assert result.outcome is Outcome.ACCEPTED
    [recorded] = emulator.find_push("tok-a")
    assert result.provider_id == f"projects/{PROJECT}/messages/{recorded.id}"
    assert recorded.body == {
        "token": "tok-a",
        "notification": {"title": "Double points", "body": "This weekend only", "image": "https://cdn.example.com/a.png"},
        "data": {"url": "https://loyalty.example.com/offers"},
        "android": {"collapse_key": "weekend"},
    }
    assert recorded.headers["authorization"].startswith("Bearer ya29.emulator-")
    assert adapter.fcm_url == f"{emulator.url}/v1/projects/{PROJECT}/messages:send"


def test_two_adapters_do_not_share_the_redirect(emulator: ProviderEmulator, adapter: FcmAdapter) -> None:
    other = FcmAdapter(make_fcm_service_account(emulator, "other-project"), fcm_url=emulator.url + "/")
    assert other.fcm_url.endswith("/v1/projects/other-project/messages:send")
    assert adapter.fcm_url.endswith(f"/v1/projects/{PROJECT}/messages:send")
    assert messaging._MessagingService.FCM_URL.startswith("https://fcm.googleapis.com/")
    assert send_one(other, push(1)).outcome is Outcome.ACCEPTED
    other.close()


def test_batch_over_500_is_split_with_per_message_results(emulator: ProviderEmulator, adapter: FcmAdapter) -> None:
    emulator.unregistered_fcm_tokens.update({"token-3", "token-503"})
    results = adapter.send_batch([push(i) for i in range(505)])
    assert [r.message_id for r in results] == list(range(505))
    gone = {r.message_id for r in results if r.effects == ("remove_subscription",)}
    assert gone == {3, 503}
    assert sum(r.outcome is Outcome.ACCEPTED for r in results) == 503
    assert len(emulator.push) == 503
    sends = [r for r in emulator.requests if r.path.endswith("messages:send")]
    assert len(sends) == 505  # send_each: one HTTP request per message
    assert len([r for r in emulator.requests if r.path == "/token"]) == 1  # one access token for both chunks


def test_unregistered_token_asks_to_remove_it(emulator: ProviderEmulator, adapter: FcmAdapter) -> None:
    emulator.unregistered_fcm_tokens.add("stale")
    result = send_one(adapter, push(1, "stale"))
    assert (result.outcome, result.effects) == (Outcome.PERMANENT, ("remove_subscription",))
    assert "UnregisteredError" in (result.reason or "")


def test_quota_exceeded_is_transient_with_retry_after(emulator: ProviderEmulator, adapter: FcmAdapter) -> None:
    emulator.faults = Faults(rate_limit_rate=1.0, retry_after_s=11)
    result = send_one(adapter, push(1))
    assert (result.outcome, result.retry_after) == (Outcome.TRANSIENT, 11.0)
    emulator.faults = Faults(rate_limit_rate=1.0, retry_after_s=-1)
    assert send_one(adapter, push(2)).retry_after == DEFAULT_RETRY_AFTER
    assert emulator.push == []


def test_server_error_is_transient_without_library_retries(emulator: ProviderEmulator, adapter: FcmAdapter) -> None:
    emulator.faults = Faults(error_5xx_rate=1.0)
    result = send_one(adapter, push(1))
    assert result.outcome is Outcome.TRANSIENT
    sends = [r for r in emulator.requests if r.path.endswith("messages:send")]
    assert len(sends) == 1  # firebase-admin's own 4x backoff on 500/503 is switched off: the outbox retries


def test_drop_after_accept_is_unknown_and_not_resent(emulator: ProviderEmulator, adapter: FcmAdapter) -> None:
    emulator.faults = Faults(drop_after_accept_rate=1.0)
    result = send_one(adapter, push(1, "tok-once"))
    assert result.outcome is Outcome.UNKNOWN
    assert len(emulator.find_push("tok-once")) == 1  # FCM has it; no library retry duplicated it


def test_read_timeout_is_unknown(emulator: ProviderEmulator, account: dict[str, Any]) -> None:
    adapter = FcmAdapter(account, fcm_url=emulator.url, timeout=0.3)
    assert send_one(adapter, push(1)).outcome is Outcome.ACCEPTED  # token fetched without delay
    emulator.faults = Faults(delay_s=0.6)
    result = send_one(adapter, push(2))
    adapter.close()
    assert result.outcome is Outcome.UNKNOWN and "ReadTimeout" in (result.reason or "")


def test_connection_refused_is_transient(emulator: ProviderEmulator, adapter: FcmAdapter) -> None:
    assert send_one(adapter, push(1)).outcome is Outcome.ACCEPTED  # holds a valid token now
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    account = make_fcm_service_account(emulator, PROJECT)
    dead = FcmAdapter(account, fcm_url=f"http://127.0.0.1:{port}", timeout=1.0)
    dead._ensure_token()  # the token endpoint is the live emulator; only the send target is dead
    result = send_one(dead, push(2))
    dead.close()
    assert result.outcome is Outcome.TRANSIENT and "not reached" in (result.reason or "")


def test_unknown_service_account_fails_the_batch_permanently(emulator: ProviderEmulator) -> None:
    account = make_fcm_service_account(emulator, PROJECT)
    emulator.fcm_service_accounts.clear()  # the emulator no longer knows the key
    adapter = FcmAdapter(account, fcm_url=emulator.url, timeout=2.0)
    results = adapter.send_batch([push(1), push(2)])
    adapter.close()
    assert [r.outcome for r in results] == [Outcome.PERMANENT] * 2
    assert "credentials" in reasons(results)
    assert [r for r in emulator.requests if r.path.endswith("messages:send")] == []


def test_invalid_message_is_refused_alone(emulator: ProviderEmulator, adapter: FcmAdapter) -> None:
    empty = OutgoingMessage(1, "key-1", "push", "", {"title": "t"})  # firebase-admin refuses it while encoding
    results = adapter.send_batch([empty, push(2)])
    assert [r.outcome for r in results] == [Outcome.PERMANENT, Outcome.ACCEPTED]
    assert "invalid fcm message" in (results[0].reason or "")
    assert len(emulator.push) == 1


def test_invalid_argument_is_permanent(emulator: ProviderEmulator, adapter: FcmAdapter) -> None:
    result = send_one(adapter, push(1, "not a token"))
    assert result.outcome is Outcome.PERMANENT and result.effects == ()
    assert "InvalidArgumentError" in (result.reason or "")


def test_secrets_never_appear_in_reasons(emulator: ProviderEmulator, account: dict[str, Any]) -> None:
    adapter = FcmAdapter(account, fcm_url=emulator.url, timeout=2.0)
    emulator.unregistered_fcm_tokens.add("stale")
    results = adapter.send_batch([push(1, "stale"), push(2, account["private_key"])])
    emulator.faults = Faults(rate_limit_rate=1.0)
    results += adapter.send_batch([push(3)])
    token = adapter._credential.token
    adapter.close()
    text = reasons(results)
    assert token and token not in text
    for line in account["private_key"].splitlines()[1:-1]:
        assert line not in text
