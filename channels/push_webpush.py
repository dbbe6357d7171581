"""Web Push adapter: the real ``pywebpush`` client (VAPID + aes128gcm) behind the `ChannelAdapter` seam.

One HTTP request per subscription (push services have no batch send), run through a small thread pool on
one keep-alive `requests.Session`. The payload is the JSON of the message content (title, body, url, image);
``topic`` travels as the ``Topic`` header so a newer message replaces an undelivered older one. 404/410 mean
the browser dropped the subscription: the result asks the outbox to delete it. The VAPID private key never
appears in a reason.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any, ClassVar

import requests
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_private_key
from py_vapid import Vapid
from pywebpush import WebPushException, webpush

from channels.base import ChannelAdapter, OutgoingMessage, SendResult
from channels.transport import never_connected, parse_retry_after
from loyalty.settings import PushSettings

DEFAULT_RETRY_AFTER = 30.0  # a 429 without Retry-After: back off for a while rather than hammer the service
_TOPIC = re.compile(r"[A-Za-z0-9_-]{1,32}")  # RFC 8030: at most 32 base64url characters
_URGENCIES = frozenset({"very-low", "low", "normal", "high"})
# aes128gcm wraps the payload in an 86-byte header (salt, record size, sender key), a 16-byte tag and a
# 1-byte padding delimiter; push services must accept 4096 encrypted bytes, so 3993 plaintext bytes fit.
_ENCRYPTION_OVERHEAD = 86 + 16 + 1
_PAYLOAD_FIELDS = ("title", "body", "url", "image")


class WebPushAdapter(ChannelAdapter):
    """Sends Web Push notifications signed with a VAPID key, one request per subscription.

    `OutgoingMessage.to` is the subscription endpoint and `push_keys` its ``p256dh``/``auth`` keys.
    `vapid_private_key` is a PEM or the base64url raw/DER key pywebpush accepts; `vapid_subject` a
    ``mailto:`` or ``https:`` contact. `ttl` is how long the push service keeps an undelivered message.
    """

    channel: ClassVar[str] = "push"
    provider: ClassVar[str] = "webpush"
    max_batch: ClassVar[int] = 100  # requests per `_send_provider_batch`, spread over the thread pool
    max_body_bytes: ClassVar[int] = 4096 - _ENCRYPTION_OVERHEAD  # plaintext that encrypts to 4096 bytes
    default_rate_per_second: ClassVar[float] = 50.0

    def __init__(
        self,
        vapid_private_key: str,
        vapid_subject: str,
        *,
        timeout: float = 10.0,
        ttl: int = 86400,
        urgency: str = "normal",
        workers: int = 8,
        rate_per_second: float | None = None,
    ) -> None:
        if not vapid_subject.startswith(("mailto:", "https:")):
            raise ValueError("vapid_subject must be a mailto: or https: URL")
        if urgency not in _URGENCIES:
            raise ValueError(f"urgency must be one of {sorted(_URGENCIES)}")
        if ttl < 0 or workers < 1:
            raise ValueError("ttl must be >= 0 and workers >= 1")
        self._secret = vapid_private_key  # kept only to scrub it from reasons
        self._vapid = _load_vapid(vapid_private_key)
        self.vapid_subject = vapid_subject
        self.timeout, self.ttl, self.urgency = timeout, ttl, urgency
        self.rate_per_second = rate_per_second or self.default_rate_per_second
        self._session = requests.Session()  # keep-alive to each push service
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="webpush")

    @classmethod
    def from_settings(cls, settings: PushSettings, **kwargs: Any) -> WebPushAdapter:
        """Build from the app settings; ValueError when no VAPID key is configured."""
        if settings.vapid_private_key is None:
            raise ValueError("Web Push vapid_private_key is not configured")
        kwargs.setdefault("rate_per_second", settings.messages_per_second)
        return cls(settings.vapid_private_key.get_secret_value(), settings.vapid_subject, **kwargs)

    @property
    def application_server_key(self) -> str:
        """The VAPID public key (base64url point) browsers subscribe with."""
        point = self._vapid.public_key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
        return base64.urlsafe_b64encode(point).decode().rstrip("=")

    def body_bytes(self, message: OutgoingMessage) -> int:
        """Bytes of the JSON payload before encryption."""
        return len(_payload(message.content))

    def close(self) -> None:
        """Stop the worker threads and close pooled connections."""
        self._pool.shutdown(wait=True)
        self._session.close()

    def _send_provider_batch(self, messages: Sequence[OutgoingMessage]) -> list[SendResult]:
        return list(self._pool.map(self._send_one, messages))

    def _send_one(self, message: OutgoingMessage) -> SendResult:
        mid = message.message_id
        keys = message.push_keys
        if not keys or not keys.get("p256dh") or not keys.get("auth"):
            return SendResult.permanent(mid, "web push needs the subscription's p256dh and auth keys")
        headers = {"Urgency": self.urgency}
        topic = message.content.get("topic")
        if topic is not None:
            if not _TOPIC.fullmatch(str(topic)):
                return SendResult.permanent(mid, "topic must be 1-32 url-safe base64 characters")
            headers["Topic"] = str(topic)
        info = {"endpoint": message.to, "keys": {"p256dh": keys["p256dh"], "auth": keys["auth"]}}
        try:
            response = webpush(
                info, _payload(message.content).decode(), vapid_private_key=self._vapid,
                vapid_claims={"sub": self.vapid_subject},  # fresh dict: pywebpush fills in aud and exp
                ttl=self.ttl, headers=dict(headers), timeout=self.timeout, requests_session=self._session,
            )
        except WebPushException as exc:
            return self._scrub(self._rejected(mid, exc))
        except requests.exceptions.RequestException as exc:
            return self._scrub(_transport_result(mid, exc))
        except (ValueError, TypeError) as exc:  # undecodable p256dh/auth keys: the subscription is unusable
            return SendResult.permanent(mid, f"invalid subscription keys ({type(exc).__name__})", ("invalid_address",))
        assert isinstance(response, requests.Response)  # only curl=True returns a string
        return SendResult.accepted(mid, response.headers.get("Location"))

    def _rejected(self, mid: int, exc: WebPushException) -> SendResult:
        status = exc.status_code
        if status is None:  # raised before sending: a malformed subscription
            return SendResult.permanent(mid, f"invalid subscription: {exc.message}", ("invalid_address",))
        detail = f"web push {status}: {_text(exc.response)}"
        if status in (404, 410):
            return SendResult.permanent(mid, detail, ("remove_subscription",))
        if status in (401, 403):
            return SendResult.permanent(mid, f"push service rejected the VAPID signature (bad VAPID key?): {detail}")
        if status == 429:
            return SendResult.transient(mid, detail, parse_retry_after(exc.retry_after) or DEFAULT_RETRY_AFTER)
        if status >= 500:
            return SendResult.transient(mid, detail, parse_retry_after(exc.retry_after))
        return SendResult.permanent(mid, detail)  # 400 bad headers, 413 too large, ...

    def _scrub(self, result: SendResult) -> SendResult:
        """Belt and braces: no reason may carry the VAPID private key."""
        if result.reason and self._secret in result.reason:
            return replace(result, reason=result.reason.replace(self._secret, "***"))
        return result


def _load_vapid(key: str) -> Vapid:
    """A py_vapid key from a PEM or base64url raw/DER string; ValueError without echoing the key."""
    try:
        if "-----BEGIN" in key:
            private = load_pem_private_key(key.encode(), password=None)
            if not isinstance(private, ec.EllipticCurvePrivateKey):
                raise TypeError("not an EC key")
            return Vapid(private_key=private)
        return Vapid.from_string(private_key=key)
    except Exception:
        raise ValueError("vapid_private_key is not a valid P-256 private key (PEM or base64url)") from None


def _payload(content: Mapping[str, Any]) -> bytes:
    """The notification JSON the service worker receives; `topic` is a header, not payload."""
    fields = {k: content[k] for k in _PAYLOAD_FIELDS if content.get(k) is not None}
    extra = {k: v for k, v in content.items() if k not in fields and k != "topic"}
    return json.dumps({**fields, **extra}, ensure_ascii=False, separators=(",", ":"), default=str).encode()


def _text(response: Any) -> str:
    text = str(getattr(response, "text", "") or "")
    return text[:200]


def _transport_result(mid: int, exc: requests.exceptions.RequestException) -> SendResult:
    """Transient when the request certainly never left; unknown when the push service may have it."""
    name = type(exc).__name__
    if isinstance(exc, requests.exceptions.ConnectTimeout) or never_connected(exc):
        return SendResult.transient(mid, f"push service not reached ({name})")
    return SendResult.unknown(mid, f"no answer from the push service ({name}); the message may have been sent")
