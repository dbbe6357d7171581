"""SendGrid email through the real `sendgrid` client (v3 `POST /v3/mail/send`).

One provider batch (at most 1000 messages) becomes one request per distinct content: messages whose subject, HTML,
text and categories are equal share one request, one personalization each (SendGrid allows 1000 per request).
Everything per member travels in the personalization: the address, `custom_args` (`outbox_id`, `key` and the
message's tags, all strings, as SendGrid requires; they come back on every webhook event) and headers, including
RFC 8058 one-click unsubscribe. Requests of different content (personalised campaign email: one request per member)
go out up to `max_concurrent_requests` at once (see `ChannelAdapter.send_batch`); each keeps its own results.

Unsubscribe: a message gets `List-Unsubscribe: <url>` and `List-Unsubscribe-Post: List-Unsubscribe=One-Click`
when it has an unsubscribe URL: from the `unsubscribe_url_for(message)` callback when one is configured, otherwise
from a `List-Unsubscribe` entry the caller already put in `message.headers`. Marketing messages must have one;
transactional ones simply have none.

Provider ids: on 202 every message of the request gets the request's `X-Message-Id`. SendGrid's webhook
`sg_message_id` is that id followed by ".filter…" (the emulator uses ".<index>"), so it is not unique per message:
match webhook events on `custom_args.outbox_id`, and use `sg_message_id.split(".")[0] == provider_id` only as a
cross-check. In sandbox mode SendGrid answers 200, delivers nothing and gives no id; the message is ACCEPTED with
provider_id `sandbox:<outbox id>`, which no webhook will ever mention.

Errors (the client never retries): 429 and 5xx are TRANSIENT (429 honours `Retry-After`, else `X-RateLimit-Reset`);
other 4xx are PERMANENT, with SendGrid's field errors in the reason. A connection that fails before the request is
sent (refused, DNS, connect timeout: urllib wraps these in `URLError`) is TRANSIENT. A timeout or dropped connection
once the request has been sent is UNKNOWN: SendGrid may have accepted it (the emulator's drop-before-processing and
drop-after-accept look the same to the client), so the outbox must reconcile, not resend.

The API key never appears in a result reason, and `python_http_client`'s DEBUG log of request headers (which holds
`Authorization: Bearer <key>`) is redacted.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import logging
import re
import time
import urllib.error
from collections.abc import Callable, Hashable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar

from python_http_client.exceptions import HTTPError
from sendgrid import SendGridAPIClient
from sendgrid.helpers.mail import (
    Category,
    CustomArg,
    From,
    Header,
    Mail,
    MailSettings,
    Personalization,
    SandBoxMode,
    To,
)

from channels.base import (
    AmbiguousError,
    ChannelAdapter,
    ChannelError,
    OutgoingMessage,
    PermanentError,
    SendResult,
    TransientError,
)

if TYPE_CHECKING:
    from loyalty.settings import SendGridSettings

log = logging.getLogger(__name__)

UnsubscribeUrlFor = Callable[[OutgoingMessage], "str | None"]

MAX_CATEGORIES = 10  # SendGrid: at most 10 categories per message, each at most 255 characters
MAX_CATEGORY_CHARS = 255
MAX_REASON_CHARS = 500
ONE_CLICK = "List-Unsubscribe=One-Click"

# (subject, html, text, categories): messages with equal keys can share one request.
_ContentKey = tuple[str, str | None, str | None, tuple[str, ...]]


class _RedactAuthorization(logging.Filter):
    """Blanks bearer tokens in python_http_client's DEBUG log of request headers."""

    _bearer = re.compile(r"Bearer [^'\"\s,}]+")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "Bearer " in message:
            record.msg, record.args = self._bearer.sub("Bearer [redacted]", message), None
        return True


_http_log = logging.getLogger("python_http_client.client")
if not any(isinstance(f, _RedactAuthorization) for f in _http_log.filters):
    _http_log.addFilter(_RedactAuthorization())


