"""An in-memory adapter, like django-anymail's test backend: it records what was sent and fails on request.

It is a shipped adapter (the `sandbox` provider), so dispatcher tests and dry runs exercise the real `send_batch`
path: batching, size checks and error translation all happen in `ChannelAdapter`.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import ClassVar

from channels.base import (
    ChannelAdapter,
    Outcome,
    OutgoingMessage,
    PermanentError,
    SendResult,
)
from channels.segments import count_segments


@dataclass(frozen=True)
class _PlannedFailure:
    outcome: Outcome
    reason: str
    retry_after: float | None = None
    effects: tuple[str, ...] = ()


class MemoryAdapter(ChannelAdapter):
    """Records accepted messages in `sent` and each provider request in `batches` (email by default).

    `fail(message_id, ...)` makes the next `times` sends of that id fail; `fail_next_batch(exc)` makes the next
    provider request raise `exc`. An UNKNOWN failure still records the message in `sent`: it "left".
    """

    channel: ClassVar[str] = "email"
    provider: ClassVar[str] = "memory"
    max_batch: ClassVar[int] = 100
    max_body_bytes: ClassVar[int] = 1_000_000
    default_rate_per_second: ClassVar[float] = 1000.0

    def __init__(self) -> None:
        self.sent: list[OutgoingMessage] = []
        self.batches: list[list[OutgoingMessage]] = []
        self.closed = False
        self._failures: dict[int, list[_PlannedFailure]] = {}
        self._batch_errors: list[Exception] = []
        self._ids = itertools.count(1)
        self._lock = threading.Lock()  # the dispatcher may send from several worker threads

    def fail(
        self,
        message_id: int,
        outcome: Outcome,
        reason: str = "planned failure",
        *,
        retry_after: float | None = None,
        effects: Sequence[str] = (),
        times: int = 1,
    ) -> None:
        """Make the next `times` sends of `message_id` end with `outcome` (TRANSIENT, PERMANENT or UNKNOWN)."""
        if outcome is Outcome.ACCEPTED:
            raise ValueError("a planned failure cannot be ACCEPTED")
        planned = _PlannedFailure(outcome, reason, retry_after, tuple(effects))
        with self._lock:
            self._failures.setdefault(message_id, []).extend([planned] * times)

    def fail_next_batch(self, error: Exception) -> None:
        """Make the next provider request raise `error` (after being recorded in `batches`)."""
        with self._lock:
            self._batch_errors.append(error)

    def find_accepted(self, message: OutgoingMessage, *, since: datetime) -> str | None:
        """The provider id of an earlier accepted or UNKNOWN ("left") send of the same outbox message."""
        with self._lock:
            found = any(m.message_id == message.message_id for m in self.sent)
        return f"mem-found-{message.message_id}" if found else None

    def close(self) -> None:
        """Mark the adapter closed; later sends fail permanently."""
        self.closed = True

    def _send_provider_batch(self, messages: Sequence[OutgoingMessage]) -> list[SendResult]:
        with self._lock:
            if self.closed:
                raise PermanentError("adapter is closed")
            self.batches.append(list(messages))
            if self._batch_errors:
                raise self._batch_errors.pop(0)
            return [self._send_one(m) for m in messages]

    def _send_one(self, message: OutgoingMessage) -> SendResult:
        queue = self._failures.get(message.message_id)
        planned = queue.pop(0) if queue else None
        if planned is None:
            self.sent.append(message)
            return SendResult.accepted(message.message_id, f"mem-{next(self._ids)}", self.cost_units(message))
        if planned.outcome is Outcome.UNKNOWN:
            self.sent.append(message)
        return SendResult(
            message.message_id,
            planned.outcome,
            reason=planned.reason,
            retry_after=planned.retry_after,
            effects=planned.effects,
            cost_units=0.0 if planned.outcome is Outcome.PERMANENT else self.cost_units(message),
        )


class MemorySmsAdapter(MemoryAdapter):
    """The in-memory adapter for SMS: limits like Twilio's, cost counted in segments."""

    channel: ClassVar[str] = "sms"
    max_body_bytes: ClassVar[int] = 1600 * 4  # Twilio caps the body at 1600 characters; allow 4 UTF-8 bytes each
    default_rate_per_second: ClassVar[float] = 1.0

    def cost_units(self, message: OutgoingMessage) -> float:
        """Segments of the body, at least one."""
        return float(max(1, count_segments(str(message.content.get("body", ""))).segments))


class MemoryPushAdapter(MemoryAdapter):
    """The in-memory adapter for push notifications (Web Push payloads are at most 4 KB)."""

    channel: ClassVar[str] = "push"
    max_body_bytes: ClassVar[int] = 4096
