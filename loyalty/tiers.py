"""Tier evaluation: who qualifies for which tier, and the record of every move.

A member's *qualifying value* is what they earned (``basis: points``) or spent (``basis:
spend``, in cents) over the last ``window_months``. Evaluation is set-based: one grouped
query for a range or list of members, one bulk update, and one :class:`TierChange` row per
move. Those rows are the durable record the tier-upgrade trigger works from: a change with
no ``handled_at`` still owes the member a message, so none can be lost between the ledger
and the messaging flow.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlmodel import Session

from loyalty.db import expire_cached, fetch_rows
from loyalty.models import MEMBERS, POINTS_ENTRIES, TIER_CHANGES, TRANSACTIONS, Member, TierChange
from loyalty.programme import Programme, TierBasis, TierRules
from loyalty.types import PointsKind, TierDirection, utcnow

ENTRIES = POINTS_ENTRIES
CHANGES = TIER_CHANGES

#: Months are taken as 30.44 days: a rolling window needs no calendar arithmetic.
DAYS_PER_MONTH = 30.44


def window_start(rules: TierRules, as_of: datetime) -> datetime:
    """The start of the qualifying window ending at ``as_of``."""
    return as_of - timedelta(days=rules.window_months * DAYS_PER_MONTH)


def tier_for(value: int, rules: TierRules) -> str:
    """The highest tier whose threshold ``value`` reaches."""
    thresholds = [tier.threshold for tier in rules.tiers]
    return rules.tiers[max(0, bisect_right(thresholds, value) - 1)].code


def _member_scope(member_ids: Sequence[int] | None, id_range: tuple[int, int] | None) -> sa.ColumnElement[bool]:
    if member_ids is not None:
        return MEMBERS.c.id.in_(member_ids)
    if id_range is not None:
        return MEMBERS.c.id.between(id_range[0], id_range[1] - 1)
    return sa.true()


def _id_bounds(member_ids: Sequence[int] | None, id_range: tuple[int, int] | None) -> tuple[int, int] | None:
    """Inclusive id bounds of the scope, to push into the totals (None: every member)."""
    if member_ids is not None:
        return (min(member_ids), max(member_ids)) if member_ids else (0, -1)
    return (id_range[0], id_range[1] - 1) if id_range is not None else None


def qualifying_query(rules: TierRules, as_of: datetime, *, member_ids: Sequence[int] | None = None,
                     id_range: tuple[int, int] | None = None) -> sa.Select[int, str, int]:
    """``(member_id, tier, qualifying value)`` for the members given (all when neither is given).

    The window totals are bounded to the scope's ids *before* grouping: totalling every member and
    joining afterwards made each chunk's cost grow with the whole programme (45 s a chunk at 1M members).
    """
    since = window_start(rules, as_of)
    if rules.basis is TierBasis.POINTS:
        member, value = ENTRIES.c.member_id, ENTRIES.c.points
        conditions = [ENTRIES.c.kind == PointsKind.EARN, ENTRIES.c.created_at >= since, ENTRIES.c.created_at <= as_of]
    else:
        member, value = TRANSACTIONS.c.member_id, TRANSACTIONS.c.amount_cents
        conditions = [TRANSACTIONS.c.occurred_at >= since, TRANSACTIONS.c.occurred_at <= as_of]
    bounds = _id_bounds(member_ids, id_range)
    if bounds is not None:
        conditions.append(member.between(*bounds))
    sub = (sa.select(member.label("mid"), sa.func.sum(value).label("value")).where(*conditions)
           .group_by(member).subquery())
    return (sa.select(MEMBERS.c.id, MEMBERS.c.tier, sa.func.coalesce(sub.c.value, 0))
            .select_from(MEMBERS.outerjoin(sub, sub.c.mid == MEMBERS.c.id))
            .where(_member_scope(member_ids, id_range)).order_by(MEMBERS.c.id))


def evaluate_tiers(
    session: Session,
    programme: Programme,
    *,
    as_of: datetime | None = None,
    member_ids: Sequence[int] | None = None,
    id_range: tuple[int, int] | None = None,
    allow_downgrade: bool | None = None,
    handled: bool = False,
) -> list[TierChange]:
    """Move members to the tier their qualifying value earns and record each move.

    Scope is ``member_ids``, or the id range ``[start, stop)``, or everyone. Downgrades
    follow ``tiers.yaml`` unless ``allow_downgrade`` says otherwise (purchases only ever
    upgrade). ``handled=True`` records moves that need no message (e.g. seeded history).
    """
    rules = programme.tiers
    as_of = as_of or utcnow()
    downgrade = rules.allow_downgrade if allow_downgrade is None else allow_downgrade
    changes: list[TierChange] = []
    now = utcnow()
    for member_id, current, value in fetch_rows(session, qualifying_query(rules, as_of, member_ids=member_ids,
                                                                          id_range=id_range)):
        target = tier_for(int(value), rules)
        direction = _direction(rules, current, target)
        if direction is None or (direction is TierDirection.DOWN and not downgrade):
            continue
        changes.append(TierChange(member_id=member_id, from_tier=current, to_tier=target, direction=direction,
                                  qualifying_value=int(value), changed_at=now,
                                  handled_at=now if handled else None))
    if changes:
        session.execute(MEMBERS.update().where(MEMBERS.c.id == sa.bindparam("mid"))
                        .values(tier=sa.bindparam("new_tier"), updated_at=now),
                        [{"mid": c.member_id, "new_tier": c.to_tier} for c in changes])
        expire_cached(session, Member, {c.member_id for c in changes})
        session.add_all(changes)
        session.flush()
    return changes


def _direction(rules: TierRules, current: str, target: str) -> TierDirection | None:
    if current == target:
        return None
    try:
        up = rules.rank(target) > rules.rank(current)
    except KeyError:  # a tier removed from the config: re-place the member
        up = True
    return TierDirection.UP if up else TierDirection.DOWN


def unhandled_changes(session: Session, *, direction: TierDirection = TierDirection.UP,
                      limit: int = 500) -> list[TierChange]:
    """Recorded tier changes still owing a message, oldest first."""
    query = (sa.select(TierChange).where(CHANGES.c.handled_at.is_(None), CHANGES.c.direction == direction)
             .order_by(CHANGES.c.id).limit(limit))
    return list(session.scalars(query))


def mark_handled(session: Session, change_ids: Sequence[int], *, at: datetime | None = None) -> int:
    """Mark tier changes as messaged; returns how many were still unhandled."""
    result = session.execute(CHANGES.update().where(CHANGES.c.id.in_(change_ids), CHANGES.c.handled_at.is_(None))
                             .values(handled_at=at or utcnow()))
    return int(result.rowcount)  # type: ignore[attr-defined]
