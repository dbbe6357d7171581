"""Reading a member's whole story: profile, ledger, consent, messages, purchases, tier moves."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session

from loyalty.ledger import balance_from_ledger
from loyalty.models import (
    MEMBERS,
    ChannelConsent,
    Member,
    OutboxMessage,
    PointsEntry,
    PushSubscription,
    TierChange,
    Transaction,
)


class MemberNotFound(LookupError):
    """No member matches the reference given."""


@dataclass
class MemberProfile:
    """Everything ``loyalflow members show`` prints, newest first where it is a history."""

    member: Member
    ledger: list[PointsEntry]
    ledger_total: int
    consents: list[ChannelConsent]
    push_subscriptions: list[PushSubscription]
    messages: list[OutboxMessage]
    transactions: list[Transaction]
    tier_changes: list[TierChange]


def find_member(session: Session, reference: str) -> Member:
    """A member by external id, or by numeric database id as a fallback."""
    member = session.scalars(sa.select(Member).where(MEMBERS.c.external_id == reference)).first()
    if member is None and reference.isdigit():
        member = session.get(Member, int(reference))
    if member is None:
        raise MemberNotFound(f"no member with external id or id {reference!r}")
    return member


def _latest(session: Session, model: type[Any], order_column: str, member_id: int, limit: int) -> list[Any]:
    table = model.__table__
    query = (sa.select(model).where(table.c.member_id == member_id)
             .order_by(table.c[order_column].desc(), table.c.id.desc()).limit(limit))
    return list(session.scalars(query))


def member_profile(session: Session, reference: str, *, limit: int = 20) -> MemberProfile:
    """Load the member and the latest ``limit`` rows of each history."""
    member = find_member(session, reference)
    assert member.id is not None
    total = balance_from_ledger(session, member.id)
    return MemberProfile(
        member=member,
        ledger=_latest(session, PointsEntry, "created_at", member.id, limit),
        ledger_total=total,
        consents=_latest(session, ChannelConsent, "recorded_at", member.id, limit),
        push_subscriptions=_latest(session, PushSubscription, "created_at", member.id, limit),
        messages=_latest(session, OutboxMessage, "created_at", member.id, limit),
        transactions=_latest(session, Transaction, "occurred_at", member.id, limit),
        tier_changes=_latest(session, TierChange, "changed_at", member.id, limit),
    )
