"""FCM adapter: the real ``firebase-admin`` client (FCM HTTP v1) behind the `ChannelAdapter` seam.

Each adapter owns its own firebase `App` (a unique name), so two adapters with different service accounts or
endpoints never share state. `messaging.send_each` sends up to 500 messages, one HTTP request each on its own
thread, and answers per message: UNREGISTERED (and SENDER_ID_MISMATCH) ask the outbox to delete the token,
quota and server errors are retried later, a connection lost after sending is UNKNOWN.

Pointing the client elsewhere (the provider emulator) needs the private ``_MessagingService``: its per-app
``_fcm_url`` is replaced, which is why firebase-admin is pinned to 7.x and a test checks the attributes.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import firebase_admin
import google.auth.exceptions
import google.auth.transport.requests
import requests
from firebase_admin import credentials, exceptions, messaging
from urllib3.util.retry import Retry

from channels.base import AmbiguousError, ChannelAdapter, OutgoingMessage, PermanentError, SendResult, TransientError
from channels.transport import never_connected, parse_retry_after

GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/"
DEFAULT_RETRY_AFTER = 60.0  # FCM's 429 advice: back off at least a minute when Retry-After is absent
_REMOVE = ("remove_subscription",)
# firebase-admin retries a POST once on a read error (a possible duplicate) and 500/503 four times with
# backoff; the outbox owns retries, so only a failed connect (nothing sent) is retried here.
_NO_UNSAFE_RETRY = Retry(total=None, connect=1, read=0, status=0, other=0, redirect=0, raise_on_status=False)

if not hasattr(messaging, "_MessagingService") or not hasattr(messaging._MessagingService, "FCM_URL"):
    raise ImportError(
        "firebase_admin.messaging._MessagingService.FCM_URL is gone: this firebase-admin version cannot be "
        "redirected to the emulator; pin firebase-admin>=7,<8"
    )


class FcmAdapter(ChannelAdapter):
    """Sends push notifications to app instances through FCM HTTP v1.

    `service_account` is the service-account JSON (a mapping or a file path). `fcm_url` redirects sends:
    a base URL such as the emulator's (``/v1/projects/{project}/messages:send`` is appended) or a template
    holding ``{0}`` for the project id, like ``_MessagingService.FCM_URL``. `OutgoingMessage.to` is the
    registration token; content ``title``, ``body``, ``image``, ``url`` (sent as data) and ``topic``
    (Android collapse key).
    """

    channel: ClassVar[str] = "push"
    provider: ClassVar[str] = "fcm"
    max_batch: ClassVar[int] = 500  # messaging.send_each's limit
    max_body_bytes: ClassVar[int] = 4096  # FCM's payload limit
    default_rate_per_second: ClassVar[float] = 500.0

    def __init__(
        self,
        service_account: Mapping[str, Any] | str | Path,
        *,
        fcm_url: str | None = None,
        timeout: float = 10.0,
        dry_run: bool = False,
        rate_per_second: float | None = None,
    ) -> None:
        info = _load_info(service_account)
        cert = credentials.Certificate(info)
        self._secrets = _secrets(info)
        name = f"loyalflow-fcm-{uuid.uuid4().hex}"
        self.app = firebase_admin.initialize_app(cert, options={"httpTimeout": timeout}, name=name)
        self.dry_run = dry_run
        self.rate_per_second = rate_per_second or self.default_rate_per_second
        self.project_id = str(self.app.project_id)
        self._service = messaging._get_messaging_service(self.app)
        if not hasattr(self._service, "_fcm_url") or not hasattr(self._service, "_client"):
            raise RuntimeError("firebase-admin's _MessagingService changed: cannot redirect FCM (pin 7.x)")
        if fcm_url is not None:
            template = fcm_url if "{0}" in fcm_url else fcm_url.rstrip("/") + "/v1/projects/{0}/messages:send"
            self._service._fcm_url = template.format(self.project_id)  # this app only, not the class global
        session = self._service._client.session
        for prefix in ("http://", "https://", "https://fcm.googleapis.com"):
            session.mount(prefix, requests.adapters.HTTPAdapter(pool_maxsize=100, max_retries=_NO_UNSAFE_RETRY))
        self._credential = cert.get_credential()
        if fcm_url is not None or not str(info.get("token_uri", "")).startswith(GOOGLE_TOKEN_URI):
            _no_google_side_calls(self._credential)

    @property
    def fcm_url(self) -> str:
        """Where this adapter's sends go."""
        return str(self._service._fcm_url)

    def close(self) -> None:
        """Close the HTTP session and delete the firebase app."""
        self._service._client.close()
        firebase_admin.delete_app(self.app)

    def _send_provider_batch(self, messages: Sequence[OutgoingMessage]) -> list[SendResult]:
        results: dict[int, SendResult] = {}
        built: list[tuple[OutgoingMessage, messaging.Message]] = []
        for message in messages:
            try:
                built.append((message, build_message(message)))
            except ValueError as exc:  # firebase-admin validates while encoding: refuse just this one
                results[message.message_id] = SendResult.permanent(message.message_id, f"invalid fcm message: {exc}")
        if built:
            self._ensure_token()
            batch = self._send_each([m for _, m in built])
            for (message, _), response in zip(built, batch.responses, strict=True):
                results[message.message_id] = self._result(message.message_id, response)
        return [results[m.message_id] for m in messages]

    def _ensure_token(self) -> None:
        """Fetch the access token before any message leaves, so an auth failure fails the batch cleanly."""
        if self._credential.valid:
            return
        try:
            self._credential.refresh(google.auth.transport.requests.Request())
        except google.auth.exceptions.RefreshError as exc:
            if getattr(exc, "retryable", False):
                raise TransientError(self._scrub(f"fcm token endpoint failed: {exc}")) from None
            raise PermanentError(self._scrub(f"fcm rejected the service account credentials: {exc}")) from None
        except google.auth.exceptions.TransportError as exc:
            raise TransientError(f"fcm token endpoint not reached ({type(exc).__name__})") from None

    def _send_each(self, batch: list[messaging.Message]) -> messaging.BatchResponse:
        try:
            return messaging.send_each(batch, dry_run=self.dry_run, app=self.app)
        except exceptions.FirebaseError as exc:
            # send_each raises only when a worker thread crashed; some messages may already have left.
            raise AmbiguousError(self._scrub(f"fcm batch failed ({type(exc.cause).__name__})")) from None

    def _result(self, mid: int, response: messaging.SendResponse) -> SendResult:
        if response.success:
            return SendResult.accepted(mid, response.message_id)
        result = classify_error(mid, response.exception)
        return replace(result, reason=self._scrub(result.reason or ""))

    def _scrub(self, text: str) -> str:
        """Belt and braces: no reason may carry the private key or an access token."""
        token = getattr(self._credential, "token", None)
        for secret in (*self._secrets, token):
            if secret and secret in text:
                text = text.replace(secret, "***")
        return text


