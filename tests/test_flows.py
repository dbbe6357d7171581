"""The nightly maintenance flow, run for real on a temporary Prefect API."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session

from loyalty.ledger import post_entry
from loyalty.models import Member, TierChange
from loyalty.types import PointsKind, utcnow
from tests.factories import add_member

pytestmark = pytest.mark.usefixtures("prefect_api")


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_nightly_maintenance_expires_and_evaluates_in_chunks(app_env: Engine) -> None:
    from flows.maintenance import nightly_maintenance

    now = utcnow()
    with Session(app_env) as session:
        members = [add_member(session) for _ in range(5)]
        for member in members[:3]:  # three members with 2,000 points, half of them too old to keep
            for points, days_ago in ((1000, 900), (1000, 10)):
                post_entry(session, member_id=member.id, kind=PointsKind.EARN, points=points, reason="t",
                           source="test", at=now - timedelta(days=days_ago))
        session.commit()
    totals = nightly_maintenance(chunk_size=2)
    assert totals == {"chunks": 3, "members_expired": 3, "points_expired": 3000, "upgrades": 3,
                      "downgrades": 0}
    with Session(app_env) as session:
        balances = session.scalars(sa.select(Member.points_balance).order_by(Member.id)).all()
        assert balances == [1000, 1000, 1000, 0, 0]
        assert session.scalar(sa.select(sa.func.count()).select_from(TierChange)) == 3
    assert nightly_maintenance(chunk_size=2)["points_expired"] == 0  # a re-run changes nothing
