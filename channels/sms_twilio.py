"""Twilio SMS adapter: the real ``twilio`` client behind the `ChannelAdapter` seam.

One message per request (Twilio has no batch send). Every failure becomes a fact the outbox can act on:
21610 (the member texted STOP) sets the SMS opt-out, 21211/21614 mark the number invalid, 429 and 5xx are
retried later, and a connection lost after the request left is UNKNOWN so reconciliation runs before any resend.
The auth token never appears in a reason.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, ClassVar, TypeVar

import requests
from twilio.base.exceptions import TwilioException, TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.http.response import Response
from twilio.rest import Client

from channels.base import (
    AmbiguousError,
    ChannelAdapter,
    ChannelError,
    OutgoingMessage,
    PermanentError,
    SendResult,
    TransientError,
)
from channels.segments import count_segments
from channels.transport import never_connected
from loyalty.settings import TwilioSettings

TWILIO_API = "https://api.twilio.com"
DEFAULT_RETRY_AFTER = 1.0  # Twilio's 429 rarely says how long to wait; one second matches a long code's pace
_OPT_OUT_CODES = frozenset({21610})  # recipient replied STOP
_INVALID_ADDRESS_CODES = frozenset({21211, 21614})  # invalid 'To' number / not a mobile number
_BAD_CREDENTIALS_CODES = frozenset({20003})
_RATE_LIMIT_CODES = frozenset({20429})
# requests raises these while preparing the request, before any byte leaves.
_PRE_SEND_ERRORS = (
    requests.exceptions.ConnectTimeout,
    requests.exceptions.SSLError,  # no TLS session, so no request was written
    requests.exceptions.InvalidURL,
    requests.exceptions.MissingSchema,
    requests.exceptions.InvalidSchema,
    requests.exceptions.InvalidHeader,
)
T = TypeVar("T")


class _BaseUrlHttpClient(TwilioHttpClient):
    """A `TwilioHttpClient` that sends to `base_url` instead of https://api.twilio.com.

    Rewriting the URL here works for every resource whatever base URL the domain objects cache; `edge`/`region`
    cannot point at loopback. It also keeps the last response per thread, because `TwilioRestException` drops
    the response headers and a 429's Retry-After lives there.
    """

    def __init__(self, base_url: str, timeout: float) -> None:
        super().__init__(timeout=timeout)
        self.base_url = base_url.rstrip("/")
        self._local = threading.local()

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Response:
        """Send through the parent client after rewriting the Twilio API prefix."""
        if self.base_url != TWILIO_API and url.startswith(TWILIO_API):
            url = self.base_url + url[len(TWILIO_API) :]
        self._local.response = None
        response: Response = super().request(method, url, *args, **kwargs)
        self._local.response = response
        return response

    def retry_after(self) -> float | None:
        """Seconds from the last response's Retry-After header on this thread, when it holds a number."""
        response = getattr(self._local, "response", None)
        headers = getattr(response, "headers", None) or {}
        try:
            value = float(headers.get("Retry-After", ""))
        except (TypeError, ValueError):
            return None  # absent, or an HTTP date: fall back to the default
        return value if value >= 0 else None


