"""The outbox state machine: idempotent enqueue, exactly-once claims, result transitions, leases."""

from __future__ import annotations

import itertools
import random
import threading
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import Engine

from channels.base import SendResult
from loyalty.db import session_scope
from loyalty.models import OUTBOX_MESSAGES as OUTBOX
from loyalty.outbox import (
    LEASE_EXPIRED,
    Backoff,
    NewMessage,
    claim,
    counts_by_status,
    enqueue,
    max_age,
    record_results,
    recover_expired_leases,
    resolve_unknown,
)
from tests.factories import add_member

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
NO_JITTER = Backoff(jitter=0.0)


@pytest.fixture
def member_id(engine: Engine) -> int:
    with session_scope(engine) as session:
        member = add_member(session)
        assert member.id is not None
        return member.id


def _queue(engine: Engine, member_id: int, n: int, *, channel: str = "sms", prefix: str = "k",
           not_before: datetime | None = None, now: datetime = T0) -> int:
    messages = [NewMessage(key=f"{prefix}{i}", member_id=member_id, channel=channel, template="t",
                           payload={"i": i}, not_before=not_before) for i in range(n)]
    with session_scope(engine) as session:
        return enqueue(session, messages, now=now)


def _row(engine: Engine, outbox_id: int) -> sa.Row:
    with engine.connect() as connection:
        return connection.execute(sa.select(OUTBOX).where(OUTBOX.c.id == outbox_id)).one()


def test_enqueue_is_idempotent_on_key(engine: Engine, member_id: int) -> None:
    assert _queue(engine, member_id, 3) == 3
    assert _queue(engine, member_id, 5) == 2  # k0..k2 already queued
    assert counts_by_status(engine)["pending"] == 5
    with session_scope(engine) as session:
        assert enqueue(session, []) == 0


def test_claim_respects_limit_channel_and_not_before(engine: Engine, member_id: int) -> None:
    _queue(engine, member_id, 3, prefix="now")
    _queue(engine, member_id, 2, prefix="later", not_before=T0 + timedelta(minutes=5))
    _queue(engine, member_id, 2, prefix="mail", channel="email")
    first = claim(engine, "sms", limit=2, now=T0)
    assert [m.key for m in first] == ["now0", "now1"]
    assert all(m.attempts == 1 and m.lease_until == T0 + timedelta(seconds=300) for m in first)
    assert first[0].payload == {"i": 0} and first[0].member_id == member_id and first[0].channel == "sms"
    assert [m.key for m in claim(engine, "sms", limit=10, now=T0)] == ["now2"]
    assert claim(engine, "sms", limit=10, now=T0 + timedelta(minutes=4)) == []
    assert [m.key for m in claim(engine, "sms", limit=10, now=T0 + timedelta(minutes=5))] == ["later0", "later1"]
    row = _row(engine, first[0].id)
    assert row.status == "sending" and row.updated_at == T0 and row.attempts == 1
    counts = counts_by_status(engine)
    assert (counts["pending"], counts["sending"]) == (2, 5)


