"""The SQL behind :mod:`loyalty.kpis`: lifecycle segments, the KPI cube, monthly and cohort aggregates.

Every statement is a GROUP BY over the members, transactions, survey and lifetime tables; nothing is
fetched member by member. Periods and calendar months are bound as UTC instants computed in Python, and
a timestamp's month is a ``CASE`` ladder over those bounds, so no date function differs between SQLite
and PostgreSQL. Expressions holding bound parameters are computed in an inner subquery and grouped on
its column: PostgreSQL binds server-side and would not recognise two copies of one ``CASE`` as equal.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from loyalty.db import count_if
from loyalty.models import MEMBER_LIFETIME, MEMBERS, SURVEY_RESPONSES, TRANSACTIONS
from loyalty.surveys import NPS, counted
from loyalty.types import NPS_SCORES, NpsCategory, as_utc

#: Lifecycle segments, in display order (see :func:`lifecycle_segments`).
SEGMENTS = ("new", "loyal", "active", "at_risk", "lapsed", "never_purchased")
NEW_DAYS = 90  # joined at or after as_of minus this many days
ACTIVE_DAYS = 90  # last purchase at or after as_of minus this many days: active (or loyal)
LAPSED_DAYS = 180  # last purchase before as_of minus this many days: lapsed; in between: at risk
LOYAL_PURCHASES = 6  # purchases in the last FREQUENCY_DAYS that make an active member loyal
FREQUENCY_DAYS = 365
#: The cube's measures, in column order; each sums across groups (see :func:`kpi_cube`).
MEASURES = ("members", "prev_buyers", "retained", "purchases", "buyers", "net_cents", "clv_sum", "clv_n",
            "promoters", "detractors", "responses")

t, m = TRANSACTIONS.c, MEMBERS.c


def _total(column: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
    return sa.func.coalesce(sa.func.sum(column), 0)


def bucket(column: sa.ColumnElement[datetime], bounds: Sequence[datetime]) -> sa.ColumnElement[int]:
    """Index ``i`` of the interval ``[bounds[i], bounds[i+1])`` holding ``column`` (callers filter the range)."""
    if len(bounds) <= 2:
        return sa.literal(0, sa.Integer())
    return sa.case(*((column < bound, i) for i, bound in enumerate(bounds[1:-1])), else_=len(bounds) - 2)


def _in_range(column: sa.ColumnElement[datetime], bounds: Sequence[datetime]) -> sa.ColumnElement[bool]:
    return sa.and_(column >= bounds[0], column < bounds[-1])


def _activity(as_of: datetime, period_days: int | None) -> sa.Subquery:
    """Per member, over the year (or two periods, if longer) before ``as_of``: last purchase and purchases in the
    last year (older purchases only matter to tell lapsed from never purchased, see :func:`_segmented`); with
    ``period_days``, also the previous and current period's purchases (``prev_n``, ``cur_n``) and the current
    period's net amount (``cur_net``). One pass over recent transactions, not the whole history."""
    bought = t.amount_cents > 0
    columns = [t.member_id, sa.func.max(sa.case((bought, t.occurred_at))).label("last"),
               count_if(sa.and_(bought, t.occurred_at >= as_of - timedelta(days=FREQUENCY_DAYS))).label("recent")]
    if period_days is not None:
        start, prev_start = as_of - timedelta(days=period_days), as_of - timedelta(days=2 * period_days)
        current = t.occurred_at >= start
        columns += [count_if(sa.and_(bought, ~current, t.occurred_at >= prev_start)).label("prev_n"),
                    count_if(sa.and_(bought, current)).label("cur_n"),
                    _total(sa.case((current, t.amount_cents), else_=0)).label("cur_net")]
    since = as_of - timedelta(days=max(FREQUENCY_DAYS, LAPSED_DAYS, 2 * (period_days or 0)))
    return (sa.select(*columns).where(t.occurred_at >= since, t.occurred_at < as_of)
            .group_by(t.member_id).subquery("activity"))