class TwilioSmsAdapter(ChannelAdapter):
    """Sends SMS through Twilio's Messages API, one message per request, paced in segments.

    Exactly one of `from_number` and `messaging_service_sid` names the sender. `base_url` only changes in tests
    and the sandbox (the provider emulator). A body longer than `max_segments` segments is refused before any
    request. `rate_per_second` is the sender's throughput in segments (long code ~1, toll-free ~3, short code
    100+); the dispatcher paces by `cost_units`, which counts segments.
    """

    channel: ClassVar[str] = "sms"
    provider: ClassVar[str] = "twilio"
    max_batch: ClassVar[int] = 1  # Twilio has no batch send
    max_body_bytes: ClassVar[int] = 1600  # Twilio's Body limit, in characters (see `body_bytes`)
    default_rate_per_second: ClassVar[float] = 1.0  # a long code's segment throughput

    def __init__(
        self,
        account_sid: str,
        auth_token: str,
        *,
        messaging_service_sid: str | None = None,
        from_number: str | None = None,
        base_url: str = TWILIO_API,
        status_callback_url: str | None = None,
        timeout: float = 10.0,
        max_segments: int = 10,
        rate_per_second: float | None = None,
    ) -> None:
        if (messaging_service_sid is None) == (from_number is None):
            raise ValueError("give exactly one of messaging_service_sid and from_number")
        if not account_sid or not auth_token:
            raise ValueError("account_sid and auth_token are required")
        if max_segments < 1:
            raise ValueError("max_segments must be at least 1")
        self.messaging_service_sid = messaging_service_sid
        self.from_number = from_number
        self.status_callback_url = status_callback_url
        self.max_segments = max_segments
        self.rate_per_second = rate_per_second or self.default_rate_per_second
        self._token = auth_token  # kept only to scrub it from reasons
        self._http = _BaseUrlHttpClient(base_url, timeout)
        self.client = Client(account_sid, auth_token, http_client=self._http)

    @classmethod
    def from_settings(cls, settings: TwilioSettings, status_callback_url: str | None = None, *,
                      timeout: float = 10.0) -> TwilioSmsAdapter:
        """Build from the app settings; ValueError when the account SID or auth token is missing."""
        if not settings.account_sid or settings.auth_token is None:
            raise ValueError("Twilio account_sid and auth_token are not configured (use the sandbox instead)")
        return cls(
            settings.account_sid,
            settings.auth_token.get_secret_value(),
            messaging_service_sid=settings.messaging_service_sid,
            from_number=settings.from_number,
            base_url=settings.base_url,
            status_callback_url=status_callback_url,
            timeout=timeout,
            rate_per_second=settings.segments_per_second,
        )

    # -- limits --------------------------------------------------------------------------------

    def body_bytes(self, message: OutgoingMessage) -> int:
        """Twilio limits the body in characters, not bytes, so this counts characters."""
        return len(_body(message))

    def cost_units(self, message: OutgoingMessage) -> float:
        """Segments of the body, at least one: Twilio throttles and bills per segment."""
        return float(max(1, count_segments(_body(message)).segments))

    def close(self) -> None:
        """Close the pooled HTTP connections."""
        session = self._http.session
        if session is not None:
            session.close()

    # -- sending -------------------------------------------------------------------------------

    def _send_provider_batch(self, messages: Sequence[OutgoingMessage]) -> list[SendResult]:
        return [self._send_one(message) for message in messages]  # max_batch is 1: at most one request

    def _send_one(self, message: OutgoingMessage) -> SendResult:
        segments = self.cost_units(message)
        if segments > self.max_segments:
            raise PermanentError(f"too many segments: {segments:.0f} > {self.max_segments}")
        # Exactly one of the two is set (checked in __init__).
        sender = {"from_": self.from_number, "messaging_service_sid": self.messaging_service_sid}
        kwargs: dict[str, str] = {k: v for k, v in sender.items() if v is not None}
        if self.status_callback_url:
            kwargs["status_callback"] = self.status_callback_url
        created = self._call(lambda: self.client.messages.create(to=message.to, body=_body(message), **kwargs))
        return SendResult.accepted(message.message_id, created.sid, cost_units=segments)

    def fetch_status(self, sid: str) -> str:
        """Twilio's current status of a message (queued, sent, delivered, undelivered, failed, ...).

        Raises the `ChannelError` family like a send does (e.g. `PermanentError` for an unknown sid).
        """
        fetched = self._call(lambda: self.client.messages(sid).fetch())
        return str(fetched.status)

    def find_sent(self, to: str, body: str, *, since: datetime) -> str | None:
        """The sid of a message with ``body`` sent to ``to`` since ``since``, if Twilio has one.

        Reconciliation for UNKNOWN outcomes: evidence that a message whose answer was lost
        did reach Twilio, so it is marked sent instead of being sent again.
        """
        messages = self._call(lambda: self.client.messages.list(to=to, date_sent_after=since, limit=200))
        return next((str(m.sid) for m in messages if m.body == body), None)

    def find_accepted(self, message: OutgoingMessage, *, since: datetime) -> str | None:
        """Reconciliation hook of the adapter seam: :meth:`find_sent` for this message's number and body."""
        return self.find_sent(message.to, _body(message), since=since)

    def _call(self, request: Callable[[], T]) -> T:
        """Run one client call, translating its failures into the `ChannelError` family."""
        try:
            return request()
        except TwilioRestException as exc:
            raise self._scrubbed(self._rest_error(exc)) from None
        except requests.exceptions.RequestException as exc:
            raise self._scrubbed(_transport_error(exc)) from None
        except TwilioException as exc:
            # List pages raise the bare TwilioException on any non-200 answer (e.g. a 503), status unknown here.
            raise self._scrubbed(TransientError(f"twilio: {exc}")) from None

    def _rest_error(self, exc: TwilioRestException) -> ChannelError:
        status, code = exc.status, exc.code
        detail = f"twilio {status} error {code}: {exc.msg}"
        if code in _OPT_OUT_CODES:
            return PermanentError(detail, effects=("opt_out_sms",))
        if code in _INVALID_ADDRESS_CODES:
            return PermanentError(detail, effects=("invalid_address",))
        if status == 401 or code in _BAD_CREDENTIALS_CODES:
            return PermanentError(f"twilio rejected the credentials (bad credentials, {status} error {code})")
        if status == 429 or code in _RATE_LIMIT_CODES:
            return TransientError(detail, retry_after=self._http.retry_after() or DEFAULT_RETRY_AFTER)
        if status >= 500:
            return TransientError(detail)
        return PermanentError(detail)

    def _scrubbed(self, error: ChannelError) -> ChannelError:
        """Belt and braces: no reason may carry the auth token, whatever the provider echoes back."""
        text = str(error)
        if self._token not in text:
            return error
        error.args = (text.replace(self._token, "***"),)
        return error


def _body(message: OutgoingMessage) -> str:
    return str(message.content.get("body", ""))


def _transport_error(exc: requests.exceptions.RequestException) -> ChannelError:
    """Transient when the request certainly never left; ambiguous when it may have reached Twilio."""
    name = type(exc).__name__
    if isinstance(exc, _PRE_SEND_ERRORS):
        return TransientError(f"twilio not reached: {name}")
    if isinstance(exc, requests.exceptions.ConnectionError) and never_connected(exc):
        return TransientError(f"twilio not reached: connection refused ({name})")
    # Read timeout, connection dropped mid-exchange, a truncated answer: Twilio may have created the message.
    return AmbiguousError(f"no answer from twilio ({name}); the message may have been sent")
