"""Attribution of purchases to campaign runs, on every backend: a hand-built campaign with known answers."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session

from loyalty import attribution as at
from loyalty.models import (
    CAMPAIGN_ASSIGNMENTS,
    CAMPAIGN_OUTCOMES,
    CAMPAIGN_RUNS,
    CAMPAIGNS,
    DELIVERY_EVENTS,
    OUTBOX_MESSAGES,
    TRANSACTIONS,
)
from tests.factories import add_member

SLOT = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
DAYS = 7
END = SLOT + timedelta(days=DAYS)
H, D = timedelta(hours=1), timedelta(days=1)
_ids = itertools.count(1)


@dataclass
class Campaign:
    """The ids of the hand-built campaign: ``m[0..5]`` members, ``run`` completed, ``running`` not."""

    m: list[int]
    run: int
    running: int
    outbox: dict[int, int]


def _run(connection: sa.Connection, campaign_id: int, slot: datetime, status: str) -> int:
    return int(connection.execute(CAMPAIGN_RUNS.insert().returning(CAMPAIGN_RUNS.c.id).values(
        campaign_id=campaign_id, slot=slot, status=status, holdout_share=0.5, attribution_days=DAYS,
        stats={})).scalar_one())


def _message(connection: sa.Connection, run_id: int, member_id: int, channel: str, status: str,
             sent_at: datetime | None) -> int:
    return int(connection.execute(OUTBOX_MESSAGES.insert().returning(OUTBOX_MESSAGES.c.id).values(
        key=f"campaign:{run_id}:{member_id}", run_id=run_id, member_id=member_id, channel=channel,
        template="offers/bonus_500", offer_code="bonus_500", payload={}, status=status, attempts=1,
        created_at=SLOT, updated_at=SLOT, sent_at=sent_at)).scalar_one())


def _events(connection: sa.Connection, outbox_id: int, *events: tuple[str, datetime]) -> None:
    connection.execute(sa.insert(DELIVERY_EVENTS), [
        {"outbox_id": outbox_id, "provider": "sendgrid", "provider_event_id": f"ev-{next(_ids)}", "event": name,
         "occurred_at": when, "payload": {}} for name, when in events])


def _buy(connection: sa.Connection, member_id: int, *purchases: tuple[int, datetime]) -> None:
    connection.execute(sa.insert(TRANSACTIONS), [
        {"external_id": f"T{next(_ids):08d}", "member_id": member_id, "amount_cents": cents, "currency": "CAD",
         "category": "general", "channel": "store", "occurred_at": when} for cents, when in purchases])


def _assign(connection: sa.Connection, run_id: int, rows: list[tuple[int, str, str | None]]) -> None:
    connection.execute(sa.insert(CAMPAIGN_ASSIGNMENTS), [
        {"run_id": run_id, "member_id": member, "arm": arm, "variant": variant, "assigned_at": SLOT,
         "offer_code": None if arm == "holdout" else arm} for member, arm, variant in rows])


def build_campaign(engine: Engine) -> Campaign:
    """Five assigned members (three treated, two holdout), one bystander, and a run still running."""
    with Session(engine) as session:
        m = [int(add_member(session).id or 0) for _ in range(6)]
        session.commit()
    with engine.begin() as connection:
        campaign_id = int(connection.execute(CAMPAIGNS.insert().returning(CAMPAIGNS.c.id).values(
            name="spring", description="", created_at=SLOT - 10 * D)).scalar_one())
        run, running = _run(connection, campaign_id, SLOT, "completed"), _run(connection, campaign_id, END, "running")
        _assign(connection, run, [(m[0], "bonus_500", "A"), (m[1], "bonus_500", "B"), (m[2], "holdout", None),
                                  (m[3], "holdout", None), (m[4], "bonus_500", "A")])
        _assign(connection, running, [(m[0], "holdout", None)])
        outbox = {m[0]: _message(connection, run, m[0], "email", "delivered", SLOT + H),
                  m[1]: _message(connection, run, m[1], "email", "skipped", None),  # treated, never sent
                  m[4]: _message(connection, run, m[4], "sms", "sent", SLOT + H)}
        _events(connection, outbox[m[0]], ("delivered", SLOT + H + timedelta(minutes=1)), ("open", SLOT + 5 * H),
                ("open", SLOT + 3 * H), ("click", SLOT + 3 * H + timedelta(minutes=10)), ("bounce", SLOT + 2 * H))
        _events(connection, outbox[m[4]], ("delivered", END + H))  # after the window: not counted
        _buy(connection, m[0], (5000, SLOT - D), (3000, SLOT + 2 * D), (2000, SLOT + 3 * D), (-1000, SLOT + 4 * D),
             (7000, SLOT + 8 * D))
        _buy(connection, m[1], (1500, SLOT + D))
        _buy(connection, m[2], (1000, SLOT), (9000, END))  # the slot is inside, the window's end is not
        _buy(connection, m[3], (-500, SLOT + 2 * D))  # only a refund: revenue falls, nobody converted
        _buy(connection, m[5], (4000, SLOT + D))  # not in the campaign
    return Campaign(m, run, running, outbox)


@pytest.fixture
def campaign(engine: Engine) -> Campaign:
    """:func:`build_campaign` on the backend under test."""
    return build_campaign(engine)


def _outcomes(engine: Engine, run_id: int) -> dict[int, dict[str, Any]]:
    o = CAMPAIGN_OUTCOMES
    with engine.connect() as connection:
        rows = connection.execute(sa.select(o).where(o.c.run_id == run_id).order_by(o.c.member_id)).mappings()
        return {int(row["member_id"]): dict(row) for row in rows}


def _attribute(engine: Engine, run_id: int, as_of: datetime, chunk_size: int = 2) -> dict[str, int]:
    totals: dict[str, int] = {}
    for id_range in at.pending_ranges(engine, run_id, chunk_size):
        for key, value in at.attribute_run(engine, run_id, id_range, as_of=as_of).items():
            totals[key] = totals.get(key, 0) + value
    return totals


def test_closed_window_every_column(engine: Engine, campaign: Campaign) -> None:
    m, as_of = campaign.m, END + 2 * D
    assert at.runs_needing_attribution(engine, as_of=as_of) == [campaign.run]  # the running run waits
    assert len(at.pending_ranges(engine, campaign.run, 2)) == 3
    before = datetime.now(UTC)
    assert _attribute(engine, campaign.run, as_of) == {"rows": 5, "inserted": 5, "updated": 0, "final": 5}
    rows = _outcomes(engine, campaign.run)
    assert sorted(rows) == m[:5]
    common = {"run_id": campaign.run, "window_end": END, "counted_until": END, "final": True}
    first = rows[m[0]]
    assert first.pop("attributed_at") >= before - timedelta(seconds=1)
    assert first == {**common, "id": first["id"], "member_id": m[0], "arm": "bonus_500", "treated": True,
                     "offer_code": "bonus_500", "variant": "A", "outbox_id": campaign.outbox[m[0]],
                     "channel": "email", "sent_at": SLOT + H, "delivered_at": SLOT + H + timedelta(minutes=1),
                     "opened_at": SLOT + 3 * H, "clicked_at": SLOT + 3 * H + timedelta(minutes=10),
                     "converted": True, "purchases": 2, "revenue_cents": 4000, "first_purchase_at": SLOT + 2 * D}
    no_message = {"delivered_at": None, "opened_at": None, "clicked_at": None}
    expected = {
        m[1]: {"arm": "bonus_500", "treated": True, "variant": "B", "outbox_id": campaign.outbox[m[1]],
               "channel": "email", "sent_at": None, **no_message, "converted": True, "purchases": 1,
               "revenue_cents": 1500, "first_purchase_at": SLOT + D},
        m[2]: {"arm": "holdout", "treated": False, "offer_code": None, "variant": None, "outbox_id": None,
               "channel": None, "sent_at": None, **no_message, "converted": True, "purchases": 1,
               "revenue_cents": 1000, "first_purchase_at": SLOT},
        m[3]: {"arm": "holdout", "treated": False, "outbox_id": None, "converted": False, "purchases": 0,
               "revenue_cents": -500, "first_purchase_at": None},
        m[4]: {"treated": True, "outbox_id": campaign.outbox[m[4]], "channel": "sms", "sent_at": SLOT + H,
               **no_message, "converted": False, "purchases": 0, "revenue_cents": 0, "first_purchase_at": None},
    }
    for member, values in expected.items():
        assert {k: rows[member][k] for k in values} | common == {**values, **common}, member
    assert at.runs_needing_attribution(engine, as_of=as_of) == []
    assert at.pending_ranges(engine, campaign.run, 2) == []


def test_open_window_then_closed_then_frozen(engine: Engine, campaign: Campaign) -> None:
    m, early = campaign.m, SLOT + 3 * D + 12 * H
    assert _attribute(engine, campaign.run, early)["final"] == 0
    first = _outcomes(engine, campaign.run)[m[0]]
    assert (first["purchases"], first["revenue_cents"], first["final"]) == (2, 5000, False)  # refund not yet
    assert (first["counted_until"], first["window_end"]) == (early, END)
    assert at.runs_needing_attribution(engine, as_of=early) == [campaign.run]
    with engine.begin() as connection:
        _buy(connection, m[3], (2500, SLOT + 5 * D))
    totals = _attribute(engine, campaign.run, END)  # the window has just closed
    assert totals == {"rows": 5, "inserted": 0, "updated": 5, "final": 5}  # counted_until moved for every row
    rows = _outcomes(engine, campaign.run)
    assert (rows[m[0]]["revenue_cents"], rows[m[0]]["counted_until"]) == (4000, END)
    assert (rows[m[3]]["converted"], rows[m[3]]["revenue_cents"]) == (True, 2000)
    with engine.begin() as connection:  # a late-arriving purchase dated inside the window
        _buy(connection, m[4], (800, SLOT + D))
    assert at.pending_ranges(engine, campaign.run, 2) == []
    whole = (min(m), max(m) + 1)
    assert at.attribute_run(engine, campaign.run, whole, as_of=END + 30 * D) == {
        "rows": 5, "inserted": 0, "updated": 0, "final": 5}
    assert _outcomes(engine, campaign.run) == rows  # final rows are never rewritten


def test_idempotent_and_chunk_independent(engine: Engine, campaign: Campaign) -> None:
    as_of = SLOT + 5 * D
    assert _attribute(engine, campaign.run, as_of, chunk_size=2)["inserted"] == 5
    rows = _outcomes(engine, campaign.run)
    assert _attribute(engine, campaign.run, as_of, chunk_size=3) == {"rows": 5, "inserted": 0, "updated": 0,
                                                                      "final": 0}
    assert _outcomes(engine, campaign.run) == rows  # attributed_at included: nothing was written
    with engine.begin() as connection:
        connection.execute(sa.delete(CAMPAIGN_OUTCOMES))
    _attribute(engine, campaign.run, as_of, chunk_size=5)
    again = _outcomes(engine, campaign.run)
    strip = ("id", "attributed_at")
    assert [{k: v for k, v in r.items() if k not in strip} for r in again.values()] == \
        [{k: v for k, v in r.items() if k not in strip} for r in rows.values()]


def test_attribute_all_and_summaries(engine: Engine, campaign: Campaign) -> None:
    with engine.begin() as connection:  # the running run completes; its window is still open
        connection.execute(CAMPAIGN_RUNS.update().where(CAMPAIGN_RUNS.c.id == campaign.running)
                           .values(status="completed"))
    as_of = END + 2 * D
    assert at.attribute_all(engine, as_of=as_of, chunk_size=2) == {
        "runs": 2, "chunks": 4, "rows": 6, "inserted": 6, "updated": 0, "final": 5}
    assert at.runs_needing_attribution(engine, as_of=as_of) == [campaign.running]
    first, second = at.run_summaries(engine, [campaign.run, campaign.running])
    assert first == {"run_id": campaign.run, "campaign": "spring", "slot": SLOT, "window_end": END, "members": 5,
                     "final": 5, "treated": 3, "treated_conversion": pytest.approx(2 / 3, abs=1e-4),
                     "holdout_conversion": 0.5, "treated_revenue_cents": pytest.approx(5500 / 3, abs=1e-3),
                     "holdout_revenue_cents": 250.0}
    assert (second["members"], second["final"], second["treated"], second["treated_conversion"]) == (1, 0, 0, None)
    assert at.completed_arm_counts(engine) == {"rows": 6, "holdout": 3, "treated": 3}


def test_unknown_run_and_bad_chunk(engine: Engine) -> None:
    with pytest.raises(LookupError):
        at.attribute_run(engine, 999, (1, 10), as_of=SLOT)
    with pytest.raises(ValueError, match="chunk_size"):
        at.pending_ranges(engine, 1, 0)
