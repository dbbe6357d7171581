"""Attribution and lift of a campaign run, per arm, from ``campaign_outcomes`` (see :mod:`loyalty.attribution`).

:func:`measure_run` reads one run's outcome rows as SQL aggregates (one ``GROUP BY`` over offer and
variant, one for the cumulative chart), never member by member, and compares each treated arm with the
holdout (:mod:`loyalty.measurement_stats`):

* arms: the holdout, each offer, and each offer/variant (``"bonus_500/A"``) when variants exist;
  ``overall`` pools every treated member against the holdout. Intent-to-treat: a treated member
  counts in their arm whether or not the message went out.
* lift: conversion (Newcombe interval, pooled z-test) and revenue per member (Welch);
  incremental conversions and revenue are the lift times the arm's members.
* cost: the offer's ``cost_cents`` per redemption, where a redemption is a converted member of the
  arm. The data has no redemption record for every offer kind (discounts and free items change the
  basket, not the ledger), and anyone in the arm who bought in the window could use the offer, so
  converters are the honest proxy; it counts the offers given to members who would have bought anyway,
  which is a real cost of the campaign. Plus each sent message at the programme's
  ``message_cost_cents`` for its channel.
* ROI: (incremental conversions x ``margin_per_conversion_cents`` - cost) / cost.

Sequential testing: while the attribution window is open (or rows are not final) the figures are
early and the run carries a ``caution``; peeking at p-values and stopping early inflates false wins.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from loyalty.attribution import HOLDOUT, run_window
from loyalty.db import count_if, fetch_rows
from loyalty.measurement_stats import Moments, proportion_lift, roi, welch_lift
from loyalty.measurement_types import ArmResult, CumulativePoint, RunMeasurement
from loyalty.models import CAMPAIGN_ASSIGNMENTS, CAMPAIGN_OUTCOMES, CAMPAIGN_RUNS, CAMPAIGNS, OFFERS
from loyalty.programme import Programme
from loyalty.types import Channel, RunStatus, as_utc, utcnow

OVERALL = "overall"
DAY = timedelta(days=1)


class RunListing(NamedTuple):
    """One campaign run, for choosing what to measure."""

    run_id: int
    campaign: str
    slot: datetime
    status: str
    members: int


@dataclass
class Tally:
    """Counts and revenue moments of a group of outcome rows (an offer, a variant, a side)."""

    sent: int = 0
    delivered: int = 0
    opened: int = 0
    clicked: int = 0
    converted: int = 0
    revenue: Moments = field(default_factory=lambda: Moments(0, 0, 0))
    sent_by_channel: dict[str, int] = field(default_factory=dict)

    @property
    def members(self) -> int:
        """Every outcome row has a revenue value (0 for no purchase), so the moments' count is the members."""
        return self.revenue.n

    def __add__(self, other: Tally) -> Tally:
        channels = {c: self.sent_by_channel.get(c, 0) + other.sent_by_channel.get(c, 0)
                    for c in {*self.sent_by_channel, *other.sent_by_channel}}
        return Tally(self.sent + other.sent, self.delivered + other.delivered,
                     self.opened + other.opened, self.clicked + other.clicked, self.converted + other.converted,
                     self.revenue + other.revenue, channels)


@dataclass(frozen=True)
class _Group:
    treated: bool
    offer: str
    variant: str | None
    tally: Tally


def _groups(connection: Connection, run_id: int) -> tuple[list[_Group], int, datetime | None]:
    """Tallies per (treated, offer, variant), rows not final, and the earliest ``counted_until``."""
    o = CAMPAIGN_OUTCOMES.c
    offer = sa.func.coalesce(o.offer_code, o.arm)
    revenue = sa.cast(o.revenue_cents, sa.BigInteger)  # squares overflow 32-bit integers
    sent = o.sent_at.is_not(None)
    channels = [str(c) for c in Channel]
    query = (sa.select(o.treated, offer, o.variant, sa.func.count(), sa.func.count(o.sent_at),
                       sa.func.count(o.delivered_at), sa.func.count(o.opened_at), sa.func.count(o.clicked_at),
                       count_if(o.converted), sa.func.coalesce(sa.func.sum(revenue), 0),
                       sa.func.coalesce(sa.func.sum(revenue * revenue), 0), count_if(~o.final),
                       sa.func.min(o.counted_until), *(count_if(sent & (o.channel == c)) for c in channels))
             .where(o.run_id == run_id).group_by(o.treated, offer, o.variant))
    rows = fetch_rows(connection, query)
    groups, open_rows, counted = [], 0, None
    for treated, name, variant, n, snt, dlv, opn, clk, conv, total, squares, not_final, until, *by in rows:
        # Exact integer sums (PostgreSQL returns numeric) keep the variance free of rounding.
        tally = Tally(int(snt), int(dlv), int(opn), int(clk), int(conv),
                      Moments(int(n), int(total), int(squares)),
                      {c: int(k) for c, k in zip(channels, by, strict=True) if k})
        groups.append(_Group(bool(treated), str(name), variant, tally))
        open_rows += int(not_final)
        counted = until if counted is None or until < counted else counted
    return groups, open_rows, counted


