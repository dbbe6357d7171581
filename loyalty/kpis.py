"""The five programme KPIs, by tier, segment, locale and month: what the programme is judged on.

:func:`programme_kpis` fills :class:`loyalty.measurement_types.ProgrammeKpis` as of an instant, over a
period of ``P = period_days``: previous period ``[as_of-2P, as_of-P)``, current ``[as_of-P, as_of)``.

* **Retention rate** (period over period): of the group's members who purchased in the previous period,
  the share who purchased in the current one. None when nobody in the group bought in the previous period.
  :func:`retention_cohorts` gives the cohort view (join month x months since joining).
* **NPS**: % promoters (9-10) - % detractors (0-6) over each member's latest ``nps`` survey response in
  the period; ``responses`` counts those members. None without responses.
* **Average transaction value**: net sales / purchases in the period. A purchase is a positive
  transaction; refunds (negative) are not counted as transactions but *do* reduce the value, as they
  reduce revenue in :mod:`loyalty.attribution`: a refunded sale is not value the programme produced.
* **Purchase frequency**: purchases per purchasing member in the period.
* **CLV**: mean ``member_lifetime.clv_12m_cents`` of the group's members that have one; None before a
  lifetime fit. Month rows carry None: the prediction is current, not monthly.

Groups: ``all``; ``tier`` (the member's current tier, programme order, every tier even when empty);
``segment`` (below, every segment); ``locale``; ``month`` (the last ``months`` *complete* calendar months
in UTC, oldest first, each its own period: retention is the share of the previous month's buyers who
bought this month, ``members`` those who had joined by the month's end). Members count from their join.

Lifecycle segment at ``as_of`` (:func:`loyalty.kpis_sql.lifecycle_segments`, SQL, first rule wins; "in
the last N days" means at or after ``as_of - N days``): ``new`` joined in the last 90 days;
``never_purchased`` no purchase yet; ``loyal`` last purchase in the last 90 days and >= 6 purchases in the
last 365; ``active`` last purchase in the last 90 days; ``at_risk`` last purchase in the last 180 days;
``lapsed`` earlier.

Everything is aggregated in SQL: one statement groups the members by (tier, segment, locale) with
additive measures, and the dimension rows are sums of that small cube. The CLV histogram has 12 equal
bins from the minimum to the 99th percentile; the last bin also holds everything above, up to the max.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from loyalty import kpis_sql as q
from loyalty.db import fetch_rows
from loyalty.kpis_sql import SEGMENTS, lifecycle_segments
from loyalty.measurement_types import KpiRow, ProgrammeKpis
from loyalty.models import TIERS
from loyalty.types import as_utc, utcnow

__all__ = ["SEGMENTS", "CohortRow", "lifecycle_segments", "month_bounds", "programme_kpis", "retention_cohorts"]

CLV_BINS = 12
CLV_CAP_QUANTILE = 0.99
_M = {name: i for i, name in enumerate(q.MEASURES)}
_DIMENSIONS = ("tier", "segment", "locale")  # the cube's key columns, in order


@dataclass(frozen=True)
class CohortRow:
    """Members who joined in ``cohort`` (``YYYY-MM``) and purchased ``months_since_join`` months later."""

    cohort: str
    months_since_join: int  # 0: the join month itself
    members: int  # the cohort's size
    active: int  # members of the cohort with a purchase in that month
    rate: float | None  # active / members; None for an empty cohort


def month_bounds(as_of: datetime, months: int) -> list[datetime]:
    """Starts of the last ``months`` complete UTC calendar months before ``as_of``, then the current month's start."""
    as_of = as_utc(as_of)
    index = as_of.year * 12 + as_of.month - 1  # months since year 0 of as_of's month
    return [as_of.replace(year=i // 12, month=i % 12 + 1, day=1, hour=0, minute=0, second=0, microsecond=0)
            for i in range(index - months, index + 1)]


def _label(start: datetime) -> str:
    return f"{start:%Y-%m}"


def _kpi_row(dimension: str, group: str, v: np.ndarray, *, clv: bool = True) -> KpiRow:
    """The KPIs of one group from its summed measures ``v`` (laid out as :data:`kpis_sql.MEASURES`)."""
    def ratio(num: str, den: str, scale: float = 1.0) -> float | None:
        return scale * float(v[_M[num]]) / float(v[_M[den]]) if v[_M[den]] else None

    responses = int(v[_M["responses"]])
    nps = (100.0 * float(v[_M["promoters"]] - v[_M["detractors"]]) / responses) if responses else None
    return KpiRow(dimension=dimension, group=group, members=int(v[_M["members"]]),
                  retention_rate=ratio("retained", "prev_buyers"), nps=nps, responses=responses,
                  average_transaction_value_cents=ratio("net_cents", "purchases"),
                  purchase_frequency=ratio("purchases", "buyers"),
                  clv_12m_cents=ratio("clv_sum", "clv_n") if clv else None)


def _rollup(cube: list[tuple[Any, ...]], key: int | None, groups: Sequence[str]) -> dict[str, np.ndarray]:
    """Sum the cube's measures by key column ``key`` (None: everything); ``groups`` are always present."""
    sums = {group: np.zeros(len(q.MEASURES), dtype=np.int64) for group in groups}
    for row in cube:
        group = "all" if key is None else str(row[key])
        sums.setdefault(group, np.zeros(len(q.MEASURES), dtype=np.int64))
        sums[group] += np.array([int(x or 0) for x in row[len(_DIMENSIONS):]], dtype=np.int64)
    return sums


def _dimension_rows(cube: list[tuple[Any, ...]],
                    tiers: list[str]) -> tuple[list[KpiRow], np.ndarray, dict[str, np.ndarray]]:
    """KPI rows for all, tier, segment and locale; the programme's sums and each tier's."""
    by_tier, everyone = _rollup(cube, 0, tiers), _rollup(cube, None, ["all"])
    rows = [_kpi_row("all", "all", everyone["all"])]
    rows += [_kpi_row("tier", tier, by_tier[tier]) for tier in by_tier]
    rows += [_kpi_row("segment", seg, sums) for seg, sums in _rollup(cube, 1, SEGMENTS).items()]
    rows += [_kpi_row("locale", loc, sums) for loc, sums in sorted(_rollup(cube, 2, []).items())]
    return rows, everyone["all"], by_tier


def _month_rows(connection: Connection, as_of: datetime, months: int) -> list[KpiRow]:
    """One KPI row per month of the last ``months`` complete months; one extra month before for retention."""
    if months <= 0:
        return []
    bounds = month_bounds(as_of, months + 1)
    sums = np.zeros((months + 1, len(q.MEASURES)), dtype=np.int64)
    [joined] = fetch_rows(connection, q.month_members(bounds))
    sums[:, _M["members"]] = [int(n) for n in joined]
    for idx, purchases, buyers, net, retained in fetch_rows(connection, q.month_spend(bounds)):
        sums[idx, [_M["purchases"], _M["buyers"], _M["net_cents"], _M["retained"]]] = [
            int(purchases), int(buyers), int(net), int(retained)]
    sums[1:, _M["prev_buyers"]] = sums[:-1, _M["buyers"]]  # last month's buyers are this month's base
    for idx, promoters, detractors, responses in fetch_rows(connection, q.month_scores(bounds)):
        sums[idx, [_M["promoters"], _M["detractors"], _M["responses"]]] = [promoters, detractors, responses]
    return [_kpi_row("month", _label(bounds[i]), sums[i], clv=False) for i in range(1, months + 1)]


def _clv_histogram(connection: Connection) -> list[tuple[float, float, int]]:
    """(low, high, members) over ``member_lifetime``: equal bins up to the 99th percentile, the last open."""
    [(count, low, high)] = fetch_rows(connection, q.clv_summary())
    if not count:
        return []
    [(cap,)] = fetch_rows(connection, q.clv_at(int(CLV_CAP_QUANTILE * (int(count) - 1))))
    low, high, cap = float(low), float(high), float(cap)
    if cap <= low:  # (nearly) every member has the same value: one bar
        return [(low, high, int(count))]
    width = (cap - low) / CLV_BINS
    edges = [low + i * width for i in range(CLV_BINS)] + [high]
    counts = {int(b): int(n) for b, n in fetch_rows(connection, q.clv_bins(edges))}
    return [(edges[i], edges[i + 1], counts.get(i, 0)) for i in range(CLV_BINS)]


def programme_kpis(engine: Engine, *, as_of: datetime | None = None, period_days: int = 90,
                   months: int = 12) -> ProgrammeKpis:
    """The programme's KPIs as of ``as_of`` (default now) over periods of ``period_days``, with ``months`` of trend.

    See the module docstring for every definition. An empty programme gives rows of zeros and None KPIs.
    """
    if period_days < 1 or months < 0:
        raise ValueError("period_days must be positive and months zero or more")
    as_of = utcnow() if as_of is None else as_utc(as_of)
    with engine.connect() as connection:
        tiers = [str(code) for (code,) in fetch_rows(connection, sa.select(TIERS.c.code).order_by(TIERS.c.rank))]
        cube = fetch_rows(connection, q.kpi_cube(as_of, period_days))
        month_rows = _month_rows(connection, as_of, months)
        histogram = _clv_histogram(connection)
    rows, total, by_tier = _dimension_rows(cube, tiers)
    promoters, detractors, responses = (int(total[_M[k]]) for k in ("promoters", "detractors", "responses"))
    breakdown = {"promoters": promoters, "passives": responses - promoters - detractors, "detractors": detractors}
    first_month: date | None = month_bounds(as_of, months)[0].date() if months else None
    return ProgrammeKpis(as_of=as_of, period_days=period_days, rows=rows, months=month_rows,
                         tier_distribution={tier: int(by_tier[tier][_M["members"]]) for tier in tiers},
                         clv_histogram=histogram, nps_breakdown=breakdown, first_month=first_month)


def retention_cohorts(engine: Engine, *, as_of: datetime | None = None, months: int = 12) -> list[CohortRow]:
    """Cohort retention over the last ``months`` complete months: for each join month and each month since,
    the share of the cohort that purchased in that month (month 0 is the join month). Oldest cohort first."""
    if months < 0:
        raise ValueError("months must be zero or more")
    if months == 0:
        return []
    bounds = month_bounds(utcnow() if as_of is None else as_utc(as_of), months)
    with engine.connect() as connection:
        sizes = {int(c): int(n) for c, n in fetch_rows(connection, q.cohort_sizes(bounds))}
        active = {(int(c), int(i)): int(n) for c, i, n in fetch_rows(connection, q.cohort_activity(bounds))}
    rows = []
    for cohort in range(months):
        size = sizes.get(cohort, 0)
        for age in range(months - cohort):
            buyers = active.get((cohort, cohort + age), 0)
            rows.append(CohortRow(_label(bounds[cohort]), age, size, buyers, buyers / size if size else None))
    return rows
