"""Value types shared by the provider emulator and its provider route modules.

Kept apart from :mod:`channels.emulator` so provider modules (SendGrid, Twilio, FCM and Web
Push) can import them without a cycle.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from channels.emulator import ProviderEmulator

__all__ = [
    "EmulatorRequest",
    "EmulatorResponse",
    "FaultResponder",
    "Faults",
    "Handler",
    "RecordedEmail",
    "RecordedPush",
    "RecordedRequest",
    "RecordedSms",
    "Route",
]


@dataclass(frozen=True)
class Faults:
    """Failure script applied to every provider request (rates are probabilities in [0, 1]).

    Checked in this order, each with its own draw from the emulator's seeded RNG:
    ``drop_rate`` (close the socket before processing), ``error_5xx_rate`` (500 or 503),
    ``rate_limit_rate`` (429 with ``Retry-After: retry_after_s``); then the request is
    processed and, if accepted, ``drop_after_accept_rate`` closes the socket without an
    answer. ``delay_s`` sleeps before every answer. Nothing is recorded as accepted for the
    first three.
    """

    error_5xx_rate: float = 0.0
    rate_limit_rate: float = 0.0
    retry_after_s: int = 1
    drop_rate: float = 0.0
    delay_s: float = 0.0
    drop_after_accept_rate: float = 0.0


@dataclass(frozen=True)
class RecordedRequest:
    """One raw request as received; ``status`` is None when the connection was dropped."""

    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes
    status: int | None


@dataclass(frozen=True)
class RecordedEmail:
    """One accepted SendGrid personalization (what a real provider would try to deliver)."""

    message_id: str  # like SendGrid's sg_message_id prefix: X-Message-Id + "." + index
    x_message_id: str
    index: int
    from_email: str
    to: tuple[str, ...]
    cc: tuple[str, ...]
    bcc: tuple[str, ...]
    subject: str | None
    content: tuple[tuple[str, str], ...]  # (type, value)
    template_id: str | None
    headers: Mapping[str, str]
    custom_args: Mapping[str, str]  # top-level merged with the personalization's
    categories: tuple[str, ...]
    accepted_at: float


@dataclass(frozen=True)
class RecordedSms:
    """One accepted Twilio message; ``resource`` is the JSON Twilio answered with."""

    sid: str
    account_sid: str
    to: str
    from_: str | None
    messaging_service_sid: str | None
    body: str
    status_callback: str | None
    num_segments: int
    resource: Mapping[str, Any]
    accepted_at: float


@dataclass(frozen=True)
class RecordedPush:
    """One accepted push message.

    ``kind`` "webpush": ``to`` is the subscription endpoint URL and ``body`` the aes128gcm-encrypted
    payload (bytes; decrypt it with the subscription helper of :mod:`channels.emulator_push`).
    ``kind`` "fcm": ``to`` is the registration token and ``body`` the FCM v1 ``message`` object.
    """

    kind: str  # "webpush" | "fcm"
    id: str
    to: str
    headers: Mapping[str, str]
    body: bytes | Mapping[str, Any]
    accepted_at: float


@dataclass(frozen=True)
class EmulatorRequest:
    """A parsed request handed to a route handler."""

    method: str
    path: str
    query: Mapping[str, list[str]]
    headers: Mapping[str, str]  # lower-cased names
    body: bytes


@dataclass
class EmulatorResponse:
    """What a route handler answers."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, status: int, payload: Any, headers: Mapping[str, str] | None = None) -> EmulatorResponse:
        """A JSON response."""
        out = {"Content-Type": "application/json", **(headers or {})}
        return cls(status, json.dumps(payload).encode(), out)


Handler = Callable[["ProviderEmulator", EmulatorRequest, "re.Match[str]"], EmulatorResponse]
# (status, retry_after_s) -> the provider's own error shape for an injected fault
FaultResponder = Callable[[int, int], EmulatorResponse]


@dataclass(frozen=True)
class Route:
    """One endpoint. ``fault_responder`` None means faults are never injected (lookups)."""

    method: str
    pattern: re.Pattern[str]
    handler: Handler
    fault_responder: FaultResponder | None = None
