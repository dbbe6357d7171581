"""The push channel built from settings: Web Push and/or FCM behind one router, or their sandbox.

In the sandbox, Web Push messages keep their real subscription keys (they are encrypted exactly
as for the member's browser) but go to the emulator's push service instead of the endpoint's
host: the endpoint is a URL on somebody else's server, and the sandbox must never reach it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import replace

from channels.base import ChannelAdapter, OutgoingMessage, SendResult
from channels.emulator import ProviderEmulator
from channels.emulator_push import make_fcm_service_account, make_vapid_keypair
from channels.push import PushRouter
from channels.push_fcm import FcmAdapter
from channels.push_webpush import WebPushAdapter
from channels.sandbox import SANDBOX_RATE_PER_SECOND
from loyalty.settings import Settings


class SandboxWebPushAdapter(WebPushAdapter):
    """Web Push whose every endpoint is redirected to the emulator (one stable path per endpoint)."""

    def __init__(self, emulator_url: str, vapid_private_key: str, vapid_subject: str, **options: object) -> None:
        super().__init__(vapid_private_key, vapid_subject, **options)  # type: ignore[arg-type]
        self.emulator_url = emulator_url.rstrip("/")

    def _send_provider_batch(self, messages: Sequence[OutgoingMessage]) -> list[SendResult]:
        return super()._send_provider_batch([replace(m, to=self._redirect(m.to)) for m in messages])

    def _redirect(self, endpoint: str) -> str:
        return f"{self.emulator_url}/webpush/{hashlib.sha256(endpoint.encode()).hexdigest()[:32]}"


def push_adapter(settings: Settings, emulator: ProviderEmulator | None) -> ChannelAdapter:
    """The push router for the configured providers, or for the emulator when ``emulator`` is given."""
    config, timeout = settings.push, settings.dispatch.request_timeout_seconds
    if emulator is not None:
        vapid_private, _ = make_vapid_keypair()
        webpush: WebPushAdapter | None = SandboxWebPushAdapter(
            emulator.url, vapid_private, config.vapid_subject, timeout=timeout,
            rate_per_second=SANDBOX_RATE_PER_SECOND)
        fcm: FcmAdapter | None = FcmAdapter(make_fcm_service_account(emulator), fcm_url=emulator.url,
                                            timeout=timeout, rate_per_second=SANDBOX_RATE_PER_SECOND)
        return PushRouter(webpush, fcm)
    webpush = fcm = None
    if config.vapid_private_key is not None:
        webpush = WebPushAdapter(config.vapid_private_key.get_secret_value(), config.vapid_subject, timeout=timeout,
                                 rate_per_second=config.messages_per_second)
    if config.fcm_service_account_file is not None:
        fcm = FcmAdapter(config.fcm_service_account_file, timeout=timeout, rate_per_second=config.messages_per_second)
    return PushRouter(webpush, fcm)
