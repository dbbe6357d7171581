"""Attribute purchases to campaign runs: one ``campaign_outcomes`` row per (run, member).

For every member assigned in a completed run, treated or holdout, the outcome is measured over the same
window ``[slot, slot + attribution_days)``: intent-to-treat, so a treated member stays in their arm
whether or not the message went out, and the comparison with the holdout stays randomised.
Transactions are counted up to ``min(as_of, window_end)``; a row attributed after its window closed is
``final`` and never rewritten, so reports read stable numbers while open windows are refreshed.

Each chunk is one ``INSERT ... SELECT ... ON CONFLICT DO UPDATE`` (SQLite and PostgreSQL): aggregates
of transactions, the run's outbox message and its delivery events are joined to the assignments in
the database, never fetched member by member. The update only fires when a value changed, so running
the same attribution twice writes nothing.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from loyalty.db import balanced_ranges, fetch_rows, is_sqlite
from loyalty.models import (
    CAMPAIGN_ASSIGNMENTS,
    CAMPAIGN_OUTCOMES,
    CAMPAIGN_RUNS,
    CAMPAIGNS,
    DELIVERY_EVENTS,
    OUTBOX_MESSAGES,
    TRANSACTIONS,
)
from loyalty.types import RunStatus, UTCDateTime, as_utc, utcnow

IdRange = tuple[int, int]
HOLDOUT = "holdout"
#: Outcome column → the delivery event whose first occurrence fills it.
EVENT_COLUMNS = {"delivered_at": "delivered", "opened_at": "open", "clicked_at": "click"}
_KEY = ("run_id", "member_id")
#: Columns compared on conflict: a row is rewritten only if one of these changed.
_VALUES = ("arm", "treated", "offer_code", "variant", "outbox_id", "channel", "sent_at", *EVENT_COLUMNS,
           "converted", "purchases", "revenue_cents", "first_purchase_at", "window_end", "counted_until", "final")
_COLUMNS = (*_KEY, *_VALUES, "attributed_at")


@dataclass(frozen=True)
class RunWindow:
    """A run's attribution window ``[slot, window_end)``."""

    run_id: int
    slot: datetime
    window_end: datetime

    def cutoff(self, as_of: datetime) -> datetime:
        """Transactions before this instant count: the window's end, or ``as_of`` while it is open."""
        return min(as_utc(as_of), self.window_end)


def run_window(connection: Connection, run_id: int) -> RunWindow:
    """The attribution window of run ``run_id`` (``LookupError`` if there is no such run)."""
    r = CAMPAIGN_RUNS.c
    rows = fetch_rows(connection, sa.select(r.slot, r.attribution_days).where(r.id == run_id))
    if not rows:
        raise LookupError(f"no campaign run {run_id}")
    [(slot, days)] = rows
    return RunWindow(run_id, slot, slot + timedelta(days=int(days)))


def _not_final(a: sa.TableClause | sa.Table) -> sa.ColumnElement[bool]:
    """Assignments in ``a`` without a final outcome row yet."""
    o = CAMPAIGN_OUTCOMES.c
    return ~sa.exists().where(o.run_id == a.c.run_id, o.member_id == a.c.member_id, o.final)


def runs_needing_attribution(engine: Engine, *, as_of: datetime) -> list[int]:
    """Completed runs whose slot has come and which still have an assignment without a final outcome."""
    r, a = CAMPAIGN_RUNS.c, CAMPAIGN_ASSIGNMENTS
    pending = sa.exists().where(a.c.run_id == r.id, _not_final(a))
    query = (sa.select(r.id).where(r.status == RunStatus.COMPLETED, r.slot <= as_utc(as_of), pending)
             .order_by(r.slot, r.id))
    with engine.connect() as connection:
        return [int(row[0]) for row in fetch_rows(connection, query)]


def pending_ranges(engine: Engine, run_id: int, chunk_size: int) -> list[IdRange]:
    """Half-open member id ranges, each holding ``chunk_size`` of the run's not-yet-final assignments.

    Cut on the assignments themselves (one numbering statement), so chunks stay even however sparse
    the run's audience is among member ids.
    """
    a = CAMPAIGN_ASSIGNMENTS
    return balanced_ranges(engine, a.c.member_id, sa.and_(a.c.run_id == run_id, _not_final(a)), chunk_size)


def _chunk(run_id: int, id_range: IdRange) -> sa.ColumnElement[bool]:
    a = CAMPAIGN_ASSIGNMENTS.c
    return sa.and_(a.run_id == run_id, a.member_id >= id_range[0], a.member_id < id_range[1])


