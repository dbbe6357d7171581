"""The points ledger: append-only entries, and a balance that always equals their sum.

Every change to a balance goes through here and happens in the same database transaction
as the ledger entry that explains it. Debits use a conditional ``UPDATE ... WHERE
points_balance >= n``, which the database evaluates atomically (PostgreSQL re-checks the
condition after waiting for a concurrent writer's row lock), so concurrent redemptions can
never overdraw; the ``CHECK (points_balance >= 0)`` constraint is the last line of defence.

Functions here never commit: the caller owns the transaction.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import Session

from loyalty.db import expire_cached
from loyalty.models import MEMBERS, POINTS_ENTRIES, TRANSACTIONS, Member, PointsEntry, TierChange
from loyalty.programme import Programme
from loyalty.tiers import evaluate_tiers
from loyalty.types import PointsKind, utcnow

ENTRIES = POINTS_ENTRIES


class LedgerError(Exception):
    """A ledger operation was refused."""


class UnknownMember(LedgerError):
    """No member has that id."""


class InsufficientPoints(LedgerError):
    """The member does not have enough points for the debit."""


def post_entry(
    session: Session,
    *,
    member_id: int,
    kind: PointsKind,
    points: int,
    reason: str,
    source: str,
    idempotency_key: str | None = None,
    transaction_id: int | None = None,
    at: datetime | None = None,
) -> PointsEntry:
    """Append one entry and move the balance by ``points`` (negative for a debit).

    With an ``idempotency_key`` already in the ledger, nothing changes and the existing
    entry is returned, so a retried request credits or debits once. Raises
    :class:`InsufficientPoints` rather than let a balance go negative.
    """
    if idempotency_key is not None:
        existing = session.scalars(sa.select(PointsEntry).where(ENTRIES.c.idempotency_key == idempotency_key)).first()
        if existing is not None:
            return existing
    now = utcnow()
    # A savepoint, so a refused debit leaves the caller's transaction usable.
    with session.begin_nested():
        moved = session.execute(
            MEMBERS.update()
            .where(MEMBERS.c.id == member_id, MEMBERS.c.points_balance + points >= 0)
            .values(points_balance=MEMBERS.c.points_balance + points, updated_at=now)
        )
        if moved.rowcount == 0:  # type: ignore[attr-defined]
            if session.get(Member, member_id) is None:
                raise UnknownMember(f"no member with id {member_id}")
            raise InsufficientPoints(f"member {member_id} has fewer than {-points} points")
        entry = PointsEntry(
            member_id=member_id, kind=kind, points=points, reason=reason, source=source,
            idempotency_key=idempotency_key, transaction_id=transaction_id, created_at=at or now,
        )
        session.add(entry)
    expire_cached(session, Member, {member_id})
    return entry



def earn(session: Session, member_id: int, points: int, *, reason: str, source: str,
         idempotency_key: str | None = None) -> PointsEntry:
    """Credit ``points`` (> 0) to a member."""
    if points <= 0:
        raise ValueError("earned points must be positive")
    return post_entry(session, member_id=member_id, kind=PointsKind.EARN, points=points, reason=reason,
                      source=source, idempotency_key=idempotency_key)


def redeem(session: Session, member_id: int, points: int, *, reason: str, source: str,
           idempotency_key: str | None = None) -> PointsEntry:
    """Debit ``points`` (> 0) for a reward; never overdraws."""
    if points <= 0:
        raise ValueError("redeemed points must be positive")
    return post_entry(session, member_id=member_id, kind=PointsKind.REDEEM, points=-points, reason=reason,
                      source=source, idempotency_key=idempotency_key)


def adjust(session: Session, member_id: int, points: int, *, reason: str, source: str,
           idempotency_key: str | None = None) -> PointsEntry:
    """A manual correction, either way; a reason is mandatory."""
    if points == 0 or not reason.strip():
        raise ValueError("an adjustment needs a non-zero amount and a reason")
    return post_entry(session, member_id=member_id, kind=PointsKind.ADJUST, points=points, reason=reason,
                      source=source, idempotency_key=idempotency_key)


def balance_from_ledger(session: Session, member_id: int) -> int:
    """The sum of a member's entries (what ``points_balance`` must equal)."""
    total = session.scalar(sa.select(sa.func.coalesce(sa.func.sum(ENTRIES.c.points), 0))
                           .where(ENTRIES.c.member_id == member_id))
    return int(total or 0)


@dataclass(frozen=True)
class Purchase:
    """A purchase to record; ``external_id`` makes recording it idempotent."""

    member_id: int
    external_id: str
    amount_cents: int
    occurred_at: datetime
    currency: str = "CAD"
    category: str = "general"
    channel: str = "store"