def _offer_costs(connection: Connection, programme: Programme) -> dict[str, float]:
    """Cost per redemption of every offer: the programme's, else the catalogue's (offers since removed)."""
    catalogue = fetch_rows(connection, sa.select(OFFERS.c.code, OFFERS.c.cost_cents))
    costs = {str(code): float(cost) for code, cost in catalogue}
    return costs | {o.code: float(o.cost_cents) for o in programme.offers}


@dataclass(frozen=True)
class _Pricing:
    offer_costs: dict[str, float]
    message_costs: dict[str, float]
    margin: float


def _arm(name: str, treated: bool, tally: Tally, holdout: Tally | None, pricing: _Pricing,
         offer_cost: float) -> ArmResult:
    """One arm's result: counts, and for a treated arm its lift, increments, costs and ROI."""
    base = ArmResult(arm=name, treated=treated, members=tally.members, sent=tally.sent, delivered=tally.delivered,
                     opened=tally.opened, clicked=tally.clicked, converted=tally.converted,
                     revenue_cents=int(tally.revenue.total))
    if not treated or holdout is None:
        return base
    conversion = proportion_lift(tally.converted, tally.members, holdout.converted, holdout.members)
    revenue = welch_lift(tally.revenue, holdout.revenue)
    incremental = conversion.value * tally.members if conversion else 0.0
    messages = sum(k * pricing.message_costs.get(c, 0.0) for c, k in tally.sent_by_channel.items())
    cost = offer_cost + messages
    return replace(base, conversion_lift=conversion, revenue_lift_cents=revenue, incremental_conversions=incremental,
                   incremental_revenue_cents=revenue.value * tally.members if revenue else 0.0,
                   offer_cost_cents=offer_cost, message_cost_cents=messages,
                   roi=roi(incremental, pricing.margin, cost) if conversion else None)


def _arms(groups: list[_Group], pricing: _Pricing) -> tuple[list[ArmResult], ArmResult]:
    """The holdout first, then offers and offer/variants by name; and the pooled ``overall`` arm."""
    holdout = sum((g.tally for g in groups if not g.treated), Tally())
    offers: dict[str, Tally] = {}
    variants: dict[str, tuple[str, Tally]] = {}
    for g in groups:
        if g.treated:
            offers[g.offer] = offers.get(g.offer, Tally()) + g.tally
            if g.variant is not None:
                variants[f"{g.offer}/{g.variant}"] = (g.offer, g.tally)
    baseline = holdout if holdout.members else None

    def cost(offer: str, tally: Tally) -> float:
        return pricing.offer_costs.get(offer, 0.0) * tally.converted

    treated = {name: _arm(name, True, t, baseline, pricing, cost(name, t)) for name, t in offers.items()}
    treated |= {name: _arm(name, True, t, baseline, pricing, cost(o, t)) for name, (o, t) in variants.items()}
    pooled = sum(offers.values(), Tally())
    overall = _arm(OVERALL, True, pooled, baseline, pricing, sum(cost(n, t) for n, t in offers.items()))
    arms = [_arm(HOLDOUT, False, holdout, None, pricing, 0.0), *(treated[n] for n in sorted(treated))]
    return arms, overall


def cumulative(connection: Connection, run_id: int, slot: datetime, until: datetime) -> list[CumulativePoint]:
    """Share of each side converted ``day`` days after the slot, for each whole or partial day to ``until``."""
    days = max(0, math.ceil((until - slot) / DAY))
    if days == 0:
        return []
    o = CAMPAIGN_OUTCOMES.c
    by_day = [count_if(o.first_purchase_at < slot + d * DAY) for d in range(1, days + 1)]
    query = sa.select(o.treated, sa.func.count(), *by_day).where(o.run_id == run_id).group_by(o.treated)
    sides = {bool(row[0]): row[1:] for row in fetch_rows(connection, query)}
    def rate(treated: bool, day: int) -> float:
        row = sides.get(treated)
        return int(row[day]) / int(row[0]) if row and row[0] else 0.0
    return [CumulativePoint(day=d, treated_rate=rate(True, d), holdout_rate=rate(False, d))
            for d in range(1, days + 1)]