def _segmented(as_of: datetime, period_days: int | None) -> sa.Subquery:
    """Members who had joined by ``as_of`` with their segment (and the period columns of :func:`_activity`)."""
    activity = _activity(as_of, period_days)
    a, older = activity.c, TRANSACTIONS.alias("older")
    # No purchase in the activity window: lapsed if they ever bought, else never purchased. A per-member index
    # probe inside its own CASE, so it only runs for those members (as EXISTS, PostgreSQL hashed all history).
    earlier = (sa.select(older.c.id).where(older.c.member_id == m.id, older.c.amount_cents > 0,
                                           older.c.occurred_at < as_of).limit(1).scalar_subquery())
    active = a.last >= as_of - timedelta(days=ACTIVE_DAYS)
    segment = sa.case((m.joined_at >= as_of - timedelta(days=NEW_DAYS), "new"),
                      (a.last.is_(None), sa.case((earlier.is_(None), "never_purchased"), else_="lapsed")),
                      (sa.and_(active, a.recent >= LOYAL_PURCHASES), "loyal"),
                      (active, "active"),
                      (a.last >= as_of - timedelta(days=LAPSED_DAYS), "at_risk"),
                      else_="lapsed")
    extra = [] if period_days is None else [m.tier, m.locale, a.prev_n, a.cur_n, a.cur_net]
    return (sa.select(m.id.label("member_id"), segment.label("segment"), *extra)
            .select_from(MEMBERS.outerjoin(activity, a.member_id == m.id))
            .where(m.joined_at < as_of).subquery("segments"))


def lifecycle_segments(as_of: datetime) -> sa.Subquery:
    """``(member_id, segment)`` of every member who had joined by ``as_of``; reusable by reports and audiences.

    Rules, first match wins ("in the last N days": at or after ``as_of - N days``; purchases are positive
    transactions before ``as_of``): ``new`` joined in the last 90 days; ``never_purchased`` no purchase;
    ``loyal`` last purchase in the last 90 days and at least 6 purchases in the last 365; ``active`` last
    purchase in the last 90 days; ``at_risk`` last purchase in the last 180 days; ``lapsed`` earlier.
    """
    return _segmented(as_utc(as_of), None)


def _latest_scores(bounds: Sequence[datetime], *, by_month: bool) -> sa.Subquery:
    """Each member's latest NPS score in ``[bounds[0], bounds[-1])``, per month of ``bounds`` if ``by_month``."""
    s = SURVEY_RESPONSES.c
    base = (sa.select(s.id, s.member_id, s.score, s.responded_at, bucket(s.responded_at, bounds).label("idx"))
            .where(s.survey == NPS, counted(), _in_range(s.responded_at, bounds)).subquery("responses"))
    b = base.c
    rank = sa.func.row_number().over(partition_by=[b.member_id, b.idx] if by_month else [b.member_id],
                                     order_by=[b.responded_at.desc(), b.id.desc()])
    ranked = sa.select(b.member_id, b.score, b.idx, rank.label("rn")).subquery("ranked")
    return sa.select(ranked.c.member_id, ranked.c.score, ranked.c.idx).where(ranked.c.rn == 1).subquery("scores")


def _score_measures(score: sa.ColumnElement[int]) -> list[sa.ColumnElement[int]]:
    promoters, detractors = NPS_SCORES[NpsCategory.PROMOTER], NPS_SCORES[NpsCategory.DETRACTOR]
    return [count_if(score.between(*promoters)), count_if(score.between(*detractors)), sa.func.count(score)]


def kpi_cube(as_of: datetime, period_days: int) -> sa.Select[Any]:
    """Rows ``(tier, segment, locale, *MEASURES)``: the additive KPI facts of each combination.

    Previous period ``[as_of-2P, as_of-P)``, current ``[as_of-P, as_of)``. ``net_cents`` is purchases
    plus refunds in the current period; ``clv_*`` come from ``member_lifetime``; scores are each member's
    latest NPS response in the current period.
    """
    as_of = as_utc(as_of)
    seg = _segmented(as_of, period_days)  # segment, tier, locale and period purchases in one statement
    scores = _latest_scores([as_of - timedelta(days=period_days), as_of], by_month=False)
    g, ml = seg.c, MEMBER_LIFETIME
    joined = seg.outerjoin(ml, ml.c.member_id == g.member_id).outerjoin(scores, scores.c.member_id == g.member_id)
    return (sa.select(g.tier, g.segment, g.locale, sa.func.count(), count_if(g.prev_n > 0),
                      count_if(sa.and_(g.prev_n > 0, g.cur_n > 0)), _total(g.cur_n), count_if(g.cur_n > 0),
                      _total(g.cur_net), _total(ml.c.clv_12m_cents), sa.func.count(ml.c.clv_12m_cents),
                      *_score_measures(scores.c.score))
            .select_from(joined).group_by(g.tier, g.segment, g.locale))


