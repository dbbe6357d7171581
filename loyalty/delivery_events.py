"""Provider delivery events (SendGrid event webhook, Twilio status callbacks), recorded once.

Each event is inserted into ``delivery_events`` keyed by its ``provider_event_id`` with ON CONFLICT
DO NOTHING; only events that were *newly* inserted act, so a provider's retry or a replayed
webhook changes nothing twice. Acting means:

- moving the outbox row forward, with UPDATEs conditional on the status left (a row never moves
  backwards: ``delivered`` is never overwritten by a late ``sent``, ``delivered`` is not re-set on a
  ``bounced`` row). A ``bounce`` may follow ``delivered``: mail servers bounce asynchronously after
  accepting a message, and the bounce is the later truth;
- handing consent facts (hard bounce, spam complaint, unsubscribe, SMS opt-out, invalid number)
  to :func:`loyalty.consent.apply_fact`, whatever the row's status: a fact about the address is
  true even if the row already settled.

Events for outbox rows we do not know are stored with ``outbox_id`` NULL, not refused: the
provider must get its 2xx, and the event is kept for investigation. One transaction per batch.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Engine

from loyalty.consent import AddressFact, Fact, apply_fact
from loyalty.db import fetch_rows
from loyalty.models import DELIVERY_EVENTS, MEMBERS, OUTBOX_MESSAGES
from loyalty.types import Channel, OutboxStatus, as_utc, utcnow

SENDGRID = "sendgrid"
TWILIO = "twilio"
# A report may beat the dispatcher's own commit of the provider's answer (the row is still `sending`):
# it is the provider's word that it took the message, so it settles the row; the late result is then ignored.
_SETTLEABLE = (OutboxStatus.SENT, OutboxStatus.UNKNOWN, OutboxStatus.SENDING)
#: target status → statuses it may be reached from (the conditional UPDATE's guard).
_FROM = {
    OutboxStatus.DELIVERED: _SETTLEABLE,
    OutboxStatus.BOUNCED: (*_SETTLEABLE, OutboxStatus.DELIVERED),
    OutboxStatus.FAILED: _SETTLEABLE,
}
#: Twilio error codes that are facts about the number (https://www.twilio.com/docs/api/errors).
_TWILIO_FACTS = {"21610": Fact.OPT_OUT_SMS, "30005": Fact.INVALID_ADDRESS, "30006": Fact.INVALID_ADDRESS,
                 "21211": Fact.INVALID_ADDRESS, "21614": Fact.INVALID_ADDRESS}
_SENDGRID_FACTS = {"spamreport": Fact.SPAM_COMPLAINT, "unsubscribe": Fact.UNSUBSCRIBE,
                   "group_unsubscribe": Fact.UNSUBSCRIBE}
_ERROR_LENGTH = 500


@dataclass(frozen=True)
class ProviderEvent:
    """One provider event, normalised: what happened, to which message, and what it implies."""

    provider: str
    provider_event_id: str
    event: str
    occurred_at: datetime
    payload: Mapping[str, Any]
    channel: str
    outbox_id: int | None = None  # our id, when the provider echoes it (SendGrid custom_args)
    provider_id: str | None = None  # the provider's message id, matched when outbox_id is absent
    address: str | None = None  # the recipient, for suppression facts
    new_status: OutboxStatus | None = None
    error: str | None = None
    fact: Fact | None = None


@dataclass
class RecordedEvents:
    """What :func:`record_events` did with a batch."""

    stored: int = 0
    duplicates: int = 0
    unmatched: int = 0
    transitions: int = 0
    facts: list[AddressFact] = field(default_factory=list)


def sendgrid_events(batch: Iterable[Mapping[str, Any]]) -> list[ProviderEvent]:
    """Normalise a SendGrid event webhook batch (the parsed JSON array)."""
    return [_sendgrid_event(item) for item in batch]


def _sendgrid_event(item: Mapping[str, Any]) -> ProviderEvent:
    name = str(item.get("event", ""))
    new_status, error, fact = None, None, _SENDGRID_FACTS.get(name)
    if name == "delivered":
        new_status = OutboxStatus.DELIVERED
    elif name == "bounce" and str(item.get("type", "bounce")) == "bounce":  # type "blocked" is a soft block
        new_status, error, fact = OutboxStatus.BOUNCED, _reason(item), Fact.HARD_BOUNCE
    elif name == "dropped":
        new_status, error = OutboxStatus.FAILED, f"dropped: {_reason(item)}"
    sg_message_id = str(item.get("sg_message_id") or "")
    return ProviderEvent(
        provider=SENDGRID, provider_event_id=str(item.get("sg_event_id") or _digest(item)), event=name[:32],
        occurred_at=_unix_time(item.get("timestamp")), payload=dict(item), channel=Channel.EMAIL,
        outbox_id=_int_or_none(item.get("outbox_id")), provider_id=sg_message_id.split(".")[0] or None,
        address=_str_or_none(item.get("email")), new_status=new_status, error=error, fact=fact)


def twilio_status_event(form: Mapping[str, str], *, now: datetime | None = None) -> ProviderEvent:
    """Normalise one Twilio status callback (its form fields)."""
    sid = form.get("MessageSid") or form.get("SmsSid") or ""
    status = form.get("MessageStatus") or form.get("SmsStatus") or ""
    code = (form.get("ErrorCode") or "").strip() or None
    new_status, error, fact = None, None, None
    if status == "delivered":
        new_status = OutboxStatus.DELIVERED
    elif status in ("undelivered", "failed"):
        new_status, error = OutboxStatus.BOUNCED, f"twilio {status}: error {code or 'none'}"
        fact = _TWILIO_FACTS.get(code or "")
    return ProviderEvent(
        provider=TWILIO, provider_event_id=f"{sid}:{status}"[:128], event=status[:32],
        occurred_at=as_utc(now or utcnow()), payload=dict(form), channel=Channel.SMS, provider_id=sid or None,
        address=_str_or_none(form.get("To")), new_status=new_status, error=error, fact=fact)


def record_events(engine: Engine, events: Sequence[ProviderEvent], *, now: datetime | None = None) -> RecordedEvents:
    """Store ``events`` and apply the effects of the new ones, all in one transaction."""
    recorded = RecordedEvents()
    if not events:
        return recorded
    with engine.begin() as connection:
        matched = _match_outbox(connection, events)
        recorded.unmatched = sum(1 for e in matched if e.outbox_id is None)
        new = _insert_new(connection, matched)
        recorded.stored, recorded.duplicates = len(new), len(matched) - len(new)
        recorded.transitions = _transition(connection, new, as_utc(now or utcnow()))
        recorded.facts = _apply_facts(connection, new, now)
    return recorded


def _match_outbox(connection: sa.Connection, events: Sequence[ProviderEvent]) -> list[ProviderEvent]:
    """Resolve each event's outbox row: by our id when given, else by the provider's id; None if unknown."""
    ids = {e.outbox_id for e in events if e.outbox_id is not None}
    by_provider = {(e.channel, e.provider_id) for e in events if e.outbox_id is None and e.provider_id}
    o = OUTBOX_MESSAGES.c
    known: set[int] = set()
    if ids:
        known = {int(r[0]) for r in fetch_rows(connection, sa.select(o.id).where(o.id.in_(ids)))}
    found: dict[tuple[str, str], int] = {}
    if by_provider:
        query = sa.select(o.channel, o.provider_id, o.id).where(
            o.provider_id.in_({pid for _, pid in by_provider}))
        found = {(str(ch), str(pid)): int(i) for ch, pid, i in fetch_rows(connection, query)}
    out = []
    for event in events:
        if event.outbox_id is not None:
            outbox_id = event.outbox_id if event.outbox_id in known else None
        else:
            outbox_id = found.get((event.channel, event.provider_id or ""))
        out.append(replace(event, outbox_id=outbox_id))
    return out


def _insert_new(connection: sa.Connection, events: list[ProviderEvent]) -> list[ProviderEvent]:
    """Insert the events; return those that were not stored before (first of any repeats in the batch)."""
    unique = list({e.provider_event_id: e for e in reversed(events)}.values())[::-1]
    rows = [{"outbox_id": e.outbox_id, "provider": e.provider, "provider_event_id": e.provider_event_id,
             "event": e.event, "occurred_at": e.occurred_at, "payload": dict(e.payload)} for e in unique]
    insert = pg_insert if connection.dialect.name == "postgresql" else sqlite_insert
    stmt = (insert(DELIVERY_EVENTS).on_conflict_do_nothing(index_elements=["provider_event_id"])
            .returning(DELIVERY_EVENTS.c.provider_event_id))
    inserted = {str(row[0]) for row in connection.execute(stmt, rows)}
    return [e for e in unique if e.provider_event_id in inserted]


def _transition(connection: sa.Connection, events: list[ProviderEvent], at: datetime) -> int:
    """Move outbox rows forward; one executemany per target status, each guarded by where it may come from."""
    o, moved = OUTBOX_MESSAGES.c, 0
    # Delivered before bounced: a batch holding both for one message ends bounced (asynchronous bounce).
    for target in (OutboxStatus.DELIVERED, OutboxStatus.FAILED, OutboxStatus.BOUNCED):
        params = [{"b_id": e.outbox_id, "b_error": None if e.error is None else e.error[:_ERROR_LENGTH]}
                  for e in events if e.new_status is target and e.outbox_id is not None]
        if not params:
            continue
        stmt = (OUTBOX_MESSAGES.update()
                # OR of equalities, not IN: an expanding IN cannot run as executemany.
                .where(o.id == sa.bindparam("b_id"), sa.or_(*(o.status == s for s in _FROM[target])))
                .values(status=target, updated_at=at,
                        last_error=sa.func.coalesce(sa.bindparam("b_error", type_=o.last_error.type), o.last_error),
                        # An unknown row with a delivery report was sent after all.
                        sent_at=sa.func.coalesce(o.sent_at, sa.literal(at, type_=o.sent_at.type))))
        moved += int(connection.execute(stmt, params).rowcount)
    return moved


def _apply_facts(connection: sa.Connection, events: list[ProviderEvent], now: datetime | None) -> list[AddressFact]:
    """Hand each new event's consent fact to the consent policy."""
    wanted = [e for e in events if e.fact is not None]
    if not wanted:
        return []
    owners = _owners(connection, {e.outbox_id for e in wanted if e.outbox_id is not None})
    facts = []
    for event in wanted:
        member_id, phone = owners.get(event.outbox_id or 0, (None, None))
        # Twilio posts ``To`` on status callbacks; fall back to the member's number on file.
        address = event.address or (phone if event.channel == Channel.SMS else None)
        if address is None:
            continue
        fact = AddressFact(channel=event.channel, address=address, fact=str(event.fact), member_id=member_id,
                           source=f"{event.provider}:{event.event}")
        apply_fact(connection, fact, now=now)
        facts.append(fact)
    return facts