def test_concurrent_claims_take_every_row_exactly_once(engine: Engine, member_id: int) -> None:
    _queue(engine, member_id, 2000)
    claimed: list[list[int]] = [[] for _ in range(4)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def dispatcher(slot: int) -> None:
        try:
            barrier.wait()
            while batch := claim(engine, "sms", limit=50, now=T0):
                claimed[slot].extend(m.id for m in batch)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=dispatcher, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    every = [i for ids in claimed for i in ids]
    assert len(every) == 2000 and len(set(every)) == 2000
    assert counts_by_status(engine)["sending"] == 2000


def test_each_outcome_moves_a_sending_row(engine: Engine, member_id: int) -> None:
    _queue(engine, member_id, 4)
    ok, retry, bad, lost = (m.id for m in claim(engine, "sms", limit=4, now=T0))
    now = T0 + timedelta(seconds=5)
    done = record_results(engine, [
        SendResult.accepted(ok, "SM1"), SendResult.transient(retry, "429", retry_after=30),
        SendResult.permanent(bad, "unsubscribed", effects=["opt_out_sms"]), SendResult.unknown(lost, "read timeout"),
    ], now=now, backoff=NO_JITTER)
    assert done.applied == 4 and done.ignored == [] and done.effects == [(member_id, "opt_out_sms")]
    sent, pending, failed, unknown = (_row(engine, i) for i in (ok, retry, bad, lost))
    assert (sent.status, sent.provider_id, sent.sent_at, sent.last_error) == ("sent", "SM1", now, None)
    assert (pending.status, pending.not_before, pending.last_error) == ("pending", now + timedelta(seconds=30), "429")
    assert (failed.status, failed.last_error) == ("failed", "unsubscribed")
    assert (unknown.status, unknown.last_error) == ("unknown", "read timeout")


def test_backoff_grows_is_capped_and_honours_retry_after() -> None:
    backoff = Backoff(base_seconds=2, cap_seconds=600, jitter=0.0)
    assert [backoff.delay(n) for n in (1, 2, 3, 4)] == [2, 4, 8, 16]
    assert backoff.delay(20) == 600 and backoff.delay(10_000) == 600
    assert backoff.delay(1, retry_after=45) == 45 and backoff.delay(6, retry_after=5) == 64
    jittered = Backoff(jitter=0.5, rng=random.Random(7))
    delays = [jittered.delay(3) for _ in range(50)]
    assert all(4 <= d <= 8 for d in delays) and len(set(delays)) > 1


def test_transient_retries_back_off_until_the_deadline(engine: Engine, member_id: int) -> None:
    _queue(engine, member_id, 1)
    now, waits = T0, []
    for _ in range(3):
        (message,) = claim(engine, "sms", limit=1, now=now)
        record_results(engine, [SendResult.transient(message.id, "503")], now=now, backoff=NO_JITTER,
                       deadline_for=max_age(timedelta(seconds=10)))
        row = _row(engine, message.id)
        if row.status != "pending":
            break
        waits.append(row.not_before - now)
        now = row.not_before
    assert waits == [timedelta(seconds=2), timedelta(seconds=4)]  # the third would land at T0 + 14 s > 10 s
    assert (row.status, row.attempts, row.last_error) == ("failed", 3, "gave up after 3 attempts: 503")


def test_results_only_apply_to_rows_still_sending(engine: Engine, member_id: int) -> None:
    _queue(engine, member_id, 2)
    first, second = claim(engine, "sms", limit=2, now=T0)
    assert recover_expired_leases(engine, now=T0 + timedelta(seconds=300)) == 0  # lease not yet over
    assert recover_expired_leases(engine, now=T0 + timedelta(seconds=301)) == 2
    assert _row(engine, first.id).last_error == LEASE_EXPIRED
    late = T0 + timedelta(seconds=400)
    done = record_results(engine, [SendResult.transient(first.id, "503"), SendResult.permanent(second.id, "x"),
                                   SendResult.accepted(99_999, "ghost")], now=late, backoff=NO_JITTER)
    assert done.applied == 0 and done.ignored == [first.id, second.id, 99_999]
    assert counts_by_status(engine)["unknown"] == 2
    assert claim(engine, "sms", limit=5, now=late) == []  # never back to pending by itself


def test_late_acceptance_after_recovery_marks_sent(engine: Engine, member_id: int) -> None:
    # Decision: an ACCEPTED result is the evidence reconciliation would look for, so it settles
    # an `unknown` row as sent. Anything else arriving late is ignored.
    _queue(engine, member_id, 2)
    first, second = claim(engine, "sms", limit=2, now=T0)
    recover_expired_leases(engine, now=T0 + timedelta(hours=1))
    late = T0 + timedelta(hours=2)
    done = record_results(engine, [SendResult.accepted(first.id, "SM9")], now=late, backoff=NO_JITTER)
    assert done.applied == 1
    row = _row(engine, first.id)
    assert (row.status, row.provider_id, row.sent_at, row.last_error) == ("sent", "SM9", late, None)
    assert resolve_unknown(engine, first.id, delivered=False) is False  # sent is final
    assert record_results(engine, [SendResult.accepted(first.id, "SM10")], now=late, backoff=NO_JITTER).applied == 0
    assert _row(engine, first.id).provider_id == "SM9"
    assert _row(engine, second.id).status == "unknown"


def test_resolve_unknown_both_ways(engine: Engine, member_id: int) -> None:
    _queue(engine, member_id, 2)
    found, absent = claim(engine, "sms", limit=2, now=T0)
    record_results(engine, [SendResult.unknown(found.id, "timeout"), SendResult.unknown(absent.id, "timeout")],
                   now=T0, backoff=NO_JITTER)
    later = T0 + timedelta(minutes=1)
    assert resolve_unknown(engine, found.id, delivered=True, provider_id="SM5", now=later)
    assert resolve_unknown(engine, absent.id, delivered=False, now=later)
    row = _row(engine, found.id)
    assert (row.status, row.provider_id, row.sent_at) == ("sent", "SM5", later)
    assert _row(engine, absent.id).status == "pending"
    (again,) = claim(engine, "sms", limit=5, now=later)
    assert again.id == absent.id and again.attempts == 2
    assert resolve_unknown(engine, again.id, delivered=True) is False  # only unknown rows are settled


_OUTCOMES = ("accepted", "transient", "permanent", "unknown")
_STEP = st.one_of(
    st.tuples(st.just("claim"), st.integers(1, 4)),
    st.tuples(st.just("record"), st.integers(1, 4), st.sampled_from(_OUTCOMES)),
    st.tuples(st.just("recover"), st.integers(0, 400)),
    st.tuples(st.just("wait"), st.integers(1, 120)),
)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(_STEP, min_size=1, max_size=15))
def test_random_histories_never_send_twice_or_lose_a_row(engine: Engine, member_id: int, steps: list) -> None:
    with engine.begin() as connection:  # hypothesis reuses the database across examples
        connection.execute(OUTBOX.delete())
    _queue(engine, member_id, 6)
    now, in_flight, sent_by = T0, [], {}
    for step in steps:
        before = _statuses(engine)
        if step[0] == "claim":
            batch = claim(engine, "sms", limit=step[1], now=now)
            assert all(before[m.id][0] == "pending" for m in batch)
            in_flight += [m.id for m in batch]  # kept after recovery: a stalled dispatcher may answer late
        elif step[0] == "record":
            taken, in_flight = in_flight[: step[1]], in_flight[step[1]:]
            record_results(engine, [_result(i, step[2]) for i in taken], now=now, backoff=NO_JITTER)
        elif step[0] == "recover":
            recover_expired_leases(engine, now=now, lease_seconds=step[1])
        else:
            now += timedelta(seconds=step[1])
        after = _statuses(engine)
        assert set(after) == set(before) and len(after) == 6  # no row lost or made up
        assert sum(counts_by_status(engine).values()) == 6
        for outbox_id, (status, provider_id) in after.items():
            if before[outbox_id][0] in {"sent", "failed"}:
                assert after[outbox_id] == before[outbox_id]  # terminal: never sent twice, never revived
            if before[outbox_id][0] == "unknown":
                assert status in {"unknown", "sent"}  # only evidence settles it, never a retry
            if status == "sent":
                assert sent_by.setdefault(outbox_id, provider_id) == provider_id


_PROVIDER_IDS = itertools.count()


def _statuses(engine: Engine) -> dict[int, tuple[str, str | None]]:
    with engine.connect() as connection:
        rows = connection.execute(sa.select(OUTBOX.c.id, OUTBOX.c.status, OUTBOX.c.provider_id))
        return {i: (str(status), provider_id) for i, status, provider_id in rows}


def _result(outbox_id: int, outcome: str) -> SendResult:
    if outcome == "accepted":
        return SendResult.accepted(outbox_id, f"P{outbox_id}-{next(_PROVIDER_IDS)}")
    if outcome == "transient":
        return SendResult.transient(outbox_id, "503")
    if outcome == "permanent":
        return SendResult.permanent(outbox_id, "bad number")
    return SendResult.unknown(outbox_id, "timeout")


def test_counts_by_status_lists_every_status(engine: Engine, member_id: int) -> None:
    assert set(counts_by_status(engine).values()) == {0}
    _queue(engine, member_id, 2)
    claim(engine, "sms", limit=1, now=T0)
    assert Counter({k: v for k, v in counts_by_status(engine).items() if v}) == Counter(pending=1, sending=1)