class SendGridAdapter(ChannelAdapter):
    """Sends email through SendGrid; see the module docstring for grouping, ids, unsubscribe and error mapping.

    `host` may point at the provider emulator (`http://127.0.0.1:PORT`). `rate_per_second` is the pace the
    dispatcher should keep (messages per second). The underlying client opens one connection per request and keeps
    no per-call state, so one adapter may be shared by several dispatcher threads.
    """

    channel: ClassVar[str] = "email"
    provider: ClassVar[str] = "sendgrid"
    max_batch: ClassVar[int] = 1000  # personalizations (and recipients) per request
    max_body_bytes: ClassVar[int] = 30 * 1024 * 1024  # SendGrid's limit for a whole message
    default_rate_per_second: ClassVar[float] = 100.0
    # Personalised emails (a body per member) are one request each: keep a few in flight rather than wait for
    # every answer in turn. The client opens one connection per request and keeps no per-call state.
    max_concurrent_requests: ClassVar[int] = 4

    def __init__(
        self,
        api_key: str,
        *,
        host: str = "https://api.sendgrid.com",
        from_email: str,
        from_name: str | None = None,
        sandbox_mode: bool = False,
        timeout: float = 10.0,
        unsubscribe_url_for: UnsubscribeUrlFor | None = None,
        rate_per_second: float | None = None,
    ) -> None:
        if not api_key:
            raise ValueError("SendGrid needs an API key")
        self._api_key = api_key
        self.host = host
        self.from_email = from_email
        self.from_name = from_name
        self.sandbox_mode = sandbox_mode
        self.timeout = timeout
        self.unsubscribe_url_for = unsubscribe_url_for
        self.rate_per_second = rate_per_second or self.default_rate_per_second
        self._client = SendGridAPIClient(api_key=api_key, host=host)
        self._client.client.timeout = timeout

    def __repr__(self) -> str:
        return f"SendGridAdapter(host={self.host!r}, from_email={self.from_email!r}, sandbox={self.sandbox_mode})"

    @classmethod
    def from_settings(
        cls, settings: SendGridSettings, *, unsubscribe_url_for: UnsubscribeUrlFor | None = None,
        timeout: float = 10.0,
    ) -> SendGridAdapter:
        """Build the adapter from `Settings.sendgrid`; raises ValueError when no API key is configured."""
        if settings.api_key is None:
            raise ValueError("no SendGrid API key configured (LOYALFLOW_SENDGRID__API_KEY): use the sandbox")
        return cls(
            settings.api_key.get_secret_value(),
            host=settings.host,
            from_email=settings.from_email,
            from_name=settings.from_name,
            sandbox_mode=settings.sandbox_mode,
            timeout=timeout,
            unsubscribe_url_for=unsubscribe_url_for,
            rate_per_second=settings.messages_per_second,
        )

    # -- sending ---------------------------------------------------------------------------------

    def request_key(self, message: OutgoingMessage) -> Hashable:
        """Personalizations share one content: messages with different content go in separate requests."""
        return _content_key(message)

    def _send_provider_batch(self, messages: Sequence[OutgoingMessage]) -> list[SendResult]:
        group = list(messages)  # one content (see request_key), so one request
        body = self._build_request(_content_key(group[0]), group)  # fails before sending: base retries
        try:
            x_message_id = self._post(body)
        except ChannelError:
            raise
        except Exception as exc:
            # Unexpected, maybe after the request left: UNKNOWN, never a blind retry.
            log.exception("SendGrid request for %d messages failed unexpectedly", len(group))
            raise AmbiguousError(f"unexpected {type(exc).__name__}") from exc
        if self.sandbox_mode:
            return [SendResult.accepted(m.message_id, f"sandbox:{m.message_id}") for m in group]
        return [SendResult.accepted(m.message_id, x_message_id) for m in group]

    def _build_request(self, key: _ContentKey, group: Sequence[OutgoingMessage]) -> dict[str, Any]:
        """The v3 mail-send JSON for messages sharing `key`."""
        subject, html, text, categories = key
        mail = Mail(
            from_email=From(self.from_email, self.from_name),
            subject=subject,
            plain_text_content=text,
            html_content=html,
        )
        for index, message in enumerate(group):
            # Without index= the helper inserts each personalization at position 0.
            mail.add_personalization(self._personalization(message), index=index)
        for category in reversed(categories):  # add_category also inserts at position 0
            mail.add_category(Category(category))
        if self.sandbox_mode:
            settings = MailSettings()
            settings.sandbox_mode = SandBoxMode(True)
            mail.mail_settings = settings
        body: dict[str, Any] = mail.get()
        return body

    def _personalization(self, message: OutgoingMessage) -> Personalization:
        p = Personalization()
        p.add_to(To(message.to))
        # Ours last, so a tag called "outbox_id" cannot hide the id webhooks are matched on.
        args = {**{str(k): str(v) for k, v in message.tags.items()}, "outbox_id": str(message.message_id)}
        args["key"] = message.key
        for name, value in args.items():
            p.add_custom_arg(CustomArg(name, value))
        for name, value in self._headers(message).items():
            p.add_header(Header(name, value))
        return p

    def _headers(self, message: OutgoingMessage) -> dict[str, str]:
        headers = dict(message.headers)
        url = self.unsubscribe_url_for(message) if self.unsubscribe_url_for else None
        if url:
            headers["List-Unsubscribe"] = f"<{url}>"
        if headers.get("List-Unsubscribe"):
            headers["List-Unsubscribe-Post"] = ONE_CLICK
        return headers

    def _post(self, body: dict[str, Any]) -> str | None:
        """Send one request; returns the X-Message-Id, raises the ChannelError family."""
        try:
            response = self._client.send(body)
        except HTTPError as exc:
            raise _http_error(exc, self._redact) from None
        except urllib.error.URLError as exc:
            # urllib raises URLError only while connecting or writing the request: SendGrid cannot have acted on it.
            raise TransientError(self._redact(f"SendGrid unreachable: {exc.reason}")) from None
        except (TimeoutError, ConnectionError, http.client.HTTPException, OSError) as exc:
            # The request was sent; the answer was lost. SendGrid may have accepted it.
            raise AmbiguousError(self._redact(f"no answer from SendGrid: {type(exc).__name__}: {exc}")) from None
        headers = response.headers
        x_message_id = headers.get("X-Message-Id") if headers is not None else None
        return str(x_message_id) if x_message_id else None

    def find_accepted(self, message: OutgoingMessage, *, since: datetime) -> str | None:
        """Reconciliation: ask the Email Activity Feed for a message carrying this outbox id.

        Returns the request's X-Message-Id part of the found ``msg_id`` (what a send records),
        None when SendGrid has no such message. Needs an API key with Email Activity access.
        """
        query = {"query": f"unique_args['outbox_id']=\"{message.message_id}\"", "limit": 1}
        try:
            response = self._client.client.messages.get(query_params=query)
        except HTTPError as exc:
            raise _http_error(exc, self._redact) from None
        except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException, OSError) as exc:
            raise TransientError(self._redact(f"Email Activity lookup failed: {exc}")) from None
        found = json.loads(response.body or b"{}").get("messages") or []
        return str(found[0]["msg_id"]).split(".")[0] if found else None

    def _redact(self, text: str) -> str:
        return text.replace(self._api_key, "[redacted]")


