"""The adapter seam: what every provider adapter (SendGrid, Twilio, Web Push, the in-memory one) fills in.

An adapter turns outbox messages into provider requests, sends them in provider-sized batches and answers one
`SendResult` per message. It never raises for a send failure: the outbox needs a per-message fact it can act on
(retry later, never retry, or "may have left — do not blindly resend"), not an exception that loses the batch.
This module knows providers' common shape and nothing of campaigns or the database.
"""

from __future__ import annotations

import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Hashable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, ClassVar

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OutgoingMessage:
    """One rendered outbox message, ready for a provider.

    `content` is per channel: email `subject`, `html`, `text`; sms `body`; push `title`, `body`, `url`, ...
    `tags` (campaign, category) travel to the provider as custom arguments and come back on webhooks.
    `push_keys` holds a Web Push subscription's `p256dh` and `auth` keys.
    """

    message_id: int  # the outbox row id
    key: str  # idempotency key
    channel: str  # "email" | "sms" | "push"
    to: str  # email address, E.164 number, push endpoint or token
    content: Mapping[str, Any]
    headers: Mapping[str, str] = field(default_factory=dict)
    tags: Mapping[str, str] = field(default_factory=dict)
    push_keys: Mapping[str, str] | None = None


class Outcome(StrEnum):
    """What the outbox should do with a message after a send attempt."""

    ACCEPTED = "accepted"  # the provider took it; `provider_id` identifies it on webhooks
    TRANSIENT = "transient"  # retry later (honour `retry_after`)
    PERMANENT = "permanent"  # never retry; `effects` may say why (opt-out, invalid address)
    UNKNOWN = "unknown"  # the request may have left: never blindly resend, reconcile first


@dataclass(frozen=True)
class SendResult:
    """The outcome of sending one message.

    `effects` are facts the outbox or consent policy must act on, e.g. "opt_out_sms", "invalid_address",
    "remove_subscription". `cost_units` is what the send used of the channel's rate (SMS: segments).
    """

    message_id: int
    outcome: Outcome
    provider_id: str | None = None
    reason: str | None = None
    retry_after: float | None = None
    effects: tuple[str, ...] = ()
    cost_units: float = 1.0

    @classmethod
    def accepted(cls, message_id: int, provider_id: str | None, cost_units: float = 1.0) -> SendResult:
        """The provider took the message."""
        return cls(message_id, Outcome.ACCEPTED, provider_id=provider_id, cost_units=cost_units)

    @classmethod
    def transient(cls, message_id: int, reason: str, retry_after: float | None = None) -> SendResult:
        """Try again later, not before `retry_after` seconds when given."""
        return cls(message_id, Outcome.TRANSIENT, reason=reason, retry_after=retry_after)

    @classmethod
    def permanent(cls, message_id: int, reason: str, effects: Sequence[str] = ()) -> SendResult:
        """Never retry this message."""
        return cls(message_id, Outcome.PERMANENT, reason=reason, effects=tuple(effects), cost_units=0.0)

    @classmethod
    def unknown(cls, message_id: int, reason: str) -> SendResult:
        """The request may have reached the provider; resending could duplicate it."""
        return cls(message_id, Outcome.UNKNOWN, reason=reason)


class ChannelError(Exception):
    """A provider call failed for the whole batch; `send_batch` turns it into per-message results."""


