"""The SQL side of the recommenders' features: raw member rows for an id range, as of an instant.

One aggregate query per table (members, transactions, points ledger, tier changes, consents,
messages with their delivery events, campaign assignments), each scoped to ``[start, stop)``
and to what was known strictly before ``as_of`` (so features for a past campaign do not leak
its own outcome). The result has the columns :data:`recommenders.features.RAW_COLUMNS` plus
``spend365_<category>``; :func:`recommenders.features.build_features` turns it into numbers.
On request (``lifetime=True``) it also carries :data:`LIFETIME_COLUMNS` from ``member_lifetime``; they are
not in the default feature set, so models trained before keep their recorded schemas.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from loyalty.db import fetch_rows
from loyalty.expiry import expiry_cutoff
from loyalty.models import (
    CAMPAIGN_ASSIGNMENTS,
    CAMPAIGN_RUNS,
    CHANNEL_CONSENTS,
    DELIVERY_EVENTS,
    MEMBERS,
    OUTBOX_MESSAGES,
    POINTS_ENTRIES,
    TIER_CHANGES,
    TRANSACTIONS,
)
from loyalty.models_measurement import LIFETIME_FITS, MEMBER_LIFETIME
from loyalty.programme import Programme, TierBasis
from loyalty.tiers import window_start
from loyalty.types import PointsKind
from recommenders.features import WINDOWS

DAY = timedelta(days=1)
EXPIRY_HORIZON_DAYS = 30
#: Optional columns from the latest lifetime fit (:mod:`loyalty.clv`), added by ``load_member_rows(lifetime=True)``.
LIFETIME_COLUMNS = ("p_alive", "clv_12m_cents")


def _frame(connection: Connection, query: sa.Select[Any], columns: Sequence[str]) -> pd.DataFrame:
    return pd.DataFrame(fetch_rows(connection, query), columns=list(columns))


def _members(connection: Connection, lo: int, hi: int, as_of: datetime) -> pd.DataFrame:
    m = MEMBERS.c
    query = sa.select(m.id, m.joined_at, m.locale).where(m.id >= lo, m.id < hi, m.joined_at < as_of).order_by(m.id)
    return _frame(connection, query, ["member_id", "joined_at", "locale"])


def _transactions(connection: Connection, lo: int, hi: int, as_of: datetime, categories: Sequence[str],
                  tier_since: datetime) -> pd.DataFrame:
    t = TRANSACTIONS.c
    year = as_of - 365 * DAY

    def within(since: datetime, value: Any) -> Any:
        return sa.func.sum(sa.case((t.occurred_at >= since, value), else_=0))

    cols: list[Any] = [sa.func.max(t.occurred_at)]
    names = ["member_id", "last_purchase_at"]
    for w in WINDOWS:
        cols += [within(as_of - w * DAY, 1), within(as_of - w * DAY, t.amount_cents)]
        names += [f"frequency_{w}d", f"monetary_{w}d"]
    for category in categories:
        cols.append(sa.func.sum(sa.case(((t.occurred_at >= year) & (t.category == category), t.amount_cents),
                                        else_=0)))
        names.append(f"spend365_{category}")
    cols.append(within(tier_since, t.amount_cents))
    names.append("spend_qualifying")
    query = (sa.select(t.member_id, *cols).where(t.member_id >= lo, t.member_id < hi, t.occurred_at < as_of)
             .group_by(t.member_id))
    return _frame(connection, query, names)


def _points(connection: Connection, programme: Programme, lo: int, hi: int, as_of: datetime,
            tier_since: datetime) -> pd.DataFrame:
    e = POINTS_ENTRIES.c
    cutoff = expiry_cutoff(programme, as_of + EXPIRY_HORIZON_DAYS * DAY)
    old_credits = sa.func.sum(sa.case(((e.points > 0) & (e.created_at < cutoff), e.points), else_=0))
    debits = sa.func.sum(sa.case((e.points < 0, -e.points), else_=0))
    earned = sa.func.sum(sa.case(((e.kind == PointsKind.EARN) & (e.created_at >= tier_since), e.points), else_=0))
    query = (sa.select(e.member_id, sa.func.sum(e.points), old_credits - debits, earned)
             .where(e.member_id >= lo, e.member_id < hi, e.created_at < as_of).group_by(e.member_id))
    return _frame(connection, query, ["member_id", "points_balance", "expiring_due", "points_qualifying"])


def _tiers_at(connection: Connection, lo: int, hi: int, as_of: datetime) -> pd.DataFrame:
    c = TIER_CHANGES.c
    query = (sa.select(c.member_id, c.to_tier).where(c.member_id >= lo, c.member_id < hi, c.changed_at < as_of)
             .order_by(c.member_id, c.changed_at, c.id))
    return _frame(connection, query, ["member_id", "tier"]).drop_duplicates("member_id", keep="last")


def _consents(connection: Connection, lo: int, hi: int, as_of: datetime) -> pd.DataFrame:
    c = CHANNEL_CONSENTS.c
    query = sa.select(c.member_id, c.channel, c.opted_in).where(c.member_id >= lo, c.member_id < hi,
                                                                c.recorded_at < as_of)
    rows = _frame(connection, query, ["member_id", "channel", "opted_in"])
    rows["channel"] = "consent_" + rows["channel"].astype(str)
    wide = rows.pivot_table(index="member_id", columns="channel", values="opted_in", aggfunc="max")
    return wide.reindex(columns=["consent_email", "consent_sms", "consent_push"]).reset_index()


def _engagement(connection: Connection, lo: int, hi: int, as_of: datetime) -> pd.DataFrame:
    o, d = OUTBOX_MESSAGES.c, DELIVERY_EVENTS.c
    events = (sa.select(d.outbox_id, sa.func.max(sa.case((d.event == "open", 1), else_=0)).label("opened"),
                        sa.func.max(sa.case((d.event == "click", 1), else_=0)).label("clicked"))
              .where(d.occurred_at < as_of).group_by(d.outbox_id).subquery())
    query = (sa.select(o.member_id, sa.func.count(), sa.func.sum(sa.func.coalesce(events.c.opened, 0)),
                       sa.func.sum(sa.func.coalesce(events.c.clicked, 0)))
             .select_from(OUTBOX_MESSAGES.outerjoin(events, events.c.outbox_id == o.id))
             .where(o.member_id >= lo, o.member_id < hi, o.sent_at < as_of, o.sent_at >= as_of - 365 * DAY)
             .group_by(o.member_id))
    return _frame(connection, query, ["member_id", "messages_365d", "opens_365d", "clicks_365d"])


def _exposure(connection: Connection, lo: int, hi: int, as_of: datetime) -> pd.DataFrame:
    """Offers received in past runs whose attribution window closed before ``as_of``, and how many converted."""
    r, a, t = CAMPAIGN_RUNS.c, CAMPAIGN_ASSIGNMENTS.c, TRANSACTIONS.c
    runs: list[tuple[int, datetime, datetime]] = []
    for run_id, slot, days in fetch_rows(connection, sa.select(r.id, r.slot, r.attribution_days)):
        if slot + days * DAY <= as_of:  # only windows that had closed: their outcome was known at as_of
            runs.append((int(run_id), slot, slot + days * DAY))
    if not runs:
        return pd.DataFrame(columns=["member_id", "offers_received", "offers_converted"])
    window = sa.or_(*((a.run_id == i) & (t.occurred_at >= s) & (t.occurred_at < end) for i, s, end in runs))
    bought = sa.exists().where(t.member_id == a.member_id, window)
    query = (sa.select(a.member_id, sa.func.count(), sa.func.sum(sa.case((bought, 1), else_=0)))
             .where(a.member_id >= lo, a.member_id < hi, a.arm != "holdout", a.run_id.in_([i for i, *_ in runs]))
             .group_by(a.member_id))
    return _frame(connection, query, ["member_id", "offers_received", "offers_converted"])


def _lifetime(connection: Connection, lo: int, hi: int, as_of: datetime) -> pd.DataFrame:
    """P(alive) and 12-month CLV from ``member_lifetime``, only when its fit used no data from ``as_of`` on."""
    ml, f = MEMBER_LIFETIME.c, LIFETIME_FITS.c
    query = (sa.select(ml.member_id, ml.p_alive, ml.clv_12m_cents)
             .join(LIFETIME_FITS, f.id == ml.fit_id)
             .where(ml.member_id >= lo, ml.member_id < hi, f.as_of <= as_of))
    frame = _frame(connection, query, ["member_id", *LIFETIME_COLUMNS])
    return frame.astype({"p_alive": float, "clv_12m_cents": float})


def load_member_rows(bind: Engine | Connection, programme: Programme, *, id_range: tuple[int, int],
                     as_of: datetime, lifetime: bool = False) -> pd.DataFrame:
    """Raw feature rows of the members in ``[start, stop)`` who had joined before ``as_of``.

    ``lifetime=True`` adds the optional :data:`LIFETIME_COLUMNS` (opt-in, so the default feature set and the
    schemas recorded with trained models do not change): NaN for a member without a ``member_lifetime`` row,
    and for everyone when the stored fit is later than ``as_of`` (it would leak what happened after).
    """
    if isinstance(bind, Engine):
        with bind.connect() as connection:
            return load_member_rows(connection, programme, id_range=id_range, as_of=as_of, lifetime=lifetime)
    lo, hi = id_range
    categories = list(programme.earn.category_multipliers)
    tier_since = window_start(programme.tiers, as_of)
    rows = _members(bind, lo, hi, as_of)
    parts = [_transactions(bind, lo, hi, as_of, categories, tier_since),
             _points(bind, programme, lo, hi, as_of, tier_since), _tiers_at(bind, lo, hi, as_of),
             _consents(bind, lo, hi, as_of), _engagement(bind, lo, hi, as_of), _exposure(bind, lo, hi, as_of)]
    if lifetime:
        parts.append(_lifetime(bind, lo, hi, as_of))
    for part in parts:
        rows = rows.merge(part, on="member_id", how="left")
    return _finish(rows, programme, as_of)


def _finish(rows: pd.DataFrame, programme: Programme, as_of: datetime) -> pd.DataFrame:
    """Fill what a member without history lacks and derive tenure, recency and tier progress."""
    counts = [c for c in rows.columns if c.startswith(("frequency_", "monetary_", "spend", "messages", "opens",
                                                        "clicks", "offers_", "points_", "expiring", "consent_"))]
    rows[counts] = rows[counts].astype(float).fillna(0.0)
    joined = pd.to_datetime(rows["joined_at"], utc=True)
    last = pd.to_datetime(rows["last_purchase_at"], utc=True).fillna(joined)
    stamp = pd.Timestamp(as_of)
    rows["tenure_days"] = (stamp - joined).dt.total_seconds() / 86400
    rows["recency_days"] = (stamp - last).dt.total_seconds() / 86400
    tiers = programme.tiers.tiers
    rank = {t.code: i for i, t in enumerate(tiers)}
    rows["tier_rank"] = rows["tier"].map(rank).fillna(0).astype(int)
    upper = [*(t.threshold for t in tiers[1:]), float("nan")]
    rows["next_tier_threshold"] = [upper[r] for r in rows["tier_rank"]]
    points_basis = programme.tiers.basis is TierBasis.POINTS
    rows["qualifying_value"] = rows["points_qualifying" if points_basis else "spend_qualifying"]
    rows["points_expiring_30d"] = rows["expiring_due"].clip(lower=0).clip(upper=rows["points_balance"].clip(lower=0))
    return rows.drop(columns=["joined_at", "last_purchase_at", "tier", "expiring_due"])
