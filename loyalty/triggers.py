"""Triggered messages: tier upgrades, welcomes and points about to expire, queued in the outbox.

Plain functions over an engine, with no Prefect in them: the flows (issue 6, item 3) call these.
Each batch is one transaction that renders every member's message, inserts the outbox rows and,
for tier upgrades, marks the recorded changes handled, so a message exists iff its cause is
settled. Every message has a deterministic outbox key (``tier_upgrade:{change_id}``,
``welcome:{member_id}``, ``points_expiring:{member_id}:{date}``): a retry, a lost-then-replayed
event or a second sweeper running at the same time queues nothing twice.

Nothing is dropped silently. A member with no usable channel is settled and counted under a
reason in :class:`TriggerReport`; a template that fails to render is counted with its error
(file and line) and its cause stays unsettled, so the message goes out once the template is fixed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session

from loyalty.db import fetch_rows
from loyalty.expiry import points_expiring
from loyalty.models import POINTS_ENTRIES, TierChange
from loyalty.outbox import NewMessage, enqueue
from loyalty.programme import Programme
from loyalty.render_context import build_contexts, tier_progress
from loyalty.rendering import TemplateError, TemplateLibrary
from loyalty.tiers import DAYS_PER_MONTH, mark_handled, unhandled_changes
from loyalty.trigger_channels import TRIGGER_CHANNELS, UNKNOWN_MEMBER, choose_channel
from loyalty.types import TierDirection, as_utc, utcnow

TIER_UPGRADE = "tier_upgrade"
WELCOME = "welcome"
POINTS_EXPIRING = "points_expiring"
#: A member moved up twice before the sweeper ran: only the latest move is worth a message.
SUPERSEDED = "superseded"
#: Points expiring by the horizon but no unspent credit found at ``as_of`` (earned after it).
NO_EXPIRY_DATE = "no_expiry_date"


@dataclass
class TriggerReport:
    """What one call did. ``by_channel`` counts messages planned (new or already queued);
    ``skipped`` counts members settled without a message, by reason; ``errors`` maps the
    outbox key of each message that failed to render to the error (template, file and line)."""

    trigger: str
    considered: int = 0
    queued: int = 0
    already_queued: int = 0
    handled: int = 0
    by_channel: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    errors: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """Plain values, for logs, artifacts and JSON."""
        return {"trigger": self.trigger, "considered": self.considered, "queued": self.queued,
                "already_queued": self.already_queued, "handled": self.handled,
                "by_channel": {str(k): v for k, v in self.by_channel.items()}, "skipped": dict(self.skipped),
                "errors": dict(self.errors)}


@dataclass(frozen=True)
class Due:
    """One message owed to a member: its outbox key and what its context says differently."""

    member_id: int
    key: str
    overrides: dict[str, Any] = field(default_factory=dict)


def queue_messages(session: Session, programme: Programme, library: TemplateLibrary, template: str,
                   due: Sequence[Due], report: TriggerReport, *, now: datetime,
                   priority: Sequence[str] = TRIGGER_CHANNELS, expiring_within_days: int | None = None) -> set[str]:
    """Render and enqueue ``due`` in the caller's transaction (never commits).

    Returns the keys now settled: queued (or already queued) or skipped with a reason. Keys that
    failed to render are left out, with their error in ``report.errors``.
    """
    ids = [d.member_id for d in due]
    contexts = build_contexts(session, programme, ids, expiring_within_days=expiring_within_days, now=now)
    choice = choose_channel(session.connection(), ids, priority)
    messages: list[NewMessage] = []
    settled: set[str] = set()
    for item in due:
        recipient, context = choice.recipients.get(item.member_id), contexts.get(item.member_id)
        if recipient is None or context is None:
            report.skipped[choice.skipped.get(item.member_id, UNKNOWN_MEMBER)] += 1
            settled.add(item.key)
            continue
        try:
            # The message key too, so a survey_url() in a triggered template names this very invitation.
            rendered = library.render(template, recipient.channel,
                                      replace(context, message_key=item.key, **item.overrides))
        except TemplateError as exc:  # one broken template must not hold up everyone else's message
            report.errors[item.key] = f"{template} ({recipient.channel}): {exc}"
            continue
        payload = recipient.payload(rendered.content, rendered.headers, {"trigger": template})
        messages.append(NewMessage(key=item.key, member_id=item.member_id, channel=recipient.channel,
                                   template=template, payload=payload))
        report.by_channel[recipient.channel] += 1
        settled.add(item.key)
    new = enqueue(session, messages)  # stamped with the real time: ``now`` may be a simulated as-of
    report.queued += new
    report.already_queued += len(messages) - new
    return settled


def _upgrade_due(programme: Programme, changes: Sequence[TierChange]) -> tuple[list[Due], list[TierChange]]:
    """(messages owed, changes superseded by a later upgrade of the same member in the batch)."""
    latest: dict[int, TierChange] = {}
    for change in changes:  # oldest first, so the last one seen per member is the latest
        latest[change.member_id] = change
    due = []
    for change in latest.values():
        tier, following, needed = tier_progress(programme, change.to_tier, change.qualifying_value)
        # Render the tier of *this* change: the member may have moved again since it was recorded.
        due.append(Due(change.member_id, f"{TIER_UPGRADE}:{change.id}",
                       {"tier": tier, "next_tier": following, "points_to_next_tier": needed}))
    superseded = [c for c in changes if latest[c.member_id] is not c]
    return due, superseded


def queue_tier_upgrades(engine: Engine, programme: Programme, library: TemplateLibrary, *, limit: int = 500,
                        now: datetime | None = None) -> TriggerReport:
    """Message the oldest ``limit`` unhandled tier upgrades and mark them handled, in one transaction.

    Safe to run concurrently: the outbox key ``tier_upgrade:{change_id}`` is unique and
    :func:`loyalty.tiers.mark_handled` only settles changes still unhandled, so a second sweeper
    on the same changes queues and counts nothing. Changes whose template failed stay unhandled.
    """
    now = now or utcnow()
    report = TriggerReport(TIER_UPGRADE)
    with Session(engine, expire_on_commit=False) as session:
        changes = unhandled_changes(session, direction=TierDirection.UP, limit=limit)
        if not changes:
            return report
        report.considered = len(changes)
        due, superseded = _upgrade_due(programme, changes)
        if superseded:
            report.skipped[SUPERSEDED] += len(superseded)
        settled = queue_messages(session, programme, library, TIER_UPGRADE, due, report, now=now)
        dropped = {c.id for c in superseded}
        done = [c.id for c in changes if c.id is not None and (f"{TIER_UPGRADE}:{c.id}" in settled or c.id in dropped)]
        report.handled = mark_handled(session, done, at=now) if done else 0
        session.commit()
    return report


def queue_welcome(engine: Engine, programme: Programme, library: TemplateLibrary, member_ids: Sequence[int], *,
                  now: datetime | None = None) -> TriggerReport:
    """Queue the welcome message for new members (key ``welcome:{member_id}``: once per member, ever)."""
    now = now or utcnow()
    report = TriggerReport(WELCOME, considered=len(set(member_ids)))
    due = [Due(mid, f"{WELCOME}:{mid}") for mid in sorted({int(i) for i in member_ids})]
    if not due:
        return report
    with Session(engine, expire_on_commit=False) as session:
        report.handled = len(queue_messages(session, programme, library, WELCOME, due, report, now=now))
        session.commit()
    return report


def first_expiry_dates(session: Session, programme: Programme, member_ids: Sequence[int],
                       as_of: datetime) -> dict[int, date]:
    """The date each member's oldest unspent points expire (debits consume the oldest credits first).

    Stable from one day to the next, unlike ``as_of + within_days``: it keys the reminder, so a
    daily sweep reminds a member once per expiring batch of points, not once a day.
    """
    e = POINTS_ENTRIES.c
    scope = sa.and_(e.member_id.in_(list(member_ids)), e.created_at <= as_of)
    running = sa.func.sum(e.points).over(partition_by=e.member_id, order_by=(e.created_at, e.id))
    credits = (sa.select(e.member_id.label("mid"), e.created_at.label("at"), running.label("running"))
               .where(scope, e.points > 0).subquery())
    debits = (sa.select(e.member_id.label("mid"), sa.func.sum(-e.points).label("spent"))
              .where(scope, e.points < 0).group_by(e.member_id).subquery())
    query = (sa.select(credits.c.mid, sa.func.min(credits.c.at))
             .select_from(credits.outerjoin(debits, debits.c.mid == credits.c.mid))
             .where(credits.c.running > sa.func.coalesce(debits.c.spent, 0))
             .group_by(credits.c.mid))
    validity = timedelta(days=programme.expiry.months * DAYS_PER_MONTH)
    return {int(mid): (_as_datetime(at) + validity).date() for mid, at in fetch_rows(session, query)}


def _as_datetime(value: Any) -> datetime:
    # MIN() over a subquery column may come back as SQLite's text rather than through the column type.
    return as_utc(datetime.fromisoformat(value) if isinstance(value, str) else value)


def queue_points_expiring(engine: Engine, programme: Programme, library: TemplateLibrary, *, within_days: int = 30,
                          as_of: datetime | None = None, limit: int = 500,
                          id_range: tuple[int, int] | None = None) -> TriggerReport:
    """Remind members whose points expire within ``within_days``, ``limit`` members per transaction.

    Key ``points_expiring:{member_id}:{expiry date}``: one reminder per member and expiring batch.
    ``id_range`` (``[start, stop)``) lets a flow split the programme into chunks.
    """
    as_of = as_of or utcnow()
    report = TriggerReport(POINTS_EXPIRING)
    with Session(engine, expire_on_commit=False) as session:
        members = sorted(points_expiring(session, programme, within_days=within_days, as_of=as_of,
                                         id_range=id_range))
    report.considered = len(members)
    for start in range(0, len(members), max(1, limit)):
        with Session(engine, expire_on_commit=False) as session:
            chunk = members[start:start + max(1, limit)]
            dates = first_expiry_dates(session, programme, chunk, as_of)
            due = [Due(mid, f"{POINTS_EXPIRING}:{mid}:{dates[mid].isoformat()}", {"points_expiry_date": dates[mid]})
                   for mid in chunk if mid in dates]
            if len(due) < len(chunk):
                report.skipped[NO_EXPIRY_DATE] += len(chunk) - len(due)
            report.handled += len(queue_messages(session, programme, library, POINTS_EXPIRING, due, report,
                                                 now=as_of, expiring_within_days=within_days))
            session.commit()
    return report