def month_spend(bounds: Sequence[datetime]) -> sa.Select[Any]:
    """Rows ``(idx, purchases, buyers, net_cents, retained)`` per month of ``bounds``.

    ``retained``: the month's buyers who also bought the month before, found with a window over each
    member's months (the last month with a purchase before this one) rather than a self-join.
    """
    base = (sa.select(t.member_id, t.amount_cents, bucket(t.occurred_at, bounds).label("idx"))
            .where(_in_range(t.occurred_at, bounds)).subquery("monthly_tx"))
    b = base.c
    monthly = (sa.select(b.member_id, b.idx, count_if(b.amount_cents > 0).label("n"),
                         _total(b.amount_cents).label("net"))
               .group_by(b.member_id, b.idx).subquery("monthly"))
    c = monthly.c
    last_bought = sa.func.max(sa.case((c.n > 0, c.idx))).over(partition_by=c.member_id, order_by=c.idx,
                                                              rows=(None, -1))
    lagged = sa.select(c.idx, c.n, c.net, last_bought.label("last_bought")).subquery("lagged")
    g = lagged.c
    return (sa.select(g.idx, _total(g.n), count_if(g.n > 0), _total(g.net),
                      count_if(sa.and_(g.n > 0, g.last_bought == g.idx - 1)))
            .group_by(g.idx))


def month_scores(bounds: Sequence[datetime]) -> sa.Select[Any]:
    """Rows ``(idx, promoters, detractors, responses)``: each member's latest response in each month."""
    scores = _latest_scores(bounds, by_month=True)
    return sa.select(scores.c.idx, *_score_measures(scores.c.score)).group_by(scores.c.idx)


def month_members(bounds: Sequence[datetime]) -> sa.Select[*tuple[int, ...]]:
    """One row: members who had joined by the end of each month of ``bounds``."""
    return sa.select(*(count_if(m.joined_at < end) for end in bounds[1:]))


def cohort_sizes(bounds: Sequence[datetime]) -> sa.Select[Any]:
    """Rows ``(cohort idx, members)``: members by join month of ``bounds``."""
    joined = sa.select(bucket(m.joined_at, bounds).label("cohort")).where(_in_range(m.joined_at, bounds)).subquery()
    return sa.select(joined.c.cohort, sa.func.count()).group_by(joined.c.cohort)


def cohort_activity(bounds: Sequence[datetime]) -> sa.Select[Any]:
    """Rows ``(cohort idx, month idx, buyers)``: members of each join month who bought in each later month."""
    cohorts = (sa.select(m.id, bucket(m.joined_at, bounds).label("cohort"))
               .where(_in_range(m.joined_at, bounds)).cte("cohorts"))
    # IN (cohort members) lets SQLite probe the (member_id, occurred_at) index per member instead of joining
    # every transaction of the year to members (8x faster on a seeded programme; PostgreSQL plans both alike).
    bought = (sa.select(t.member_id, bucket(t.occurred_at, bounds).label("idx"))
              .where(t.member_id.in_(sa.select(cohorts.c.id)), t.amount_cents > 0, _in_range(t.occurred_at, bounds))
              .distinct().subquery("bought"))
    c, b = cohorts.c, bought.c
    return (sa.select(c.cohort, b.idx, sa.func.count()).select_from(bought.join(cohorts, c.id == b.member_id))
            .where(b.idx >= c.cohort).group_by(c.cohort, b.idx))


def clv_summary() -> sa.Select[int, Any, Any]:
    """One row: count, min and max of ``member_lifetime.clv_12m_cents``."""
    c = MEMBER_LIFETIME.c.clv_12m_cents
    return sa.select(sa.func.count(c), sa.func.min(c), sa.func.max(c))


def clv_at(rank: int) -> sa.Select[Any]:
    """The ``rank``-th smallest CLV (0-based): a portable quantile (SQLite has no percentile function)."""
    c = MEMBER_LIFETIME.c.clv_12m_cents
    return sa.select(c).order_by(c).limit(1).offset(rank)


def clv_bins(edges: Sequence[float]) -> sa.Select[Any]:
    """Rows ``(bin, members)``; bin ``i`` is ``[edges[i], edges[i+1])``, the last bin open above."""
    c = MEMBER_LIFETIME.c.clv_12m_cents
    ladder = sa.case(*((c < sa.literal(edge, sa.Float()), i) for i, edge in enumerate(edges[1:-1])),
                     else_=len(edges) - 2)
    binned = sa.select(ladder.label("bin")).subquery("binned")
    return sa.select(binned.c.bin, sa.func.count()).group_by(binned.c.bin)