def build_message(message: OutgoingMessage) -> messaging.Message:
    """The FCM message for an outbox push; ValueError when firebase-admin finds it invalid."""
    content = message.content
    notification = messaging.Notification(
        title=_opt(content.get("title")), body=_opt(content.get("body")), image=_opt(content.get("image"))
    )
    data = {"url": str(content["url"])} if content.get("url") else None
    topic = _opt(content.get("topic"))
    android = messaging.AndroidConfig(collapse_key=topic) if topic else None
    built = messaging.Message(notification=notification, data=data, android=android)
    # `token=` warns that it is deprecated in favour of `fid` (Firebase installation ids), but the outbox holds
    # registration tokens, which FCM v1 still takes as `token`; setting the attribute skips the warning.
    built.token = message.to
    messaging._MessagingService.encode_message(built)  # validate now: send_each would fail the whole batch
    return built


def classify_error(mid: int, exc: BaseException | None) -> SendResult:
    """Map one message's firebase-admin exception to an outcome."""
    detail = f"fcm {type(exc).__name__}: {exc}"
    if isinstance(exc, messaging.UnregisteredError | messaging.SenderIdMismatchError):
        return SendResult.permanent(mid, detail, _REMOVE)
    if isinstance(exc, messaging.QuotaExceededError):
        return SendResult.transient(mid, detail, _retry_after(exc) or DEFAULT_RETRY_AFTER)
    if isinstance(exc, exceptions.FirebaseError) and exc.http_response is None:
        return _transport_result(mid, exc)
    if isinstance(exc, exceptions.UnavailableError | exceptions.InternalError):
        return SendResult.transient(mid, detail, _retry_after(exc))
    if isinstance(exc, exceptions.UnauthenticatedError | exceptions.PermissionDeniedError):
        return SendResult.permanent(mid, f"fcm rejected the credentials: {detail}")
    status = getattr(getattr(exc, "http_response", None), "status_code", 0) or 0
    if status >= 500:
        return SendResult.transient(mid, detail)
    return SendResult.permanent(mid, detail)  # InvalidArgumentError, ThirdPartyAuthError, ...


def _transport_result(mid: int, exc: exceptions.FirebaseError) -> SendResult:
    """No HTTP answer: transient when the request never left, unknown when FCM may have it."""
    cause = exc.cause
    name = type(cause).__name__
    if isinstance(cause, requests.exceptions.ConnectTimeout) or (cause is not None and never_connected(cause)):
        return SendResult.transient(mid, f"fcm not reached ({name})")
    return SendResult.unknown(mid, f"no answer from fcm ({name}); the message may have been sent")


def _retry_after(exc: exceptions.FirebaseError) -> float | None:
    headers = getattr(exc.http_response, "headers", None) or {}
    return parse_retry_after(headers.get("Retry-After"))


def _opt(value: Any) -> str | None:
    return None if value is None else str(value)


def _no_google_side_calls(credential: Any) -> None:
    """Stop google-auth's background Regional Access Boundary lookup at iamcredentials.googleapis.com.

    google-auth >= 2.4x starts it after each token refresh; pointed at the emulator or the sandbox it
    would be the one request leaving the machine. Real Google endpoints keep it.
    """
    if hasattr(credential, "_is_regional_access_boundary_lookup_required"):
        credential._is_regional_access_boundary_lookup_required = lambda: False


def _load_info(service_account: Mapping[str, Any] | str | Path) -> dict[str, Any]:
    if isinstance(service_account, Mapping):
        return dict(service_account)
    return dict(json.loads(Path(service_account).read_text()))


def _secrets(info: Mapping[str, Any]) -> tuple[str, ...]:
    """The private key and each of its base64 lines: a reason must carry none of them."""
    pem = str(info.get("private_key") or "")
    lines = [line for line in pem.splitlines() if len(line) >= 32 and not line.startswith("-----")]
    return (pem, *lines) if pem else ()
