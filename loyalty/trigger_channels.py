"""Choosing the channel a triggered message goes out on, for a whole batch of members at once.

A member is reachable on a channel when they are opted in on it (no recorded choice means no),
we hold an address for it (email, phone, or a push subscription) and that address is not
suppressed. The first reachable channel in the priority list wins. The batch costs a fixed
number of queries (members, consents, push subscriptions, one suppression lookup per channel),
never one per member. Members with no usable channel get the reason why, so a caller can
report them instead of dropping them silently.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from loyalty.consent import consenting_members, suppressed_addresses
from loyalty.db import fetch_rows
from loyalty.models import MEMBERS, PUSH_SUBSCRIPTIONS
from loyalty.types import Channel, PushKind

#: Triggered messages are personal news: email first, then the app, then a text.
TRIGGER_CHANNELS: tuple[str, ...] = (Channel.EMAIL, Channel.PUSH, Channel.SMS)

# Why a member has no usable channel, from the least to the most advanced step they passed.
NO_CONSENT = "no_consent"
NO_ADDRESS = "no_address"
SUPPRESSED = "suppressed"
UNKNOWN_MEMBER = "unknown_member"
_PROGRESS = {NO_CONSENT: 0, NO_ADDRESS: 1, SUPPRESSED: 2}


@dataclass(frozen=True)
class Recipient:
    """Where one member's message goes: the channel, the address, and Web Push keys if any."""

    member_id: int
    channel: str
    to: str
    push_keys: dict[str, str] | None = None

    def payload(self, content: dict[str, Any], headers: dict[str, str], tags: dict[str, str]) -> dict[str, Any]:
        """The outbox payload the dispatcher expects (see :func:`loyalty.dispatch.outgoing`)."""
        payload: dict[str, Any] = {"to": self.to, "content": content, "headers": headers, "tags": tags}
        if self.push_keys:
            payload["push_keys"] = self.push_keys
        return payload


@dataclass
class ChannelChoice:
    """The chosen recipient per member, and the reason for each member left without one."""

    recipients: dict[int, Recipient] = field(default_factory=dict)
    skipped: dict[int, str] = field(default_factory=dict)


def _addresses(connection: sa.Connection, ids: list[int]) -> dict[int, dict[str, Recipient]]:
    """Every candidate address per member and channel (the newest push subscription wins)."""
    found: dict[int, dict[str, Recipient]] = {}
    m = MEMBERS.c
    for mid, email, phone in fetch_rows(connection, sa.select(m.id, m.email, m.phone).where(m.id.in_(ids))):
        per = found.setdefault(int(mid), {})
        if email:
            per[Channel.EMAIL] = Recipient(int(mid), Channel.EMAIL, email)
        if phone:
            per[Channel.SMS] = Recipient(int(mid), Channel.SMS, phone)
    p = PUSH_SUBSCRIPTIONS.c
    query = sa.select(p.member_id, p.kind, p.endpoint, p.p256dh, p.auth).where(p.member_id.in_(ids)).order_by(p.id)
    for mid, kind, endpoint, p256dh, auth in fetch_rows(connection, query):
        # FCM tokens carry no keys; a Web Push subscription without both keys cannot be encrypted to.
        keys = {"p256dh": p256dh, "auth": auth} if kind == PushKind.WEBPUSH else None
        if kind == PushKind.WEBPUSH and not (p256dh and auth):
            continue
        if int(mid) in found:
            found[int(mid)][Channel.PUSH] = Recipient(int(mid), Channel.PUSH, endpoint, keys)
    return found


def choose_channel(connection: sa.Connection, member_ids: Iterable[int],
                   priority: Sequence[str] = TRIGGER_CHANNELS) -> ChannelChoice:
    """Pick each member's first opted-in, reachable, unsuppressed channel in ``priority`` order."""
    ids = sorted({int(i) for i in member_ids})
    choice = ChannelChoice()
    if not ids:
        return choice
    addresses = _addresses(connection, ids)
    consent = {channel: consenting_members(connection, channel, ids) for channel in priority}
    blocked = {channel: suppressed_addresses(connection, channel,
                                             [a[channel].to for a in addresses.values() if channel in a])
               for channel in priority}
    for mid in ids:
        if mid not in addresses:
            choice.skipped[mid] = UNKNOWN_MEMBER
            continue
        reason = NO_CONSENT
        for channel in priority:
            step, recipient = _check(mid, channel, consent, addresses[mid], blocked)
            if recipient is not None:
                choice.recipients[mid] = recipient
                break
            reason = max(reason, step, key=_PROGRESS.__getitem__)
        else:
            choice.skipped[mid] = reason
    return choice


def _check(mid: int, channel: str, consent: dict[str, set[int]], addresses: dict[str, Recipient],
           blocked: dict[str, set[str]]) -> tuple[str, Recipient | None]:
    """(how far the member got on ``channel``, their recipient if they got all the way)."""
    if mid not in consent[channel]:
        return NO_CONSENT, None
    recipient = addresses.get(channel)
    if recipient is None:
        return NO_ADDRESS, None
    if recipient.to in blocked[channel]:
        return SUPPRESSED, None
    return "", recipient