def _owners(connection: sa.Connection, outbox_ids: set[int]) -> dict[int, tuple[int, str | None]]:
    """outbox id → (member id, member's phone) for the given rows."""
    if not outbox_ids:
        return {}
    o, m = OUTBOX_MESSAGES.c, MEMBERS.c
    query = (sa.select(o.id, o.member_id, m.phone).join_from(OUTBOX_MESSAGES, MEMBERS, o.member_id == m.id)
             .where(o.id.in_(outbox_ids)))
    return {int(i): (int(member), phone) for i, member, phone in fetch_rows(connection, query)}


def _reason(item: Mapping[str, Any]) -> str:
    parts = [str(item[k]) for k in ("status", "reason") if item.get(k)]
    return " ".join(parts) or "no reason given"


def _unix_time(value: Any) -> datetime:
    try:
        return datetime.fromtimestamp(int(value), UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return utcnow()


def _int_or_none(value: Any) -> int | None:
    try:
        number = int(str(value))
    except (TypeError, ValueError):
        return None
    return number if 0 < number < 2**63 else None  # out of BIGINT range cannot be ours


def _str_or_none(value: Any) -> str | None:
    if value is None:
        return None
    return str(value).strip() or None


def _digest(item: Mapping[str, Any]) -> str:
    """A stable id for an event without ``sg_event_id`` (so its replay is still recognised)."""
    canonical = json.dumps(item, sort_keys=True, default=str).encode()
    return "sha256:" + hashlib.sha256(canonical).hexdigest()[:64]
