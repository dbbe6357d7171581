"""The dispatcher: claim → gate → paced provider chunks → results, facts and reconciliation."""

from __future__ import annotations

import time
from collections import Counter
from datetime import time as clock_time

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from channels.base import Outcome
from channels.memory import MemoryAdapter, MemorySmsAdapter
from loyalty import outbox
from loyalty.consent import consenting_members, suppressed_addresses
from loyalty.db import session_scope
from loyalty.dispatch import ChannelDispatcher, dispatch
from loyalty.models import OUTBOX_MESSAGES
from loyalty.send_policy import SendPolicy
from loyalty.settings import DispatchSettings, PolicySettings
from tests.factories import add_contactable_member, queue

FAST = DispatchSettings(backoff_base_seconds=0.01, backoff_cap_seconds=0.05, reconcile_grace_seconds=0,
                        claim_size=50)
NO_QUIET_HOURS = PolicySettings(quiet_hours_start=clock_time(0), quiet_hours_end=clock_time(0))


@pytest.fixture
def members(engine: Engine) -> list[int]:
    with session_scope(engine) as session:
        ids = [add_contactable_member(session).id for _ in range(30)]
    return [i for i in ids if i is not None]


def _statuses(engine: Engine) -> Counter[str]:
    with engine.connect() as connection:
        rows = connection.execute(sa.select(OUTBOX_MESSAGES.c.status)).scalars().all()
    return Counter(str(s) for s in rows)


def test_drains_every_message_exactly_once(engine: Engine, members: list[int]) -> None:
    queue(engine, members, "email", per_member=2)
    adapter = MemoryAdapter()
    stats = ChannelDispatcher(engine, adapter, settings=FAST, paced=False).run(poll_seconds=0.01)
    assert stats.claimed == stats.sent == 60
    assert _statuses(engine) == {"sent": 60}
    assert sorted(m.message_id for m in adapter.sent) == sorted({m.message_id for m in adapter.sent})
    assert {m.tags["outbox_id"] for m in adapter.sent} == {str(m.message_id) for m in adapter.sent}


def test_transient_failures_are_retried_after_backoff(engine: Engine, members: list[int]) -> None:
    queue(engine, members[:3], "email")
    adapter = MemoryAdapter()
    first = outbox.claim(engine, "email", limit=1)[0]
    outbox.recover_expired_leases(engine, lease_seconds=0)  # put it in the state a crash leaves
    outbox.resolve_unknown(engine, first.id, delivered=False)
    adapter.fail(first.id, Outcome.TRANSIENT, "503", times=2)
    stats = ChannelDispatcher(engine, adapter, settings=FAST, paced=False).run(poll_seconds=0.01)
    assert stats.transient == 2 and stats.sent == 3
    assert _statuses(engine) == {"sent": 3}
    assert [m.message_id for m in adapter.sent].count(first.id) == 1


def test_unknown_outcome_is_reconciled_not_resent(engine: Engine, members: list[int]) -> None:
    queue(engine, members[:4], "email")
    adapter = MemoryAdapter()
    lost = outbox.claim(engine, "email", limit=1)[0]
    outbox.recover_expired_leases(engine, lease_seconds=0)
    outbox.resolve_unknown(engine, lost.id, delivered=False)
    adapter.fail(lost.id, Outcome.UNKNOWN, "read timeout")  # "left", but the answer was lost
    stats = ChannelDispatcher(engine, adapter, settings=FAST, paced=False).run(poll_seconds=0.01)
    assert stats.unknown == 1 and stats.reconciled_sent == 1 and stats.reconciled_resend == 0
    assert _statuses(engine) == {"sent": 4}
    assert [m.message_id for m in adapter.sent].count(lost.id) == 1


def test_provider_opt_out_withdraws_consent_and_suppresses(engine: Engine, members: list[int]) -> None:
    queue(engine, members[:2], "sms")
    adapter = MemorySmsAdapter()
    with engine.connect() as connection:
        target = connection.execute(sa.select(OUTBOX_MESSAGES.c.id, OUTBOX_MESSAGES.c.member_id,
                                              OUTBOX_MESSAGES.c.payload).limit(1)).one()
    adapter.fail(target.id, Outcome.PERMANENT, "21610", effects=["opt_out_sms"])
    stats = ChannelDispatcher(engine, adapter, settings=FAST, paced=False).run(poll_seconds=0.01)
    assert stats.failed == 1 and stats.facts == 1
    with engine.connect() as connection:
        assert target.member_id not in consenting_members(connection, "sms", [target.member_id])
        assert suppressed_addresses(connection, "sms", [target.payload["to"]]) == {target.payload["to"]}


def test_gate_skips_and_records_reasons(engine: Engine, members: list[int]) -> None:
    with session_scope(engine) as session:
        silent = add_contactable_member(session, channels=()).id
    assert silent is not None
    queue(engine, [*members[:2], silent], "email")
    policy = SendPolicy(NO_QUIET_HOURS)
    stats = ChannelDispatcher(engine, MemoryAdapter(), settings=FAST, policy=policy, paced=False).run(
        poll_seconds=0.01)
    assert stats.sent == 2 and stats.skipped == {"no_consent": 1}
    with engine.connect() as connection:
        reasons = connection.execute(sa.select(OUTBOX_MESSAGES.c.member_id, OUTBOX_MESSAGES.c.skip_reason)
                                     .where(OUTBOX_MESSAGES.c.status == "skipped")).all()
    assert [tuple(r) for r in reasons] == [(silent, "no_consent")]


def test_pacing_holds_the_configured_rate(engine: Engine, members: list[int]) -> None:
    queue(engine, members[:21], "email")
    started = time.monotonic()
    ChannelDispatcher(engine, MemoryAdapter(), settings=FAST, rate_per_second=40).run(poll_seconds=0.01)
    # 21 messages at 40/s in chunks of 4: each of the 5 later chunks waits 0.1 s for the one before.
    assert time.monotonic() - started >= 0.48


def test_sms_is_paced_by_segments(engine: Engine, members: list[int]) -> None:
    long_text = "x" * 300  # 2 GSM-7 segments
    queue(engine, members[:3], "sms", content={"body": long_text})
    started = time.monotonic()
    stats = ChannelDispatcher(engine, MemorySmsAdapter(), settings=FAST, rate_per_second=10).run(poll_seconds=0.01)
    assert stats.sent == 3
    assert time.monotonic() - started >= 0.38  # 2 segments each at 10/s: the 2nd and 3rd wait 0.2 s each


def test_dispatch_runs_channels_side_by_side(engine: Engine, members: list[int]) -> None:
    queue(engine, members, "email")
    queue(engine, members, "sms")
    stats = dispatch(engine, [MemoryAdapter(), MemorySmsAdapter()], settings=FAST,
                     rates={"email": 1000, "sms": 1000}, poll_seconds=0.01)
    assert stats["email"].sent == stats["sms"].sent == 30
    assert _statuses(engine) == {"sent": 60}