@dataclass
class PurchaseBatch:
    """What :func:`record_purchases` did."""

    inserted: int = 0
    duplicates: int = 0
    points: int = 0
    tier_changes: list[TierChange] = field(default_factory=list)


def record_purchases(session: Session, programme: Programme, purchases: Sequence[Purchase]) -> PurchaseBatch:
    """Record purchases, credit their points and evaluate tier upgrades, set-wise.

    Transactions whose ``external_id`` is already stored are skipped, so re-importing a
    file credits nothing twice. Refunds (negative amounts) claw back points, never below zero.
    """
    batch = PurchaseBatch()
    unique = list({p.external_id: p for p in reversed(purchases)}.values())[::-1]  # first occurrence wins
    if not unique:
        return batch
    inserted = _insert_transactions(session, unique)
    batch.inserted, batch.duplicates = len(inserted), len(purchases) - len(inserted)
    if not inserted:
        return batch
    new = [p for p in unique if p.external_id in inserted]
    tiers = dict(session.execute(sa.select(MEMBERS.c.id, MEMBERS.c.tier)
                                 .where(MEMBERS.c.id.in_({p.member_id for p in new}))).all())
    credits = [(p, programme.points_for(p.amount_cents, p.category, tiers[p.member_id])) for p in new]
    batch.points = _credit_purchases(session, [(p, pts) for p, pts in credits if pts > 0], inserted)
    for refund in (p for p in new if p.amount_cents < 0):
        batch.points -= _claw_back(session, programme, refund, tiers[refund.member_id], inserted)
    _touch_last_purchase(session, new)
    batch.tier_changes = evaluate_tiers(session, programme, as_of=utcnow(),
                                        member_ids=sorted({p.member_id for p in new}), allow_downgrade=False)
    return batch


def _insert_transactions(session: Session, purchases: Sequence[Purchase]) -> dict[str, int]:
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    rows = [{"external_id": p.external_id, "member_id": p.member_id, "amount_cents": p.amount_cents,
             "currency": p.currency, "category": p.category, "channel": p.channel,
             "occurred_at": p.occurred_at} for p in purchases]
    stmt = insert(TRANSACTIONS).on_conflict_do_nothing(index_elements=["external_id"])
    returned = session.execute(stmt.returning(TRANSACTIONS.c.external_id, TRANSACTIONS.c.id), rows)
    return dict(returned.all())


def _credit_purchases(session: Session, credits: list[tuple[Purchase, int]], ids: dict[str, int]) -> int:
    if not credits:
        return 0
    session.execute(ENTRIES.insert(), [
        {"member_id": p.member_id, "kind": PointsKind.EARN, "points": pts, "reason": f"purchase {p.category}",
         "source": "transaction", "idempotency_key": f"txn:{p.external_id}",
         "transaction_id": ids[p.external_id], "created_at": p.occurred_at}
        for p, pts in credits
    ])
    per_member: dict[int, int] = defaultdict(int)
    for purchase, pts in credits:
        per_member[purchase.member_id] += pts
    session.execute(
        MEMBERS.update().where(MEMBERS.c.id == sa.bindparam("mid"))
        .values(points_balance=MEMBERS.c.points_balance + sa.bindparam("delta"), updated_at=utcnow()),
        [{"mid": mid, "delta": delta} for mid, delta in per_member.items()],
    )
    expire_cached(session, Member, set(per_member))
    return sum(per_member.values())


def _claw_back(session: Session, programme: Programme, refund: Purchase, tier: str, ids: dict[str, int]) -> int:
    wanted = programme.points_for(-refund.amount_cents, refund.category, tier)
    balance = session.scalar(sa.select(MEMBERS.c.points_balance).where(MEMBERS.c.id == refund.member_id))
    points = min(wanted, int(balance or 0))
    if points > 0:
        post_entry(session, member_id=refund.member_id, kind=PointsKind.ADJUST, points=-points,
                   reason=f"refund {refund.category}", source="transaction",
                   idempotency_key=f"txn:{refund.external_id}", transaction_id=ids[refund.external_id],
                   at=refund.occurred_at)
    return points


def _touch_last_purchase(session: Session, purchases: Sequence[Purchase]) -> None:
    latest: dict[int, datetime] = {}
    for p in purchases:
        if p.amount_cents > 0 and (p.member_id not in latest or p.occurred_at > latest[p.member_id]):
            latest[p.member_id] = p.occurred_at
    if not latest:
        return
    column = MEMBERS.c.last_purchase_at
    when = sa.bindparam("at", type_=column.type)
    session.execute(
        MEMBERS.update().where(MEMBERS.c.id == sa.bindparam("mid"))
        .values(last_purchase_at=sa.case((column.is_(None) | (column < when), when), else_=column)),
        [{"mid": mid, "at": at} for mid, at in latest.items()],
    )
    expire_cached(session, Member, set(latest))
