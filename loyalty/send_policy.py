"""The policy gate: the last check on every claimed message before it reaches a provider.

Checked in this order, the first that applies deciding:

1. **address** — a message with no ``to`` in its payload is skipped (``no_address``);
2. **suppression** — the address hard-bounced, complained, replied STOP or is invalid (``suppressed``);
3. **consent** — the member is not opted in on the channel (``no_consent``);
4. **quiet hours** — it is night where the member lives: deferred to the end of the quiet window in
   the member's time zone, never dropped;
5. **frequency cap** — the member already got ``frequency_cap`` campaign messages within the rolling
   window, across all campaigns (``frequency_cap``). Triggered messages (no campaign run: tier
   upgrade, welcome) are not capped, but do count for later campaign messages.

It runs at send time rather than at planning time because consent and suppressions change in
between (a STOP reply at 10:01 must stop the 10:02 send). The gate only reads; the dispatcher
applies its verdicts through :func:`loyalty.outbox.skip` and :func:`loyalty.outbox.defer`.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import sqlalchemy as sa

from loyalty.consent import consenting_members, suppressed_addresses
from loyalty.db import fetch_rows
from loyalty.models import MEMBERS, OUTBOX_MESSAGES
from loyalty.outbox import ClaimedMessage
from loyalty.settings import PolicySettings
from loyalty.types import OutboxStatus, as_utc

log = logging.getLogger(__name__)
#: Statuses that mean a message reached (or may have reached) the member, for the frequency cap.
_COUNTED = (OutboxStatus.SENT, OutboxStatus.DELIVERED, OutboxStatus.BOUNCED, OutboxStatus.UNKNOWN)


@dataclass
class Verdicts:
    """The gate's answer for one batch: send these, skip those (with reasons), defer the rest."""

    send: list[ClaimedMessage] = field(default_factory=list)
    skip: dict[int, str] = field(default_factory=dict)
    defer: dict[int, datetime] = field(default_factory=dict)


@lru_cache(maxsize=512)
def member_zone(name: str) -> ZoneInfo:
    """The member's time zone; an unknown name falls back to the programme's home zone (logged once)."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        # An unknown zone must not block sending; Toronto is the programme's home market. Said once per
        # zone name (the cache), so the member data can be fixed.
        log.warning("unknown time zone %r: quiet hours use America/Toronto", name)
        return ZoneInfo("America/Toronto")


def in_quiet_hours(local: time, start: time, end: time) -> bool:
    """Whether local wall-clock ``local`` falls in the quiet window [start, end), which may span midnight."""
    if start == end:
        return False
    if start < end:
        return start <= local < end
    return local >= start or local < end


def quiet_hours_end(now: datetime, zone_name: str, start: time, end: time) -> datetime | None:
    """When the quiet window containing ``now`` ends for a member in ``zone_name`` (UTC); None if not quiet."""
    zone = member_zone(zone_name)
    local = as_utc(now).astimezone(zone)
    if not in_quiet_hours(local.time(), start, end):
        return None
    ends = datetime.combine(local.date(), end, tzinfo=zone)
    if ends <= local:
        ends = datetime.combine(local.date() + timedelta(days=1), end, tzinfo=zone)
    return ends.astimezone(UTC)


class SendPolicy:
    """Reviews claimed messages against consent, suppressions, quiet hours and the frequency cap."""

    def __init__(self, settings: PolicySettings) -> None:
        self.settings = settings

    def review(self, connection: sa.Connection, messages: Sequence[ClaimedMessage], now: datetime) -> Verdicts:
        """Decide for each message of one channel; reads only."""
        verdicts = Verdicts()
        if not messages:
            return verdicts
        channel = messages[0].channel
        addresses = [str(m.payload.get("to") or "") for m in messages]
        blocked = suppressed_addresses(connection, channel, [a for a in addresses if a])
        consenting = consenting_members(connection, channel, (m.member_id for m in messages))
        zones = self._zones(connection, {m.member_id for m in messages})
        recent = self._recent_counts(connection, messages, now)
        for message, address in zip(messages, addresses, strict=True):
            reason = self._refusal(message, address, blocked, consenting)
            if reason is not None:
                verdicts.skip[message.id] = reason
                continue
            until = quiet_hours_end(now, zones.get(message.member_id, ""), self.settings.quiet_hours_start,
                                    self.settings.quiet_hours_end)
            if until is not None:
                verdicts.defer[message.id] = until
            elif self._over_cap(message, recent):
                verdicts.skip[message.id] = "frequency_cap"
            else:
                recent[message.member_id] += 1  # a second message in the same batch counts too
                verdicts.send.append(message)
        return verdicts

    @staticmethod
    def _refusal(message: ClaimedMessage, address: str, blocked: set[str], consenting: set[int]) -> str | None:
        if not address:
            return "no_address"
        if address in blocked:
            return "suppressed"
        if message.member_id not in consenting:
            return "no_consent"
        return None

    def _over_cap(self, message: ClaimedMessage, recent: Counter[int]) -> bool:
        cap = self.settings.frequency_cap
        return cap > 0 and message.run_id is not None and recent[message.member_id] >= cap

    @staticmethod
    def _zones(connection: sa.Connection, member_ids: set[int]) -> dict[int, str]:
        query = sa.select(MEMBERS.c.id, MEMBERS.c.time_zone).where(MEMBERS.c.id.in_(member_ids))
        return {int(i): str(zone) for i, zone in fetch_rows(connection, query)}

    def _recent_counts(self, connection: sa.Connection, messages: Sequence[ClaimedMessage],
                       now: datetime) -> Counter[int]:
        """Messages each member received within the window, before this batch."""
        if self.settings.frequency_cap <= 0:
            return Counter()
        since = as_utc(now) - timedelta(hours=self.settings.frequency_window_hours)
        o = OUTBOX_MESSAGES.c
        query = (sa.select(o.member_id, sa.func.count())
                 .where(o.member_id.in_({m.member_id for m in messages}), o.status.in_(_COUNTED),
                        sa.func.coalesce(o.sent_at, o.updated_at) >= since)
                 .group_by(o.member_id))
        return Counter({int(member): int(count) for member, count in fetch_rows(connection, query)})
