"""PushRouter: browser subscriptions go to Web Push, app tokens to FCM, results in input order."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from channels.base import Outcome, OutgoingMessage
from channels.emulator import ProviderEmulator
from channels.emulator_push import make_browser_subscription, make_fcm_service_account, make_vapid_keypair
from channels.push import PushRouter
from channels.push_fcm import FcmAdapter
from channels.push_webpush import WebPushAdapter

VAPID_PRIVATE, VAPID_PUBLIC = make_vapid_keypair()


@pytest.fixture
def emulator() -> Iterator[ProviderEmulator]:
    with ProviderEmulator(seed=11) as emu:
        yield emu


def app_push(message_id: int, token: str) -> OutgoingMessage:
    return OutgoingMessage(message_id, f"k{message_id}", "push", token, {"title": "Hi", "body": f"app {message_id}"})


def test_routes_by_push_keys_in_input_order(emulator: ProviderEmulator) -> None:
    webpush = WebPushAdapter(VAPID_PRIVATE, "mailto:rewards@example.com", timeout=2.0)
    fcm = FcmAdapter(make_fcm_service_account(emulator), fcm_url=emulator.url, timeout=2.0)
    router = PushRouter(webpush, fcm)
    sub, decrypt = make_browser_subscription(emulator, VAPID_PUBLIC)
    web = OutgoingMessage(2, "k2", "push", sub["endpoint"], {"title": "Hi", "body": "browser"}, push_keys=sub["keys"])
    email = OutgoingMessage(4, "k4", "email", "a@example.com", {"subject": "x"})
    results = router.send_batch([app_push(1, "tok-1"), web, app_push(3, "tok-3"), email])
    router.close()
    assert [r.message_id for r in results] == [1, 2, 3, 4]
    assert [r.outcome for r in results] == [Outcome.ACCEPTED] * 3 + [Outcome.PERMANENT]
    [browser] = emulator.find_push(sub["endpoint"])
    assert browser.kind == "webpush" and isinstance(browser.body, bytes)
    assert json.loads(decrypt(browser.body))["body"] == "browser"
    assert [p.kind for p in emulator.find_push("tok-1") + emulator.find_push("tok-3")] == ["fcm", "fcm"]
    assert all(r.cost_units == 1 for r in results[:3])


def test_missing_adapter_is_permanent(emulator: ProviderEmulator) -> None:
    fcm = FcmAdapter(make_fcm_service_account(emulator), fcm_url=emulator.url, timeout=2.0)
    router = PushRouter(fcm=fcm)
    sub, _ = make_browser_subscription(emulator)
    web = OutgoingMessage(1, "k1", "push", sub["endpoint"], {"title": "Hi"}, push_keys=sub["keys"])
    results = router.send_batch([web, app_push(2, "tok-2")])
    router.close()
    assert [r.outcome for r in results] == [Outcome.PERMANENT, Outcome.ACCEPTED]
    assert results[0].reason == "no web push adapter configured"
    webonly = PushRouter(webpush=WebPushAdapter(VAPID_PRIVATE, "mailto:rewards@example.com"))
    [no_fcm] = webonly.send_batch([app_push(3, "tok-3")])
    webonly.close()
    assert (no_fcm.outcome, no_fcm.reason) == (Outcome.PERMANENT, "no fcm adapter configured")
    with pytest.raises(ValueError, match="at least one"):
        PushRouter()
    with pytest.raises(ValueError, match="duplicate"):
        PushRouter(fcm=fcm).send_batch([app_push(1, "a"), app_push(1, "b")])
