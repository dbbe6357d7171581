"""The adapter seam: batching, size checks and error translation in `ChannelAdapter`, through `MemoryAdapter`."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Sequence
from typing import ClassVar

import pytest

from channels.base import (
    AmbiguousError,
    ChannelAdapter,
    Outcome,
    OutgoingMessage,
    PermanentError,
    SendResult,
    TransientError,
)
from channels.memory import MemoryAdapter, MemoryPushAdapter, MemorySmsAdapter


def msg(message_id: int, channel: str = "email", **content: str) -> OutgoingMessage:
    body = content or {"subject": "Hi", "html": "<p>Hi</p>", "text": "Hi"}
    return OutgoingMessage(
        message_id=message_id,
        key=f"run-1:{message_id}",
        channel=channel,
        to=f"m{message_id}@example.com",
        content=body,
        headers={"List-Unsubscribe": "<https://example.com/u>"},
        tags={"campaign": "spring", "category": "offer"},
    )


class SmallAdapter(MemoryAdapter):
    """A provider that takes three messages per request and small bodies."""

    max_batch: ClassVar[int] = 3
    max_body_bytes: ClassVar[int] = 200


def test_the_base_class_is_abstract() -> None:
    with pytest.raises(TypeError):
        ChannelAdapter()  # type: ignore[abstract]


def test_splits_into_provider_sized_batches_and_keeps_input_order() -> None:
    adapter = SmallAdapter()
    results = adapter.send_batch([msg(i) for i in (7, 3, 9, 1, 4, 8, 2)])
    assert [len(b) for b in adapter.batches] == [3, 3, 1]
    assert [r.message_id for r in results] == [7, 3, 9, 1, 4, 8, 2]
    assert all(r.outcome is Outcome.ACCEPTED for r in results)
    assert len({r.provider_id for r in results}) == 7
    assert [m.message_id for m in adapter.sent] == [7, 3, 9, 1, 4, 8, 2]


def test_an_empty_batch_sends_nothing() -> None:
    adapter = SmallAdapter()
    assert adapter.send_batch([]) == []
    assert adapter.batches == []


def test_an_oversize_body_is_a_permanent_result_not_an_exception() -> None:
    adapter = SmallAdapter()
    results = adapter.send_batch([msg(1), msg(2, text="x" * 300), msg(3)])
    assert [r.outcome for r in results] == [Outcome.ACCEPTED, Outcome.PERMANENT, Outcome.ACCEPTED]
    assert "over the memory limit of 200" in (results[1].reason or "")
    assert results[1].cost_units == 0.0
    assert [m.message_id for m in adapter.sent] == [1, 3]


def test_body_size_counts_utf8_bytes() -> None:
    adapter = SmallAdapter()
    assert adapter.body_bytes(msg(1, text="é")) == len('{"text": "é"}'.encode())


def test_a_message_for_another_channel_is_refused() -> None:
    result = MemoryAdapter().send_batch([msg(1, channel="sms", body="hi")])[0]
    assert result.outcome is Outcome.PERMANENT
    assert result.reason == "memory sends email, not sms"


def test_duplicate_ids_are_a_caller_bug() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        MemoryAdapter().send_batch([msg(1), msg(1)])


@pytest.mark.parametrize(
    ("error", "outcome", "reason", "retry_after", "effects"),
    [
        (TransientError("429", retry_after=30.0), Outcome.TRANSIENT, "429", 30.0, ()),
        (PermanentError("401", ["check_credentials"]), Outcome.PERMANENT, "401", None, ("check_credentials",)),
        (AmbiguousError("read timeout"), Outcome.UNKNOWN, "read timeout", None, ()),
        (KeyError("sid"), Outcome.TRANSIENT, "KeyError", None, ()),
    ],
)
def test_hook_errors_become_results_for_that_request_only(
    error: Exception, outcome: Outcome, reason: str, retry_after: float | None, effects: tuple[str, ...]
) -> None:
    adapter = SmallAdapter()
    adapter.fail_next_batch(error)
    results = adapter.send_batch([msg(i) for i in range(1, 6)])
    failed, rest = results[:3], results[3:]
    expected = (outcome, reason, retry_after, effects)
    assert {(r.outcome, r.reason, r.retry_after, r.effects) for r in failed} == {expected}
    assert all(r.outcome is Outcome.ACCEPTED for r in rest)


class ForgetfulAdapter(MemoryAdapter):
    """A buggy provider hook that answers for the first message only."""

    def _send_provider_batch(self, messages: Sequence[OutgoingMessage]) -> list[SendResult]:
        return super()._send_provider_batch(messages)[:1]


def test_a_missing_result_is_unknown_never_silently_resendable() -> None:
    results = ForgetfulAdapter().send_batch([msg(1), msg(2)])
    assert [r.outcome for r in results] == [Outcome.ACCEPTED, Outcome.UNKNOWN]
    assert results[1].reason == "no result from adapter"


def test_planned_failures_are_used_once_each() -> None:
    adapter = MemoryAdapter()
    adapter.fail(1, Outcome.TRANSIENT, "503", retry_after=5.0)
    adapter.fail(2, Outcome.PERMANENT, "21610 recipient unsubscribed", effects=["opt_out_sms"])
    adapter.fail(3, Outcome.UNKNOWN, "timeout", times=2)
    first = adapter.send_batch([msg(1), msg(2), msg(3), msg(4)])
    assert [r.outcome for r in first] == [Outcome.TRANSIENT, Outcome.PERMANENT, Outcome.UNKNOWN, Outcome.ACCEPTED]
    assert first[0].retry_after == 5.0
    assert first[1].effects == ("opt_out_sms",)
    # An ambiguous send "left": it is recorded, so a test can see the duplicate a blind resend would make.
    assert [m.message_id for m in adapter.sent] == [3, 4]
    second = adapter.send_batch([msg(1), msg(2), msg(3)])
    assert [r.outcome for r in second] == [Outcome.ACCEPTED, Outcome.ACCEPTED, Outcome.UNKNOWN]


def test_a_failure_cannot_be_planned_as_accepted() -> None:
    with pytest.raises(ValueError, match="ACCEPTED"):
        MemoryAdapter().fail(1, Outcome.ACCEPTED)


def test_a_closed_adapter_refuses_to_send() -> None:
    adapter = MemoryAdapter()
    adapter.close()
    result = adapter.send_batch([msg(1)])[0]
    assert (result.outcome, result.reason) == (Outcome.PERMANENT, "adapter is closed")


def test_sms_costs_its_segments() -> None:
    adapter = MemorySmsAdapter()
    short, long = msg(1, channel="sms", body="Your points: 120"), msg(2, channel="sms", body="a" * 161)
    assert [adapter.cost_units(short), adapter.cost_units(long)] == [1.0, 2.0]
    assert [r.cost_units for r in adapter.send_batch([short, long])] == [1.0, 2.0]


def test_push_has_its_own_channel_and_size_limit() -> None:
    adapter = MemoryPushAdapter()
    results = adapter.send_batch([msg(1, channel="push", title="Gold!"), msg(2, channel="push", body="x" * 5000)])
    assert [r.outcome for r in results] == [Outcome.ACCEPTED, Outcome.PERMANENT]


def test_limits_must_be_positive() -> None:
    with pytest.raises(TypeError, match="max_batch must be positive"):

        class Broken(MemoryAdapter):
            max_batch: ClassVar[int] = 0


def test_result_constructors() -> None:
    assert SendResult.accepted(1, "p-1", 2.0) == SendResult(1, Outcome.ACCEPTED, "p-1", cost_units=2.0)
    assert SendResult.transient(1, "429", 3.0).retry_after == 3.0
    assert SendResult.permanent(1, "bad", ["invalid_address"]).effects == ("invalid_address",)
    assert SendResult.unknown(1, "timeout").outcome == "unknown"


def test_concurrent_senders_lose_nothing() -> None:
    adapter = SmallAdapter()

    def send(start: int) -> None:
        adapter.send_batch([msg(i) for i in range(start, start + 20)])

    threads = [threading.Thread(target=send, args=(n * 100,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=5)
    assert len(adapter.sent) == 80
    assert sum(len(b) for b in adapter.batches) == 80


def test_channels_import_nothing_of_the_database() -> None:
    code = (
        "import sys, channels.base, channels.memory, channels.segments, channels.ratelimit; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in {'loyalty', 'sqlalchemy', 'sqlmodel'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


class _BySubject(MemoryAdapter):
    """Like SendGrid: messages with different content never share a request."""

    max_batch: ClassVar[int] = 2

    def request_key(self, message: OutgoingMessage) -> object:
        return message.content.get("subject")


def test_request_key_splits_requests_before_max_batch() -> None:
    adapter = _BySubject()
    messages = [msg(1, subject="a"), msg(2, subject="b"), msg(3, subject="a"), msg(4, subject="a")]
    results = adapter.send_batch(messages)
    assert [r.message_id for r in results] == [1, 2, 3, 4]  # input order kept
    assert [[m.message_id for m in batch] for batch in adapter.batches] == [[1, 3], [4], [2]]
