"""Small builders for test rows (real rows in the real database, not mocks)."""

from __future__ import annotations

import itertools
from datetime import datetime

from sqlmodel import Session

from loyalty.models import Member
from loyalty.types import utcnow

_counter = itertools.count(1)


def add_member(session: Session, *, tier: str = "member", joined_at: datetime | None = None,
               **fields: object) -> Member:
    """Insert a member with a unique external id and return it (flushed, with an id)."""
    n = next(_counter)
    member = Member(external_id=f"M{n:07d}", first_name="Test", last_name=f"Member{n}",
                    email=f"member{n}@example.com", tier=tier, joined_at=joined_at or utcnow(), **fields)
    session.add(member)
    session.flush()
    return member