def window_spend(member_id: sa.ColumnElement[int], run: RunWindow, cutoff: datetime) -> list[sa.ColumnElement[Any]]:
    """Purchases, net amount and first purchase of ``member_id`` in ``[slot, cutoff)``: correlated lookups.

    The one definition of a run's outcome: attribution stores it, training learns from it.
    """
    t = TRANSACTIONS.c
    window = (t.member_id == member_id, t.occurred_at >= run.slot, t.occurred_at < cutoff)
    bought = t.amount_cents > 0  # refunds are negative: they reduce revenue but are not purchases
    return [sa.select(sa.func.count()).where(*window, bought).scalar_subquery(),
            sa.select(sa.func.coalesce(sa.func.sum(t.amount_cents), 0)).where(*window).scalar_subquery(),
            sa.select(sa.func.min(t.occurred_at)).where(*window, bought).scalar_subquery()]


def _first_events(outbox_id: sa.ColumnElement[int], cutoff: datetime) -> list[sa.ColumnElement[Any]]:
    """First delivered / open / click time of message ``outbox_id``, among events before ``cutoff``."""
    e = DELIVERY_EVENTS.c
    return [sa.select(sa.func.min(e.occurred_at)).where(e.outbox_id == outbox_id, e.event == name,
                                                        e.occurred_at < cutoff).scalar_subquery()
            for name in EVENT_COLUMNS.values()]


def outcome_select(run: RunWindow, id_range: IdRange, *, as_of: datetime, now: datetime) -> sa.Select[Any]:
    """The outcome rows (in :data:`_COLUMNS` order) of the chunk's assignments not yet final.

    Every fact is a correlated lookup on an index (outbox by run and member, events by message, transactions
    by member and time), so the cost stays linear in the chunk whatever the planner's statistics say;
    grouped subqueries joined back were planned as nested loops over whole chunks on fresh PostgreSQL tables.
    """
    a, o = CAMPAIGN_ASSIGNMENTS.c, OUTBOX_MESSAGES
    cutoff = run.cutoff(as_of)
    message = (sa.select(sa.func.min(o.c.id))  # the run's message to the member (one per key, min to be safe)
               .where(o.c.run_id == a.run_id, o.c.member_id == a.member_id).scalar_subquery())
    base = (sa.select(a.run_id, a.member_id, a.arm, a.offer_code, a.variant, message.label("outbox_id"))
            .where(_chunk(run.run_id, id_range), _not_final(CAMPAIGN_ASSIGNMENTS)).subquery("base"))
    purchases, revenue, first = window_spend(base.c.member_id, run, cutoff)
    stamp = UTCDateTime()
    return (sa.select(
        base.c.run_id, base.c.member_id, base.c.arm, base.c.arm != HOLDOUT, base.c.offer_code, base.c.variant,
        base.c.outbox_id, o.c.channel, sa.case((o.c.sent_at < cutoff, o.c.sent_at)),
        *_first_events(base.c.outbox_id, cutoff), purchases > 0, purchases, revenue, first,
        sa.literal(run.window_end, stamp), sa.literal(cutoff, stamp),
        sa.literal(as_utc(as_of) >= run.window_end, sa.Boolean()), sa.literal(now, stamp))
        .select_from(base.outerjoin(o, o.c.id == base.c.outbox_id))
        .where(sa.true()))  # SQLite needs a WHERE in INSERT ... SELECT ... ON CONFLICT (parsing ambiguity)


def _upsert(connection: Connection, select: sa.Select[Any]) -> int:
    """Insert new outcome rows, rewrite changed non-final ones; returns how many rows were written."""
    insert = sqlite.insert if is_sqlite(connection.engine) else postgresql.insert
    stmt = insert(CAMPAIGN_OUTCOMES).from_select(list(_COLUMNS), select)
    new, old = stmt.excluded, CAMPAIGN_OUTCOMES.c
    changed = sa.or_(*(old[c].is_distinct_from(new[c]) for c in _VALUES))
    stmt = stmt.on_conflict_do_update(index_elements=list(_KEY), set_={c: new[c] for c in _COLUMNS[2:]},
                                      where=sa.and_(~old.final, changed))
    # RETURNING, not rowcount: psycopg reports -1 for INSERT ... SELECT ... ON CONFLICT.
    return len(connection.execute(stmt.returning(CAMPAIGN_OUTCOMES.c.id)).all())


