"""Consent and suppression: who may be sent what, and the facts that change it.

Two different things, kept apart on purpose:

- **consent** (``channel_consents``) is the member's choice per channel: opted in or not, with the
  source that recorded it (import, preference page, STOP reply, unsubscribe link);
- **suppression** (``suppressions``) is a fact about an *address*: a mailbox that hard-bounced or
  complained, a number that replied STOP or does not exist, a dead push endpoint. It holds whoever
  the address belongs to, so a re-import cannot resurrect it.

Facts arrive from the dispatcher (provider answers such as Twilio 21610) and from webhooks; every
function here is idempotent so a replayed event or a retried batch changes nothing twice.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from loyalty.db import fetch_rows
from loyalty.models import CHANNEL_CONSENTS, MEMBERS, PUSH_SUBSCRIPTIONS, SUPPRESSIONS
from loyalty.types import Channel, as_utc, utcnow


class Fact(StrEnum):
    """Something a provider or a member told us that changes who may be contacted."""

    OPT_OUT_SMS = "opt_out_sms"  # Twilio 21610, or a STOP reply
    INVALID_ADDRESS = "invalid_address"  # Twilio 21211/21614: the number cannot receive SMS
    REMOVE_SUBSCRIPTION = "remove_subscription"  # Web Push 404/410, FCM UNREGISTERED
    HARD_BOUNCE = "hard_bounce"
    SPAM_COMPLAINT = "spam_complaint"
    UNSUBSCRIBE = "unsubscribe"  # one-click link, provider unsubscribe event


#: Facts that also withdraw the member's consent on the channel (they said no, not "cannot").
_WITHDRAWS_CONSENT = {Fact.OPT_OUT_SMS, Fact.SPAM_COMPLAINT, Fact.UNSUBSCRIBE}
#: Facts that block the address itself. A plain unsubscribe is the member's choice, not the address's.
_SUPPRESSES = {Fact.OPT_OUT_SMS, Fact.INVALID_ADDRESS, Fact.HARD_BOUNCE, Fact.SPAM_COMPLAINT}
_SUPPRESSION_REASON = {Fact.OPT_OUT_SMS: "sms_stop"}


@dataclass(frozen=True)
class AddressFact:
    """A fact about one address on one channel, and the member it was sent for when known."""

    channel: str
    address: str
    fact: str
    member_id: int | None = None
    source: str = ""


def normalise_address(channel: str, address: str) -> str:
    """The form suppressions are stored and looked up in (emails compare case-insensitively)."""
    address = address.strip()
    return address.lower() if channel == Channel.EMAIL else address


def _insert(connection: sa.Connection, table: sa.Table) -> sa.Insert:
    dialect_insert = pg_insert if connection.dialect.name == "postgresql" else sqlite_insert
    return dialect_insert(table)


def set_consent(connection: sa.Connection, member_id: int, channel: str, opted_in: bool, *, source: str,
                now: datetime | None = None) -> None:
    """Record the member's current choice for ``channel`` (one row per member and channel)."""
    at = as_utc(now or utcnow())
    stmt = _insert(connection, CHANNEL_CONSENTS).values(
        member_id=member_id, channel=channel, opted_in=opted_in, source=source[:64], recorded_at=at)
    stmt = stmt.on_conflict_do_update(  # type: ignore[attr-defined]
        index_elements=["member_id", "channel"],
        set_={"opted_in": opted_in, "source": source[:64], "recorded_at": at})
    connection.execute(stmt)


def suppress(connection: sa.Connection, channel: str, address: str, reason: str, *, member_id: int | None = None,
             source: str = "", now: datetime | None = None) -> bool:
    """Block ``address`` on ``channel``; False if it already was (the first reason is kept)."""
    stmt = _insert(connection, SUPPRESSIONS).values(
        channel=channel, address=normalise_address(channel, address), reason=reason[:32], member_id=member_id,
        source=source[:64], created_at=as_utc(now or utcnow()))
    stmt = stmt.on_conflict_do_nothing(index_elements=["channel", "address"])  # type: ignore[attr-defined]
    return bool(connection.execute(stmt).rowcount)


def lift_suppression(connection: sa.Connection, channel: str, address: str, *, reasons: Iterable[str]) -> int:
    """Remove a suppression with one of ``reasons`` (a START reply lifts ``sms_stop``, never a bounce)."""
    stmt = SUPPRESSIONS.delete().where(SUPPRESSIONS.c.channel == channel,
                                       SUPPRESSIONS.c.address == normalise_address(channel, address),
                                       SUPPRESSIONS.c.reason.in_(list(reasons)))
    return int(connection.execute(stmt).rowcount)


def apply_fact(connection: sa.Connection, fact: AddressFact, *, now: datetime | None = None) -> None:
    """Act on one fact: withdraw consent, suppress the address and/or drop a dead push subscription."""
    kind = Fact(fact.fact)
    if kind is Fact.REMOVE_SUBSCRIPTION:
        connection.execute(PUSH_SUBSCRIPTIONS.delete().where(PUSH_SUBSCRIPTIONS.c.endpoint == fact.address))
        return
    if kind in _SUPPRESSES:
        suppress(connection, fact.channel, fact.address, _SUPPRESSION_REASON.get(kind, kind.value),
                 member_id=fact.member_id, source=fact.source, now=now)
    if kind in _WITHDRAWS_CONSENT and fact.member_id is not None:
        set_consent(connection, fact.member_id, fact.channel, False, source=fact.source or kind.value, now=now)


def apply_facts(engine: sa.Engine, facts: Sequence[AddressFact], *, now: datetime | None = None) -> int:
    """Apply ``facts`` in one transaction; returns how many were given. Unknown fact names are refused."""
    for fact in facts:
        Fact(fact.fact)  # fail before writing anything
    if facts:
        with engine.begin() as connection:
            for fact in facts:
                apply_fact(connection, fact, now=now)
    return len(facts)


def suppressed_addresses(connection: sa.Connection, channel: str, addresses: Iterable[str]) -> set[str]:
    """Which of ``addresses`` (as given) are suppressed on ``channel``."""
    by_normal = {normalise_address(channel, a): a for a in addresses}
    if not by_normal:
        return set()
    query = sa.select(SUPPRESSIONS.c.address).where(SUPPRESSIONS.c.channel == channel,
                                                    SUPPRESSIONS.c.address.in_(list(by_normal)))
    return {by_normal[row[0]] for row in fetch_rows(connection, query)}


def consenting_members(connection: sa.Connection, channel: str, member_ids: Iterable[int]) -> set[int]:
    """Which of ``member_ids`` are opted in on ``channel``; no recorded choice means no."""
    ids = list(set(member_ids))
    if not ids:
        return set()
    query = sa.select(CHANNEL_CONSENTS.c.member_id).where(
        CHANNEL_CONSENTS.c.channel == channel, CHANNEL_CONSENTS.c.opted_in.is_(True),
        CHANNEL_CONSENTS.c.member_id.in_(ids))
    return {int(row[0]) for row in fetch_rows(connection, query)}


def members_with_phone(connection: sa.Connection, phone: str) -> list[int]:
    """Members whose E.164 phone is ``phone`` (a STOP reply speaks for every one of them)."""
    query = sa.select(MEMBERS.c.id).where(MEMBERS.c.phone == phone).order_by(MEMBERS.c.id)
    return [int(row[0]) for row in fetch_rows(connection, query)]