def _assigned(connection: Connection, run_id: int) -> int:
    a = CAMPAIGN_ASSIGNMENTS.c
    [(count,)] = fetch_rows(connection, sa.select(sa.func.count()).where(a.run_id == run_id))
    return int(count)


def caution_text(window_end: datetime, as_of: datetime, open_rows: int, attributed: int, assigned: int,
                 counted_until: datetime | None) -> str | None:
    """Why the figures are not final yet, or None once every assignment has a final outcome."""
    if assigned and not attributed:
        return "not attributed yet: run `loyalflow attribute`; no figures to read"
    notes = []
    if as_of < window_end or open_rows:
        counted = f" (purchases counted until {counted_until:%Y-%m-%d %H:%M} UTC)" if counted_until else ""
        notes.append(f"window open until {window_end:%Y-%m-%d %H:%M} UTC{counted}: early figures; "
                     "do not stop the test on them")
    if attributed < assigned:
        notes.append(f"only {attributed:,} of {assigned:,} assigned members attributed so far")
    return "; ".join(notes) or None


def measure_run(engine: Engine, run_id: int, *, programme: Programme,
                as_of: datetime | None = None) -> RunMeasurement:
    """Attribution and lift of run ``run_id`` per arm, as attributed in ``campaign_outcomes``.

    ``as_of`` (default now) only decides whether the window counts as open: the figures are those of
    the last attribution (its ``counted_until``). ``programme`` prices offers and messages. Raises
    ``LookupError`` for an unknown run. One connection, so every figure reads the same state.
    """
    as_of = utcnow() if as_of is None else as_utc(as_of)
    with engine.connect() as connection:
        window = run_window(connection, run_id)
        campaign = str(connection.execute(sa.select(CAMPAIGNS.c.name).join(
            CAMPAIGN_RUNS, CAMPAIGN_RUNS.c.campaign_id == CAMPAIGNS.c.id).where(CAMPAIGN_RUNS.c.id == run_id))
            .scalar_one())
        groups, open_rows, counted_until = _groups(connection, run_id)
        pricing = _Pricing(_offer_costs(connection, programme),
                           {str(c): v for c, v in programme.message_cost_cents.items()},
                           programme.margin_per_conversion_cents)
        until = min(counted_until, window.window_end) if counted_until else window.slot
        points = cumulative(connection, run_id, window.slot, until)
        assigned = _assigned(connection, run_id)
    arms, overall = _arms(groups, pricing)
    attributed = arms[0].members + overall.members
    return RunMeasurement(
        run_id=run_id, campaign=campaign, slot=window.slot, window_end=window.window_end, as_of=as_of, arms=arms,
        overall=overall, cumulative=points,
        caution=caution_text(window.window_end, as_of, open_rows, attributed, assigned, counted_until))


def list_runs(engine: Engine, campaign: str | None = None) -> list[RunListing]:
    """Campaign runs (of ``campaign`` if given), oldest slot first, with their assigned members."""
    r, c, a = CAMPAIGN_RUNS.c, CAMPAIGNS.c, CAMPAIGN_ASSIGNMENTS.c
    members = sa.select(sa.func.count()).where(a.run_id == r.id).scalar_subquery()
    query = (sa.select(r.id, c.name, r.slot, r.status, members)
             .join(CAMPAIGNS, c.id == r.campaign_id).order_by(r.slot, r.id))
    if campaign is not None:
        query = query.where(c.name == campaign)
    with engine.connect() as connection:
        rows: list[tuple[Any, ...]] = fetch_rows(connection, query)
    return [RunListing(int(i), str(name), slot, str(status), int(n)) for i, name, slot, status, n in rows]


def latest_run_id(engine: Engine, campaign: str) -> int | None:
    """The completed run of ``campaign`` with the latest slot (the one worth measuring), or None."""
    r, c = CAMPAIGN_RUNS.c, CAMPAIGNS.c
    query = (sa.select(r.id).join(CAMPAIGNS, c.id == r.campaign_id)
             .where(c.name == campaign, r.status == RunStatus.COMPLETED).order_by(r.slot.desc(), r.id.desc())
             .limit(1))
    with engine.connect() as connection:
        found = connection.execute(query).scalar_one_or_none()
    return None if found is None else int(found)