def _chunk_rows(connection: Connection, run_id: int, id_range: IdRange) -> tuple[int, int]:
    """(outcome rows, final outcome rows) of run ``run_id`` within ``id_range``."""
    o = CAMPAIGN_OUTCOMES.c
    query = (sa.select(sa.func.count(), sa.func.count(sa.case((o.final, 1))))
             .where(o.run_id == run_id, o.member_id >= id_range[0], o.member_id < id_range[1]))
    [(rows, final)] = fetch_rows(connection, query)
    return int(rows), int(final)


def attribute_run(engine: Engine, run_id: int, id_range: IdRange, *, as_of: datetime) -> dict[str, int]:
    """Compute and upsert the outcomes of run ``run_id``'s assignments in ``id_range`` (one transaction).

    Returns ``rows`` (outcome rows in the chunk afterwards), ``inserted``, ``updated`` and ``final``.
    Idempotent: the same ``as_of`` again writes nothing; a later one refreshes rows whose window was open.
    """
    with engine.begin() as connection:
        run = run_window(connection, run_id)
        before, _ = _chunk_rows(connection, run_id, id_range)
        written = _upsert(connection, outcome_select(run, id_range, as_of=as_of, now=utcnow()))
        rows, final = _chunk_rows(connection, run_id, id_range)
    inserted = rows - before
    return {"rows": rows, "inserted": inserted, "updated": written - inserted, "final": final}


def attribute_all(engine: Engine, *, as_of: datetime, chunk_size: int) -> dict[str, int]:
    """Every run needing attribution, chunk by chunk in this process (the flow fans the same chunks out)."""
    totals: Counter[str] = Counter()
    for run_id in runs_needing_attribution(engine, as_of=as_of):
        totals["runs"] += 1
        for id_range in pending_ranges(engine, run_id, chunk_size):
            totals["chunks"] += 1
            totals.update(attribute_run(engine, run_id, id_range, as_of=as_of))
    return dict(totals)


def run_summaries(engine: Engine, run_ids: list[int]) -> list[dict[str, Any]]:
    """Per run: members, final rows, and conversion and revenue per member in the treated arms and holdout.

    A first look, not the measurement (no intervals); intent-to-treat means, straight from the table.
    """
    r, o = CAMPAIGN_RUNS.c, CAMPAIGN_OUTCOMES.c
    def arm_mean(column: sa.ColumnElement[Any], treated: bool) -> sa.ColumnElement[Any]:
        value = sa.case((o.treated == treated, sa.cast(column, sa.Float)))
        return sa.func.avg(value)
    query = (sa.select(o.run_id, CAMPAIGNS.c.name, r.slot, sa.func.max(o.window_end), sa.func.count(),
                       sa.func.count(sa.case((o.final, 1))), sa.func.count(sa.case((o.treated, 1))),
                       arm_mean(sa.cast(o.converted, sa.Integer), True),
                       arm_mean(sa.cast(o.converted, sa.Integer), False),
                       arm_mean(o.revenue_cents, True), arm_mean(o.revenue_cents, False))
             .join(CAMPAIGN_RUNS, r.id == o.run_id).join(CAMPAIGNS, CAMPAIGNS.c.id == r.campaign_id)
             .where(o.run_id.in_(run_ids)).group_by(o.run_id, CAMPAIGNS.c.name, r.slot).order_by(r.slot, o.run_id))
    keys = ("run_id", "campaign", "slot", "window_end", "members", "final", "treated", "treated_conversion",
            "holdout_conversion", "treated_revenue_cents", "holdout_revenue_cents")
    with engine.connect() as connection:
        rows = fetch_rows(connection, query)
    return [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in zip(keys, row, strict=True)}
            for row in rows]


def completed_arm_counts(engine: Engine) -> dict[str, int]:
    """Assignments of completed runs, split into treated and holdout: what training could learn from."""
    r, a = CAMPAIGN_RUNS.c, CAMPAIGN_ASSIGNMENTS.c
    query = (sa.select(sa.func.count(), sa.func.count(sa.case((a.arm == HOLDOUT, 1))))
             .select_from(CAMPAIGN_ASSIGNMENTS.join(CAMPAIGN_RUNS, r.id == a.run_id))
             .where(r.status == RunStatus.COMPLETED))
    with engine.connect() as connection:
        [(rows, holdout)] = fetch_rows(connection, query)
    return {"rows": int(rows), "holdout": int(holdout), "treated": int(rows) - int(holdout)}
