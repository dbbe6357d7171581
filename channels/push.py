"""One push channel over two transports: Web Push for browser subscriptions, FCM for app tokens.

A push recipient is either a browser subscription (an endpoint URL with ``p256dh``/``auth`` keys) or an app
registration token (no keys). `PushRouter` sends each message through the adapter its recipient needs and
answers in input order, so the dispatcher sees a single "push" adapter.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from channels.base import ChannelAdapter, OutgoingMessage, SendResult
from channels.push_fcm import FcmAdapter
from channels.push_webpush import WebPushAdapter


class PushRouter(ChannelAdapter):
    """Routes push messages: with `push_keys` to `webpush`, without to `fcm`.

    A message whose adapter is not configured gets a PERMANENT result. Each sub-adapter batches and
    checks limits on its own, so the limits declared here only bound what the dispatcher hands over.
    """

    channel: ClassVar[str] = "push"
    provider: ClassVar[str] = "push"
    max_batch: ClassVar[int] = 500
    max_body_bytes: ClassVar[int] = 4096
    default_rate_per_second: ClassVar[float] = 50.0

    def __init__(self, webpush: WebPushAdapter | None = None, fcm: FcmAdapter | None = None) -> None:
        if webpush is None and fcm is None:
            raise ValueError("configure at least one of webpush and fcm")
        self.webpush = webpush
        self.fcm = fcm

    @staticmethod
    def is_web_push(message: OutgoingMessage) -> bool:
        """True for a browser subscription (it carries encryption keys), False for an app token."""
        return bool(message.push_keys)

    def adapter_for(self, message: OutgoingMessage) -> ChannelAdapter | None:
        """The configured adapter this message needs, if any."""
        return self.webpush if self.is_web_push(message) else self.fcm

    def send_batch(self, messages: Sequence[OutgoingMessage]) -> list[SendResult]:
        """Send each message through its transport; one result per message, in input order."""
        ids = [m.message_id for m in messages]
        if len(set(ids)) != len(ids):
            raise ValueError("duplicate message_id in batch")
        results: dict[int, SendResult] = {}
        web: list[OutgoingMessage] = []
        app: list[OutgoingMessage] = []
        for message in messages:
            if message.channel != self.channel:
                results[message.message_id] = SendResult.permanent(
                    message.message_id, f"push sends push, not {message.channel}"
                )
            else:
                (web if self.is_web_push(message) else app).append(message)
        for adapter, group, name in ((self.webpush, web, "web push"), (self.fcm, app, "fcm")):
            if not group:
                continue
            if adapter is None:
                results.update((m.message_id, SendResult.permanent(m.message_id, f"no {name} adapter configured"))
                               for m in group)
            else:
                results.update((r.message_id, r) for r in adapter.send_batch(group))
        return [results[i] for i in ids]

    def body_bytes(self, message: OutgoingMessage) -> int:
        """Measured as the adapter that would send it measures."""
        adapter = self.adapter_for(message)
        return adapter.body_bytes(message) if adapter is not None else super().body_bytes(message)

    def close(self) -> None:
        """Close both adapters."""
        for adapter in (self.webpush, self.fcm):
            if adapter is not None:
                adapter.close()

    def _send_provider_batch(self, messages: Sequence[OutgoingMessage]) -> list[SendResult]:
        return self.send_batch(messages)  # only reachable through the base class; routing happens in send_batch
