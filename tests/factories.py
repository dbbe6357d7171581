"""Small builders for test rows (real rows in the real database, not mocks)."""

from __future__ import annotations

import itertools
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session

from loyalty.db import session_scope
from loyalty.models import MEMBERS, ChannelConsent, Member
from loyalty.outbox import NewMessage, enqueue
from loyalty.types import Channel, utcnow

_counter = itertools.count(1)


def add_member(session: Session, *, tier: str = "member", joined_at: datetime | None = None,
               **fields: object) -> Member:
    """Insert a member with a unique external id and return it (flushed, with an id)."""
    n = next(_counter)
    values: dict[str, object] = {"first_name": "Test", "last_name": f"Member{n}", "email": f"member{n}@example.com"}
    member = Member(external_id=f"M{n:07d}", tier=tier, joined_at=joined_at or utcnow(), **(values | fields))
    session.add(member)
    session.flush()
    return member


def add_contactable_member(session: Session, *, channels: tuple[str, ...] = ("email", "sms", "push"),
                           **fields: object) -> Member:
    """A member with a phone number and opted in on ``channels`` (flushed, with an id)."""
    n = next(_counter)
    fields.setdefault("phone", f"+1416555{n % 10_000:04d}")
    member = add_member(session, **fields)
    for channel in channels:
        session.add(ChannelConsent(member_id=member.id, channel=Channel(channel), opted_in=True, source="test"))
    session.flush()
    return member


def queue(engine: Engine, member_ids: list[int], channel: str, *, per_member: int = 1, prefix: str = "m",
          run_id: int | None = None, content: dict[str, object] | None = None,
          now: datetime | None = None) -> int:
    """Queue ``per_member`` messages of ``channel`` for each member, addressed from the member row."""
    with session_scope(engine) as session:
        rows = session.execute(sa.select(MEMBERS.c.id, MEMBERS.c.email, MEMBERS.c.phone)
                               .where(MEMBERS.c.id.in_(member_ids))).all()
        messages = []
        for member_id, email, phone in rows:
            to = {"email": email, "sms": phone}.get(channel, f"https://push.example/{member_id}")
            body = content or ({"subject": "Hi", "html": "<p>Hi</p>", "text": "Hi"} if channel == "email"
                               else {"body": "Your points are waiting", "title": "Rewards"})
            messages += [NewMessage(key=f"{prefix}-{channel}-{member_id}-{i}", member_id=member_id, channel=channel,
                                    template="test", payload={"to": to, "content": body}, run_id=run_id)
                         for i in range(per_member)]
        return enqueue(session, messages, now=now)
