"""The points ledger: never negative, balance equals the sum, idempotent, safe under concurrency."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import Engine
from sqlmodel import Session

from loyalty.ledger import (
    InsufficientPoints,
    Purchase,
    UnknownMember,
    adjust,
    balance_from_ledger,
    earn,
    record_purchases,
    redeem,
)
from loyalty.models import Member, PointsEntry, TierChange
from loyalty.programme import Programme
from loyalty.types import PointsKind, TierDirection, utcnow
from tests.factories import add_member


def _assert_consistent(session: Session, member_id: int) -> None:
    member = session.get(Member, member_id, populate_existing=True)
    assert member is not None
    assert member.points_balance >= 0
    assert member.points_balance == balance_from_ledger(session, member_id)


def test_earn_then_redeem_moves_balance_and_appends_entries(session: Session) -> None:
    member = add_member(session)
    earn(session, member.id, 300, reason="welcome", source="test")
    redeem(session, member.id, 120, reason="coffee", source="test")
    session.commit()
    _assert_consistent(session, member.id)
    assert session.get(Member, member.id).points_balance == 180  # type: ignore[union-attr]
    kinds = session.scalars(sa.select(PointsEntry.kind).where(PointsEntry.member_id == member.id)).all()
    assert sorted(kinds) == [PointsKind.EARN, PointsKind.REDEEM]


def test_overdraw_is_refused_and_leaves_the_transaction_usable(session: Session) -> None:
    member = add_member(session)
    earn(session, member.id, 50, reason="welcome", source="test")
    with pytest.raises(InsufficientPoints, match="fewer than 51"):
        redeem(session, member.id, 51, reason="too much", source="test")
    redeem(session, member.id, 50, reason="exactly all", source="test")  # same transaction still works
    session.commit()
    _assert_consistent(session, member.id)
    assert session.get(Member, member.id).points_balance == 0  # type: ignore[union-attr]


def test_unknown_member_and_bad_amounts_are_refused(session: Session) -> None:
    with pytest.raises(UnknownMember):
        earn(session, 999_999, 10, reason="x", source="test")
    member = add_member(session)
    with pytest.raises(ValueError, match="positive"):
        redeem(session, member.id, 0, reason="x", source="test")
    with pytest.raises(ValueError, match="reason"):
        adjust(session, member.id, 10, reason=" ", source="test")


def test_idempotency_key_applies_once(session: Session) -> None:
    member = add_member(session)
    first = earn(session, member.id, 40, reason="survey", source="test", idempotency_key="survey:1")
    again = earn(session, member.id, 40, reason="survey", source="test", idempotency_key="survey:1")
    session.commit()
    assert again.id == first.id
    assert session.get(Member, member.id).points_balance == 40  # type: ignore[union-attr]


def test_the_database_itself_refuses_a_negative_balance(session: Session) -> None:
    member = add_member(session)
    with pytest.raises(sa.exc.IntegrityError):
        session.execute(sa.update(Member).where(Member.id == member.id).values(points_balance=-1))  # type: ignore[arg-type]


operations = st.lists(st.tuples(st.sampled_from(["earn", "redeem", "adjust"]), st.integers(-500, 500)),
                      min_size=1, max_size=25)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=operations)
def test_any_sequence_keeps_balance_equal_to_the_sum_and_never_negative(session: Session, ops: list) -> None:
    member = add_member(session)
    expected = 0
    for op, amount in ops:
        try:
            if op == "earn":
                earn(session, member.id, amount, reason="r", source="fuzz")
            elif op == "redeem":
                redeem(session, member.id, amount, reason="r", source="fuzz")
            else:
                adjust(session, member.id, amount, reason="r", source="fuzz")
        except (ValueError, InsufficientPoints):
            continue
        expected += amount if op != "redeem" else -amount
    session.commit()
    _assert_consistent(session, member.id)
    assert session.get(Member, member.id).points_balance == expected  # type: ignore[union-attr]


def test_concurrent_redemptions_never_overdraw(engine: Engine) -> None:
    with Session(engine) as session:
        member_id = add_member(session).id
        earn(session, member_id, 500, reason="seed", source="test")
        session.commit()
    successes: list[int] = []
    failures: list[int] = []
    barrier = threading.Barrier(8)

    def spend(worker: int) -> None:
        barrier.wait()
        for attempt in range(20):
            with Session(engine) as session:
                try:
                    redeem(session, member_id, 7, reason="race", source="test",
                           idempotency_key=f"race:{worker}:{attempt}")
                    session.commit()
                    successes.append(7)
                except InsufficientPoints:
                    session.rollback()
                    failures.append(7)

    threads = [threading.Thread(target=spend, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(successes) == 500 // 7  # every redemption that fitted went through, no more
    assert len(successes) + len(failures) == 160
    with Session(engine) as session:
        _assert_consistent(session, member_id)
        assert session.get(Member, member_id).points_balance == 500 - 7 * (500 // 7)  # type: ignore[union-attr]


def test_purchases_earn_by_category_and_tier_and_are_idempotent(session: Session, programme: Programme) -> None:
    silver = add_member(session, tier="silver")
    basic = add_member(session)
    now = utcnow()
    purchases = [
        Purchase(member_id=silver.id, external_id="T1", amount_cents=10_000, occurred_at=now, category="beauty"),
        Purchase(member_id=basic.id, external_id="T2", amount_cents=2_599, occurred_at=now, category="grocery"),
    ]
    first = record_purchases(session, programme, purchases)
    again = record_purchases(session, programme, purchases)
    session.commit()
    # beauty earns 3x, silver 1.25x: 100 $ -> 375 points; grocery 1x at member tier: 25.99 $ -> 25 points.
    assert (first.inserted, first.duplicates, first.points) == (2, 0, 400)
    assert (again.inserted, again.duplicates, again.points) == (0, 2, 0)
    for member, points in ((silver, 375), (basic, 25)):
        _assert_consistent(session, member.id)
        refreshed = session.get(Member, member.id, populate_existing=True)
        assert refreshed is not None
        assert refreshed.points_balance == points
        assert refreshed.last_purchase_at == now


def test_a_transaction_repeated_within_one_batch_counts_once(session: Session, programme: Programme) -> None:
    member = add_member(session)
    twice = Purchase(member.id, "DUP", 5_000, utcnow())
    batch = record_purchases(session, programme, [twice, twice])
    assert (batch.inserted, batch.duplicates, batch.points) == (1, 1, 50)
    _assert_consistent(session, member.id)


def test_refund_claws_back_points_but_never_below_zero(session: Session, programme: Programme) -> None:
    member = add_member(session)
    now = utcnow()
    record_purchases(session, programme, [Purchase(member.id, "B1", 4_000, now - timedelta(days=2))])
    redeem(session, member.id, 30, reason="reward", source="test")
    batch = record_purchases(session, programme, [Purchase(member.id, "R1", -4_000, now)])
    session.commit()
    assert batch.points == -10  # 40 earned, 30 spent: only the 10 left can be taken back
    _assert_consistent(session, member.id)
    assert session.get(Member, member.id, populate_existing=True).points_balance == 0  # type: ignore[union-attr]


def test_a_big_purchase_records_a_tier_upgrade(session: Session, programme: Programme) -> None:
    member = add_member(session)
    batch = record_purchases(session, programme, [Purchase(member.id, "BIG", 120_000, utcnow(), category="home")])
    session.commit()
    assert [(c.from_tier, c.to_tier, c.direction) for c in batch.tier_changes] == [
        ("member", "silver", TierDirection.UP)]
    stored = session.scalars(sa.select(TierChange).where(TierChange.member_id == member.id)).one()
    assert stored.handled_at is None and stored.qualifying_value == 1200
    assert session.get(Member, member.id, populate_existing=True).tier == "silver"  # type: ignore[union-attr]