class TransientError(ChannelError):
    """Timeout before sending, 429, 5xx: retry later, not before `retry_after` seconds when known."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentError(ChannelError):
    """Bad credentials, rejected request: retrying the same request cannot succeed."""

    def __init__(self, message: str, effects: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.effects = tuple(effects)


class AmbiguousError(ChannelError):
    """The request left but no answer came back (e.g. read timeout): the provider may have accepted it."""


class LookupUnsupported(ChannelError):
    """The provider offers no way to ask whether it accepted a message (Web Push, FCM)."""


_LIMITS = ("max_batch", "max_body_bytes", "default_rate_per_second", "max_concurrent_requests")


class ChannelAdapter(ABC):
    """Base class for provider adapters.

    Subclasses declare their limits as class attributes and implement `_send_provider_batch`, which may raise the
    `ChannelError` family for batch-wide failures and returns one result per message otherwise. Callers use only
    `send_batch`, which never raises for a send failure.
    """

    channel: ClassVar[str]
    provider: ClassVar[str]
    max_batch: ClassVar[int]
    max_body_bytes: ClassVar[int]
    default_rate_per_second: ClassVar[float]
    #: Provider requests of one `send_batch` in flight at once; raise it only where `_send_provider_batch`
    #: is thread-safe.
    max_concurrent_requests: ClassVar[int] = 1

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # Catch a typo'd limit at import time rather than as a silent infinite loop or empty batches at send time.
        for name in _LIMITS:
            if name in cls.__dict__ and not cls.__dict__[name] > 0:
                raise TypeError(f"{cls.__name__}.{name} must be positive")

    def send_batch(self, messages: Sequence[OutgoingMessage]) -> list[SendResult]:
        """Send `messages`, split into provider-sized batches; one result per message, in input order.

        Messages for another channel or over `max_body_bytes` get a PERMANENT result and are not sent.
        Raises ValueError only for a caller bug: the same message id twice.
        """
        ids = [m.message_id for m in messages]
        if len(set(ids)) != len(ids):
            raise ValueError("duplicate message_id in batch")
        results: dict[int, SendResult] = {}
        sendable: list[OutgoingMessage] = []
        for message in messages:
            rejection = self._rejection(message)
            if rejection is None:
                sendable.append(message)
            else:
                results[message.message_id] = SendResult.permanent(message.message_id, rejection)
        for returned in self._send_groups(self._groups(sendable)):
            results.update((r.message_id, r) for r in returned)
        return [results[i] for i in ids]

    def _groups(self, messages: Sequence[OutgoingMessage]) -> list[list[OutgoingMessage]]:
        """`messages` grouped by `request_key`, in order of first appearance."""
        groups: dict[Hashable, list[OutgoingMessage]] = {}
        for message in messages:
            groups.setdefault(self.request_key(message), []).append(message)
        return list(groups.values())

    def _send_group(self, group: list[OutgoingMessage]) -> list[SendResult]:
        """One group's requests of at most `max_batch` messages, in order (they reach the provider in order)."""
        return [result for start in range(0, len(group), self.max_batch)
                for result in self._send_chunk(group[start : start + self.max_batch])]

    def _send_groups(self, groups: list[list[OutgoingMessage]]) -> list[list[SendResult]]:
        """Send the groups, up to `max_concurrent_requests` at once; each request's results stand alone.

        Personalised messages (a distinct email body per member) are a group, and a request, each: one at a
        time, the dispatcher would spend its time waiting for the provider's answer to every single message.
        """
        workers = min(self.max_concurrent_requests, len(groups))
        if workers <= 1:
            return [self._send_group(group) for group in groups]
        # _send_chunk never raises for a send failure, so map() yields every group's results.
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"{self.provider}-send") as pool:
            return list(pool.map(self._send_group, groups))

    def request_key(self, message: OutgoingMessage) -> Hashable:
        """Messages with different keys never share a provider request (e.g. different email content).

        Each provider request is then one `_send_provider_batch` call, so an error in one request
        never turns another request's acceptance into a retry.
        """
        return None

    def _rejection(self, message: OutgoingMessage) -> str | None:
        if message.channel != self.channel:
            return f"{self.provider} sends {self.channel}, not {message.channel}"
        size = self.body_bytes(message)
        if size > self.max_body_bytes:
            return f"body is {size} bytes, over the {self.provider} limit of {self.max_body_bytes}"
        return None

    def _send_chunk(self, chunk: list[OutgoingMessage]) -> list[SendResult]:
        try:
            returned = self._send_provider_batch(chunk)
        except TransientError as exc:
            return [SendResult.transient(m.message_id, str(exc), exc.retry_after) for m in chunk]
        except PermanentError as exc:
            return [SendResult.permanent(m.message_id, str(exc), exc.effects) for m in chunk]
        except AmbiguousError as exc:
            return [SendResult.unknown(m.message_id, str(exc)) for m in chunk]
        except Exception as exc:
            # An unexpected bug or library error: keep the batch retryable rather than crash the dispatcher.
            log.exception("%s adapter raised while sending %d messages", self.provider, len(chunk))
            return [SendResult.transient(m.message_id, type(exc).__name__) for m in chunk]
        by_id = {r.message_id: r for r in returned}
        # A result the hook forgot is not proof the message stayed home: report it as UNKNOWN, never resend blindly.
        return [by_id.get(m.message_id) or SendResult.unknown(m.message_id, "no result from adapter") for m in chunk]

    def body_bytes(self, message: OutgoingMessage) -> int:
        """Size checked against `max_body_bytes`; default: the UTF-8 JSON of `content`. Override per provider."""
        return len(json.dumps(message.content, ensure_ascii=False, default=str).encode())

    def cost_units(self, message: OutgoingMessage) -> float:
        """Units of the channel's rate this message uses (default 1; SMS adapters count segments)."""
        return 1.0

    def find_accepted(self, message: OutgoingMessage, *, since: datetime) -> str | None:
        """Ask the provider whether it accepted `message` (sent no earlier than `since`).

        Reconciliation of UNKNOWN outcomes: returns the provider id when found, None when the
        provider confirms it has no such message. Raises `LookupUnsupported` when the provider
        cannot answer, and the `ChannelError` family when the question itself failed.
        """
        raise LookupUnsupported(f"{self.provider} offers no message lookup")

    def close(self) -> None:
        """Release connections; the default holds none."""
        return None

    @abstractmethod
    def _send_provider_batch(self, messages: Sequence[OutgoingMessage]) -> list[SendResult]:
        """Send at most `max_batch` messages of this channel in one provider request; one result per message.

        Raise `TransientError`, `PermanentError` or `AmbiguousError` for failures of the whole request.
        """
