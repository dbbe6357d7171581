"""Tier thresholds, recorded tier changes, and oldest-first points expiry."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlmodel import Session

from loyalty.expiry import expire_points, points_expiring
from loyalty.ledger import balance_from_ledger, post_entry, redeem
from loyalty.models import Member, PointsEntry, TierChange
from loyalty.programme import Programme
from loyalty.tiers import evaluate_tiers, mark_handled, tier_for, unhandled_changes
from loyalty.types import PointsKind, TierDirection, utcnow
from tests.factories import add_member

NOW = utcnow().replace(microsecond=0)


def _earn_at(session: Session, member_id: int, points: int, days_ago: float) -> None:
    post_entry(session, member_id=member_id, kind=PointsKind.EARN, points=points, reason="test",
               source="test", at=NOW - timedelta(days=days_ago))


@pytest.mark.parametrize(("value", "tier"), [(0, "member"), (999, "member"), (1000, "silver"),
                                             (4999, "silver"), (5000, "gold"), (10**9, "platinum")])
def test_tier_for_uses_inclusive_thresholds(programme: Programme, value: int, tier: str) -> None:
    assert tier_for(value, programme.tiers) == tier


def test_only_points_earned_inside_the_window_qualify(session: Session, programme: Programme) -> None:
    member = add_member(session)
    _earn_at(session, member.id, 4000, days_ago=400)  # outside the 12-month window
    _earn_at(session, member.id, 1200, days_ago=30)
    changes = evaluate_tiers(session, programme, as_of=NOW)
    assert [(c.member_id, c.to_tier, c.qualifying_value) for c in changes] == [(member.id, "silver", 1200)]


def test_downgrades_follow_the_configuration(session: Session, programme: Programme) -> None:
    member = add_member(session, tier="gold")
    _earn_at(session, member.id, 1500, days_ago=10)
    assert evaluate_tiers(session, programme, as_of=NOW, allow_downgrade=False) == []
    changes = evaluate_tiers(session, programme, as_of=NOW)  # tiers.yaml allows downgrades
    assert [(c.from_tier, c.to_tier, c.direction) for c in changes] == [("gold", "silver", TierDirection.DOWN)]
    assert evaluate_tiers(session, programme, as_of=NOW) == []  # nothing moves twice


def test_evaluation_by_id_range_touches_only_that_range(session: Session, programme: Programme) -> None:
    inside, outside = add_member(session), add_member(session)
    for member in (inside, outside):
        _earn_at(session, member.id, 6000, days_ago=1)
    changes = evaluate_tiers(session, programme, as_of=NOW, id_range=(inside.id, inside.id + 1))
    assert [c.member_id for c in changes] == [inside.id]
    assert session.get(Member, outside.id).tier == "member"  # type: ignore[union-attr]


def test_unhandled_upgrades_are_kept_until_marked(session: Session, programme: Programme) -> None:
    a, b = add_member(session), add_member(session)
    for member in (a, b):
        _earn_at(session, member.id, 5500, days_ago=1)
    evaluate_tiers(session, programme, as_of=NOW)
    session.commit()
    pending = unhandled_changes(session)
    assert [c.member_id for c in pending] == [a.id, b.id]
    assert mark_handled(session, [pending[0].id]) == 1  # type: ignore[list-item]
    assert mark_handled(session, [pending[0].id]) == 0  # type: ignore[list-item]
    assert [c.member_id for c in unhandled_changes(session)] == [b.id]
    seeded = evaluate_tiers(session, programme, as_of=NOW + timedelta(days=400), handled=True)
    assert all(c.handled_at is not None for c in seeded)
    assert session.scalar(sa.select(sa.func.count()).select_from(TierChange)) == 4


def test_expiry_consumes_oldest_points_first_and_is_idempotent(session: Session, programme: Programme) -> None:
    member = add_member(session)
    _earn_at(session, member.id, 100, days_ago=800)  # older than 24 months at NOW
    _earn_at(session, member.id, 50, days_ago=30)
    redeem(session, member.id, 30, reason="reward", source="test")  # uses 30 of the old 100
    as_of = utcnow()  # after the redemption
    assert points_expiring(session, programme, within_days=0, as_of=as_of) == {member.id: 70}
    result = expire_points(session, programme, as_of=as_of)
    assert (result.members, result.points) == (1, 70)
    assert expire_points(session, programme, as_of=as_of + timedelta(hours=1)).points == 0
    session.commit()
    refreshed = session.get(Member, member.id, populate_existing=True)
    assert refreshed is not None and refreshed.points_balance == 50 == balance_from_ledger(session, member.id)


def test_points_expiring_soon_looks_ahead(session: Session, programme: Programme) -> None:
    member = add_member(session)
    days_valid = programme.expiry.months * 30.44
    _earn_at(session, member.id, 80, days_ago=days_valid - 10)  # expires in about 10 days
    assert points_expiring(session, programme, within_days=5, as_of=NOW) == {}
    assert points_expiring(session, programme, within_days=15, as_of=NOW) == {member.id: 80}
    kinds = session.scalars(sa.select(PointsEntry.kind).where(PointsEntry.member_id == member.id)).all()
    assert kinds == [PointsKind.EARN]  # looking ahead changes nothing
