"""Points expiry: points not used within ``expiry.months`` of being earned expire, oldest first.

Debits (redemptions, earlier expiries, negative adjustments) consume the oldest credits
first, so what is expirable at ``as_of`` is simply::

    credits earned before (as_of - N months)  -  every debit up to as_of

when positive, capped by the balance. Earlier expiry entries count as debits, which makes
running expiry twice for the same day a no-op. Computed for a whole id range in one grouped
query and applied with one bulk insert and one bulk update.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlmodel import Session

from loyalty.db import expire_cached, fetch_rows
from loyalty.models import MEMBERS, POINTS_ENTRIES, Member
from loyalty.programme import Programme
from loyalty.tiers import DAYS_PER_MONTH
from loyalty.types import PointsKind, utcnow

ENTRIES = POINTS_ENTRIES


@dataclass(frozen=True)
class ExpiryResult:
    """Members touched and points expired by one run."""

    members: int
    points: int


def expiry_cutoff(programme: Programme, as_of: datetime) -> datetime:
    """Credits earned before this instant are past their validity at ``as_of``."""
    return as_of - timedelta(days=programme.expiry.months * DAYS_PER_MONTH)


def expirable_query(programme: Programme, as_of: datetime,
                    id_range: tuple[int, int] | None = None) -> sa.Select[int, int]:
    """``(member_id, points that expire at as_of)`` for members with something to expire."""
    cutoff = expiry_cutoff(programme, as_of)
    old_credits = sa.func.sum(sa.case(((ENTRIES.c.points > 0) & (ENTRIES.c.created_at < cutoff),
                                       ENTRIES.c.points), else_=0))
    debits = sa.func.sum(sa.case((ENTRIES.c.points < 0, -ENTRIES.c.points), else_=0))
    per_member = (sa.select(ENTRIES.c.member_id.label("mid"), (old_credits - debits).label("due"))
                  .where(ENTRIES.c.created_at <= as_of)
                  .group_by(ENTRIES.c.member_id))
    if id_range is not None:
        per_member = per_member.where(ENTRIES.c.member_id.between(id_range[0], id_range[1] - 1))
    due = per_member.subquery()
    capped = sa.case((due.c.due < MEMBERS.c.points_balance, due.c.due), else_=MEMBERS.c.points_balance)
    return (sa.select(due.c.mid, capped)
            .join(MEMBERS, MEMBERS.c.id == due.c.mid)
            .where(due.c.due > 0, MEMBERS.c.points_balance > 0)
            .order_by(due.c.mid))


def expire_points(session: Session, programme: Programme, *, as_of: datetime | None = None,
                  id_range: tuple[int, int] | None = None) -> ExpiryResult:
    """Expire what is due at ``as_of`` for members in ``[start, stop)`` (everyone by default)."""
    as_of = as_of or utcnow()
    due = [(int(mid), int(points)) for mid, points in fetch_rows(session, expirable_query(programme, as_of, id_range))
           if points > 0]
    if not due:
        return ExpiryResult(0, 0)
    stamp = f"{as_of:%Y%m%dT%H%M%S}"
    session.execute(ENTRIES.insert(), [
        {"member_id": mid, "kind": PointsKind.EXPIRE, "points": -points,
         "reason": f"points older than {programme.expiry.months} months", "source": "expiry",
         "idempotency_key": f"expire:{mid}:{stamp}", "created_at": as_of}
        for mid, points in due
    ])
    session.execute(
        MEMBERS.update().where(MEMBERS.c.id == sa.bindparam("mid"))
        .values(points_balance=MEMBERS.c.points_balance - sa.bindparam("points"), updated_at=utcnow()),
        [{"mid": mid, "points": points} for mid, points in due],
    )
    expire_cached(session, Member, {mid for mid, _ in due})
    return ExpiryResult(len(due), sum(points for _, points in due))


def points_expiring(session: Session, programme: Programme, *, within_days: int,
                    as_of: datetime | None = None,
                    id_range: tuple[int, int] | None = None) -> dict[int, int]:
    """Points each member will lose within ``within_days`` if they do nothing (for reminders)."""
    horizon = (as_of or utcnow()) + timedelta(days=within_days)
    return {int(mid): int(points) for mid, points in fetch_rows(session, expirable_query(programme, horizon, id_range))
            if points > 0}