def _content_key(message: OutgoingMessage) -> _ContentKey:
    content = message.content
    html, text = content.get("html"), content.get("text")
    return (
        str(content.get("subject", "")),
        None if html is None else str(html),
        None if text is None else str(text),
        _categories(message),
    )


def _categories(message: OutgoingMessage) -> tuple[str, ...]:
    """Distinct tag values (campaign, category, ...), in tag order, within SendGrid's limits."""
    seen: dict[str, None] = {}
    for value in message.tags.values():
        if value:
            seen.setdefault(str(value)[:MAX_CATEGORY_CHARS])
    return tuple(seen)[:MAX_CATEGORIES]


def _http_error(exc: HTTPError, redact: Callable[[str], str]) -> ChannelError:
    status = int(exc.status_code)
    detail = redact(_error_detail(exc))
    if status == 429:
        return TransientError(f"SendGrid rate limit (429): {detail}", _retry_after(exc.headers))
    if status >= 500 or status == 408:
        return TransientError(f"SendGrid error {status}: {detail}")
    if status in (401, 403):
        return PermanentError(f"SendGrid refused the API key ({status}): bad credentials or missing mail.send scope")
    return PermanentError(f"SendGrid rejected the request ({status}): {detail}")


def _error_detail(exc: HTTPError) -> str:
    """SendGrid's `{"errors": [{"field", "message"}]}` as "field: message; ...", else the raw body."""
    raw = exc.body.decode("utf-8", "replace") if isinstance(exc.body, bytes) else str(exc.body or "")
    try:
        errors = json.loads(raw)["errors"]
        parts = [f"{e['field']}: {e['message']}" if e.get("field") else str(e.get("message")) for e in errors]
        detail = "; ".join(parts)
    except (ValueError, KeyError, TypeError, AttributeError):
        detail = raw or str(exc.reason)
    return detail[:MAX_REASON_CHARS]


def _retry_after(headers: Any) -> float | None:
    """Seconds to wait: `Retry-After` (seconds or HTTP date), else `X-RateLimit-Reset` (epoch) minus now."""
    if headers is None:
        return None
    value = headers.get("Retry-After")
    if value:
        try:
            return max(0.0, float(value))
        except ValueError:
            try:
                return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
            except (TypeError, ValueError):
                pass
    reset = headers.get("X-RateLimit-Reset")
    try:
        return max(0.0, float(reset) - time.time()) if reset else None
    except ValueError:
        return None
