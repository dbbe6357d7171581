"""The outbox's state machine: enqueue, claim, record results, recover leases, reconcile.

::

    pending ──claim──► sending ──ACCEPTED──► sent
       ▲                 │ ├──TRANSIENT──► pending (not_before = now + backoff) | failed (past deadline)
       │                 │ ├──PERMANENT──► failed
       │                 │ └──UNKNOWN────► unknown
       │                 └──lease expired──► unknown
       └──resolve_unknown(delivered=False)── unknown ──resolve_unknown(delivered=True) / late ACCEPTED──► sent

The rule behind every transition: a message that may have reached the provider is never
put back in ``pending`` without evidence that it did not (reconciliation). Every update is
conditional on the status it leaves, so a late or duplicate caller cannot clobber a row that
another process has already moved on. A claim's lease starts at ``updated_at``.

Plain functions over Core statements; no HTTP, no scheduling. Functions taking an engine run
their own short transaction (claims must commit before the slow provider call); ``enqueue``
takes the caller's session so messages are queued in the same transaction as their cause.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Engine
from sqlmodel import Session

from channels.base import Outcome, SendResult
from loyalty.db import fetch_rows
from loyalty.models import OUTBOX_MESSAGES
from loyalty.types import OutboxStatus, as_utc, utcnow

OUTBOX = OUTBOX_MESSAGES
DEFAULT_LEASE_SECONDS = 300
DEFAULT_MAX_AGE = timedelta(hours=24)
LEASE_EXPIRED = "lease expired: outcome unknown"
_ERROR_LENGTH = 500  # the width of ``last_error``; PostgreSQL refuses longer strings


@dataclass(frozen=True)
class NewMessage:
    """A message to queue; ``key`` makes queueing it idempotent."""

    key: str
    member_id: int
    channel: str
    template: str
    payload: dict[str, Any]
    run_id: int | None = None
    offer_code: str | None = None
    not_before: datetime | None = None


@dataclass(frozen=True)
class ClaimedMessage:
    """A message leased to one dispatcher until ``lease_until``; ``attempts`` counts this one."""

    id: int
    key: str
    member_id: int
    channel: str
    template: str
    offer_code: str | None
    run_id: int | None
    payload: dict[str, Any]
    attempts: int
    created_at: datetime
    lease_until: datetime


@dataclass
class Backoff:
    """Exponential backoff with jitter: ``base * 2**(attempts-1)``, capped, then shrunk by up to ``jitter``.

    Jitter spreads retries of a batch that failed together (one 429 for the whole request)
    so they do not come back as one burst. Pass a seeded ``rng`` for reproducible delays.
    """

    base_seconds: float = 2.0
    cap_seconds: float = 600.0
    jitter: float = 0.25
    rng: random.Random = field(default_factory=random.Random)

    def delay(self, attempts: int, retry_after: float | None = None) -> float:
        """Seconds to wait before the next try after ``attempts`` tries; never less than ``retry_after``."""
        exponent = min(max(attempts - 1, 0), 32)  # bounded: 2**32 * base is far past any cap
        capped = min(self.cap_seconds, self.base_seconds * 2**exponent)
        jittered = capped * (1 - self.jitter * self.rng.random())
        return max(jittered, retry_after or 0.0)


def max_age(age: timedelta) -> Callable[[datetime], datetime]:
    """A ``deadline_for`` giving up on messages ``age`` after they were queued."""
    return lambda created_at: created_at + age


@dataclass
class Recorded:
    """What :func:`record_results` did.

    ``effects`` are ``(member_id, effect)`` facts for the consent policy (e.g. ``"opt_out_sms"``);
    they are reported even for ignored results, since a provider's opt-out is true whatever
    the row's state. ``ignored`` lists message ids whose result came too late to apply.
    """

    applied: int = 0
    ignored: list[int] = field(default_factory=list)
    effects: list[tuple[int, str]] = field(default_factory=list)


def enqueue(session: Session, messages: Sequence[NewMessage], *, now: datetime | None = None) -> int:
    """Queue ``messages`` as pending; keys already queued are skipped. Returns how many are new.

    Never commits: the caller's transaction decides, so a message exists iff its cause does.
    """
    if not messages:
        return 0
    at = as_utc(now or utcnow())
    rows = [{"key": m.key, "member_id": m.member_id, "channel": m.channel, "template": m.template,
             "payload": m.payload, "run_id": m.run_id, "offer_code": m.offer_code, "not_before": m.not_before,
             "status": OutboxStatus.PENDING, "attempts": 0, "created_at": at, "updated_at": at}
            for m in messages]
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    stmt = insert(OUTBOX).on_conflict_do_nothing(index_elements=["key"]).returning(OUTBOX.c.id)
    return len(session.execute(stmt, rows).all())


def claim(engine: Engine, channel: str, *, limit: int, now: datetime | None = None,
          lease_seconds: int = DEFAULT_LEASE_SECONDS) -> list[ClaimedMessage]:
    """Move up to ``limit`` due pending messages of ``channel`` to sending and return them.

    Atomic: PostgreSQL locks candidates ``FOR UPDATE SKIP LOCKED`` (concurrent dispatchers take
    disjoint rows without waiting); SQLite's ``BEGIN IMMEDIATE`` serialises select-and-update.
    """
    if limit <= 0:
        return []
    at = as_utc(now or utcnow())
    due = sa.or_(OUTBOX.c.not_before.is_(None), OUTBOX.c.not_before <= at)
    picked = (sa.select(OUTBOX.c.id)
              .where(OUTBOX.c.status == OutboxStatus.PENDING, OUTBOX.c.channel == channel, due)
              .order_by(OUTBOX.c.id).limit(limit))
    if engine.dialect.name == "postgresql":  # a CTE with FOR UPDATE is never inlined: LIMIT holds
        picked = picked.with_for_update(skip_locked=True)
    ids = picked.cte("picked")
    stmt = (OUTBOX.update()
            .where(OUTBOX.c.id.in_(sa.select(ids.c.id)), OUTBOX.c.status == OutboxStatus.PENDING)
            .values(status=OutboxStatus.SENDING, attempts=OUTBOX.c.attempts + 1, updated_at=at)
            .returning(OUTBOX.c.id, OUTBOX.c.key, OUTBOX.c.member_id, OUTBOX.c.channel, OUTBOX.c.template,
                       OUTBOX.c.offer_code, OUTBOX.c.run_id, OUTBOX.c.payload, OUTBOX.c.attempts,
                       OUTBOX.c.created_at))
    with engine.begin() as connection:
        rows = fetch_rows(connection, stmt)
    until = at + timedelta(seconds=lease_seconds)
    # RETURNING order is unspecified; hand them out in queue order.
    claimed = [ClaimedMessage(id=i, key=k, member_id=m, channel=str(ch), template=t, offer_code=o, run_id=r,
                              payload=p, attempts=n, created_at=c, lease_until=until)
               for i, k, m, ch, t, o, r, p, n, c in rows]
    return sorted(claimed, key=lambda message: message.id)


def record_results(engine: Engine, results: Sequence[SendResult], *, backoff: Backoff,
                   now: datetime | None = None,
                   deadline_for: Callable[[datetime], datetime] = max_age(DEFAULT_MAX_AGE),
                   attempts: Mapping[int, int] | None = None) -> Recorded:
    """Apply send results to their messages, in one transaction.

    Only rows still in ``sending`` change (a recovered row belongs to reconciliation), except that
    a late ACCEPTED settles an ``unknown`` row as ``sent``: it is the evidence reconciliation seeks.
    A transient failure whose next try would fall after ``deadline_for(created_at)`` fails.
    ``attempts`` maps message ids to the attempt the results belong to (``ClaimedMessage.attempts``):
    a result for an older attempt than the row's is ignored, so a stalled dispatcher waking up
    cannot settle a message that has since been reconciled and claimed again.
    """
    at, recorded = as_utc(now or utcnow()), Recorded()
    if not results:
        return recorded
    by_id = {r.message_id: r for r in results}
    query = (sa.select(OUTBOX.c.id, OUTBOX.c.member_id, OUTBOX.c.status, OUTBOX.c.attempts, OUTBOX.c.created_at)
             .where(OUTBOX.c.id.in_(by_id)))
    with engine.begin() as connection:
        updates: list[dict[str, Any]] = []
        for msg_id, member_id, status, tries, created_at in fetch_rows(connection, query):
            result = by_id.pop(msg_id)
            recorded.effects.extend((member_id, effect) for effect in result.effects)
            late_success = status == OutboxStatus.UNKNOWN and result.outcome == Outcome.ACCEPTED
            current = attempts is None or attempts.get(msg_id, tries) == tries
            if current and (status == OutboxStatus.SENDING or late_success):
                updates.append(_transition(result, status, tries, deadline_for(created_at), at, backoff))
            else:
                recorded.ignored.append(msg_id)
        recorded.ignored.extend(by_id)  # results for rows that do not exist
        recorded.applied = _apply(connection, updates, at)
    recorded.ignored.sort()  # stable for callers' logs and tests
    return recorded


def _transition(result: SendResult, status: str, attempts: int, deadline: datetime, at: datetime,
                backoff: Backoff) -> dict[str, Any]:
    """The new values for one row (bound parameters of :func:`_apply`'s statement)."""
    row: dict[str, Any] = {"b_id": result.message_id, "b_from": status, "b_provider_id": None,
                           "b_sent_at": None, "b_not_before": None, "b_error": result.reason}
    if result.outcome == Outcome.ACCEPTED:
        return row | {"b_status": OutboxStatus.SENT, "b_provider_id": result.provider_id, "b_sent_at": at,
                      "b_error": None}
    if result.outcome == Outcome.TRANSIENT:
        retry_at = at + timedelta(seconds=backoff.delay(attempts, result.retry_after))
        if retry_at <= deadline:
            return row | {"b_status": OutboxStatus.PENDING, "b_not_before": retry_at}
        return row | {"b_status": OutboxStatus.FAILED, "b_error": f"gave up after {attempts} attempts: {result.reason}"}
    status_for = {Outcome.PERMANENT: OutboxStatus.FAILED, Outcome.UNKNOWN: OutboxStatus.UNKNOWN}
    return row | {"b_status": status_for[result.outcome]}


def _apply(connection: sa.Connection, updates: list[dict[str, Any]], at: datetime) -> int:
    """Run the row updates as one executemany, each guarded by the status it was read in."""
    if not updates:
        return 0
    for row in updates:
        row["b_error"] = None if row["b_error"] is None else str(row["b_error"])[:_ERROR_LENGTH]
    c = OUTBOX.c
    stmt = (OUTBOX.update()
            # The guard re-checks under the row lock (PostgreSQL) in case recovery won the race.
            .where(c.id == sa.bindparam("b_id"), c.status == sa.bindparam("b_from"))
            .values(status=sa.bindparam("b_status", type_=c.status.type), last_error=sa.bindparam("b_error"),
                    provider_id=sa.func.coalesce(sa.bindparam("b_provider_id", type_=c.provider_id.type),
                                                 c.provider_id),
                    sent_at=sa.bindparam("b_sent_at", type_=c.sent_at.type),
                    not_before=sa.bindparam("b_not_before", type_=c.not_before.type), updated_at=at))
    return int(connection.execute(stmt, updates).rowcount)


def skip(engine: Engine, reasons: Mapping[int, str], *, now: datetime | None = None) -> int:
    """Settle claimed messages as ``skipped`` with a reason (the policy gate said no); returns how many."""
    rows = [{"b_id": i, "b_reason": reason[:64]} for i, reason in reasons.items()]
    stmt = (OUTBOX.update()
            .where(OUTBOX.c.id == sa.bindparam("b_id"), OUTBOX.c.status == OutboxStatus.SENDING)
            .values(status=OutboxStatus.SKIPPED, skip_reason=sa.bindparam("b_reason"),
                    updated_at=as_utc(now or utcnow())))
    return _execute_many(engine, stmt, rows)


def defer(engine: Engine, until: Mapping[int, datetime], *, now: datetime | None = None) -> int:
    """Put claimed, unsent messages back in ``pending`` until a later time (quiet hours); returns how many.

    Safe only before the provider call: the message provably never left. The claim is not
    counted as an attempt, so deferral never eats into the retry budget.
    """
    rows = [{"b_id": i, "b_until": as_utc(when)} for i, when in until.items()]
    c = OUTBOX.c
    stmt = (OUTBOX.update()
            .where(c.id == sa.bindparam("b_id"), c.status == OutboxStatus.SENDING)
            .values(status=OutboxStatus.PENDING, attempts=c.attempts - 1, updated_at=as_utc(now or utcnow()),
                    not_before=sa.bindparam("b_until", type_=c.not_before.type)))
    return _execute_many(engine, stmt, rows)


def _execute_many(engine: Engine, stmt: sa.Update, rows: list[dict[str, Any]]) -> int:
    if not rows:
        return 0
    with engine.begin() as connection:
        return int(connection.execute(stmt, rows).rowcount)


def recover_expired_leases(engine: Engine, *, now: datetime | None = None,
                           lease_seconds: int = DEFAULT_LEASE_SECONDS) -> int:
    """Mark messages stuck in ``sending`` past their lease as ``unknown``; returns how many.

    The dispatcher holding them died or stalled, possibly after the request left, so they
    are never put back in ``pending``: reconciliation (:func:`resolve_unknown`) decides.
    """
    at = as_utc(now or utcnow())
    stmt = (OUTBOX.update()
            .where(OUTBOX.c.status == OutboxStatus.SENDING,
                   OUTBOX.c.updated_at < at - timedelta(seconds=lease_seconds))
            .values(status=OutboxStatus.UNKNOWN, last_error=LEASE_EXPIRED, updated_at=at))
    with engine.begin() as connection:
        return int(connection.execute(stmt).rowcount)


def unknown_messages(engine: Engine, channel: str, *, settled_before: datetime, limit: int) -> list[ClaimedMessage]:
    """``unknown`` messages of ``channel`` left alone since ``settled_before``, oldest first, for reconciliation.

    The grace period lets a slow provider finish with a request whose answer we lost before we
    ask it what it did. ``lease_until`` is meaningless here and set to ``updated_at``.
    """
    c = OUTBOX.c
    query = (sa.select(c.id, c.key, c.member_id, c.channel, c.template, c.offer_code, c.run_id, c.payload,
                       c.attempts, c.created_at, c.updated_at)
             .where(c.status == OutboxStatus.UNKNOWN, c.channel == channel, c.updated_at < as_utc(settled_before))
             .order_by(c.id).limit(limit))
    with engine.connect() as connection:
        rows = fetch_rows(connection, query)
    return [ClaimedMessage(id=i, key=k, member_id=m, channel=str(ch), template=t, offer_code=o, run_id=r,
                           payload=p, attempts=n, created_at=cr, lease_until=u)
            for i, k, m, ch, t, o, r, p, n, cr, u in rows]


def resolve_unknown(engine: Engine, outbox_id: int, *, delivered: bool, provider_id: str | None = None,
                    now: datetime | None = None) -> bool:
    """Settle an ``unknown`` message after asking the provider; False if it was not unknown.

    Found at the provider → ``sent``; confirmed absent → ``pending``, due at once.
    """
    at = as_utc(now or utcnow())
    if delivered:
        values: dict[str, Any] = {"status": OutboxStatus.SENT, "sent_at": at,
                                  "provider_id": sa.func.coalesce(provider_id, OUTBOX.c.provider_id)}
    else:
        values = {"status": OutboxStatus.PENDING, "not_before": None}
    stmt = (OUTBOX.update()
            .where(OUTBOX.c.id == outbox_id, OUTBOX.c.status == OutboxStatus.UNKNOWN)
            .values(updated_at=at, **values))
    with engine.begin() as connection:
        return bool(connection.execute(stmt).rowcount)


def counts_by_status(engine: Engine) -> dict[str, int]:
    """How many messages are in each status (every status present, zero if none)."""
    counts = dict.fromkeys((s.value for s in OutboxStatus), 0)
    query = sa.select(OUTBOX.c.status, sa.func.count()).group_by(OUTBOX.c.status)
    with engine.connect() as connection:
        for status, count in fetch_rows(connection, query):
            counts[str(status)] = int(count)
    return counts
