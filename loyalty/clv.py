"""Member lifetime value from the transactions table: summaries in SQL, BG/NBD + Gamma-Gamma, stored per member.

Summaries follow the ``lifetimes`` convention with daily granularity (UTC calendar days):

- a *purchase day* is a day with at least one positive transaction; refunds (negative amounts) never make
  a purchase day;
- ``frequency`` = purchase days - 1, ``recency_days`` = last - first purchase day, ``age_days`` (T) =
  whole days from the first purchase day to ``as_of`` (the day of ``as_of`` itself counts only once it is
  over, so ``recency_days <= age_days`` always);
- ``monetary_cents`` = mean spend of the repeat purchase days (every day but the first), *net of refunds
  pro rata*: multiplied by the member's net-to-gross ratio over the whole history (refunds rarely point at
  the day they undo, so they are spread over all purchases rather than guessed at; floored at 0).

Members who never bought are **omitted** (no ``member_lifetime`` row, so they match no lifetime audience
filter and the optional features are missing): the models describe customers from their first purchase,
and inventing the summary of a customer who does not exist yet would be a guess. Time is in days;
12 months = 365 days. CLV is undiscounted (:func:`loyalty.clv_models.clv`).

Summaries are read in chunks of member ids (:func:`loyalty.db.balanced_ranges`, one aggregate statement per
chunk), the models are fitted once on all of them in numpy, and rows are upserted chunk by chunk with the
driver's ``executemany``; rows left from an earlier fit (members without purchases before ``as_of``) are
deleted, so the table always holds one fit.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from loyalty.clv_models import BetaGeo, GammaGamma, summary_params
from loyalty.db import balanced_ranges, fetch_rows, is_sqlite
from loyalty.models import MEMBERS, TRANSACTIONS
from loyalty.models_measurement import LIFETIME_FITS, MEMBER_LIFETIME
from loyalty.types import as_utc, utcnow

HORIZON_DAYS = 365
DEFAULT_CHUNK = 5000
Summaries = dict[str, np.ndarray]
_EPOCH = np.datetime64("1970-01-01", "D")


@dataclass(frozen=True)
class LifetimeFitResult:
    """What :func:`fit_lifetime` did: the fit row, its parameters and how many member rows it wrote."""

    fit_id: int
    as_of: datetime
    members: int
    repeat_members: int
    params: dict[str, Any]
    rows_deleted: int
    seconds: float


def _bought(as_of: datetime) -> list[sa.ColumnElement[bool]]:
    t = TRANSACTIONS.c
    return [t.occurred_at < as_of, t.amount_cents > 0]


def purchaser_ranges(engine: Engine, *, as_of: datetime, chunk_size: int = DEFAULT_CHUNK) -> list[tuple[int, int]]:
    """Half-open member id ranges, each holding ``chunk_size`` members with a purchase before ``as_of``."""
    t = TRANSACTIONS.c
    bought = sa.exists().where(t.member_id == MEMBERS.c.id, *_bought(as_of))
    return balanced_ranges(engine, MEMBERS.c.id, bought, chunk_size)


def summary_query(id_range: tuple[int, int], as_of: datetime) -> sa.Select[Any]:
    """Per purchaser in ``[lo, hi)``: id, first and last purchase day, purchase days, gross spend, spend of
    the first day, refunds (as a positive sum). One statement: purchase days grouped, then per member."""
    t = TRANSACTIONS.c
    lo, hi = id_range
    in_range = (t.member_id >= lo, t.member_id < hi, t.occurred_at < as_of)
    day = sa.func.date(t.occurred_at)  # UTC calendar day: timestamps are stored as naive UTC
    days = (sa.select(t.member_id, day.label("day"), sa.func.sum(t.amount_cents).label("spend"))
            .where(*in_range, t.amount_cents > 0).group_by(t.member_id, day).subquery("days"))
    per_member = (sa.select(days.c.member_id, sa.func.min(days.c.day).label("first"),
                            sa.func.max(days.c.day).label("last"), sa.func.count().label("n"),
                            sa.func.sum(days.c.spend).label("gross"))
                  .group_by(days.c.member_id).subquery("per_member"))
    refunds = (sa.select(t.member_id, sa.func.sum(-t.amount_cents).label("refunded"))
               .where(*in_range, t.amount_cents < 0).group_by(t.member_id).subquery("refunds"))
    first_day = days.alias("first_day")
    return (sa.select(per_member.c.member_id, per_member.c.first, per_member.c.last, per_member.c.n,
                      per_member.c.gross, first_day.c.spend, sa.func.coalesce(refunds.c.refunded, 0))
            .join(first_day, sa.and_(first_day.c.member_id == per_member.c.member_id,
                                     first_day.c.day == per_member.c.first))
            .outerjoin(refunds, refunds.c.member_id == per_member.c.member_id)
            .order_by(per_member.c.member_id))


def _days(values: list[Any]) -> np.ndarray:
    """Days since the epoch of ``date`` objects (PostgreSQL) or ``YYYY-MM-DD`` strings (SQLite)."""
    return (np.array([str(v) for v in values], dtype="datetime64[D]") - _EPOCH).astype(np.float64)


def summarise(rows: list[tuple[Any, ...]], as_of: datetime) -> Summaries:
    """Turn :func:`summary_query` rows into arrays: member_id, frequency, recency, T (days), monetary (cents)."""
    if not rows:
        empty = np.zeros(0)
        return dict.fromkeys(("member_id", "frequency", "recency", "T", "monetary"), empty)
    ids, first, last, n, gross, first_spend, refunded = (list(c) for c in zip(*rows, strict=True))
    start, end = _days(first), _days(last)
    # Whole days, as lifetimes does: customers with the same (x, t_x, T) fold into one likelihood term.
    as_of_days = float(np.floor((np.datetime64(as_utc(as_of).replace(tzinfo=None), "s") - _EPOCH)
                                .astype(np.float64) / 86400))
    frequency = np.asarray(n, dtype=np.float64) - 1
    gross_a, refunded_a = np.asarray(gross, dtype=np.float64), np.asarray(refunded, dtype=np.float64)
    net_share = np.clip(1 - refunded_a / gross_a, 0, 1)
    repeat_spend = gross_a - np.asarray(first_spend, dtype=np.float64)
    monetary = np.divide(repeat_spend * net_share, frequency, out=np.zeros_like(frequency), where=frequency > 0)
    return {"member_id": np.asarray(ids, dtype=np.int64), "frequency": frequency, "recency": end - start,
            "T": as_of_days - start, "monetary": monetary}


def load_summaries(engine: Engine, *, as_of: datetime, chunk_size: int = DEFAULT_CHUNK) -> Summaries:
    """Summaries of every member with a purchase before ``as_of``, read chunk by chunk."""
    as_of = as_utc(as_of)
    parts: list[Summaries] = []
    with engine.connect() as connection:
        for id_range in purchaser_ranges(engine, as_of=as_of, chunk_size=chunk_size):
            parts.append(summarise(fetch_rows(connection, summary_query(id_range, as_of)), as_of))
    if not parts:
        return summarise([], as_of)
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def fit_models(s: Summaries, *, penalizer: float = 0.0) -> tuple[BetaGeo, GammaGamma | None]:
    """BG/NBD on every purchaser; Gamma-Gamma on those with repeat days and positive spend (None if none)."""
    purchases = BetaGeo(penalizer=penalizer).fit(s["frequency"], s["recency"], s["T"])
    repeaters = (s["frequency"] > 0) & (s["monetary"] > 0)
    spend = GammaGamma(penalizer=penalizer).fit(s["frequency"], s["monetary"]) if repeaters.any() else None
    return purchases, spend


def predict(purchases: BetaGeo, spend: GammaGamma | None, s: Summaries) -> dict[str, np.ndarray]:
    """p_alive, expected purchases and CLV (cents) over :data:`HORIZON_DAYS` for the summaries ``s``."""
    x, t_x, age = s["frequency"], s["recency"], s["T"]
    expected = np.clip(np.nan_to_num(purchases.conditional_expected_purchases(HORIZON_DAYS, x, t_x, age)), 0, None)
    # No spend model, or one without a finite population mean (q <= 1): the member's own mean spend.
    modelled = spend is not None and spend.q_ > 1
    value = spend.conditional_expected_spend(x, s["monetary"]) if spend is not None and modelled else s["monetary"]
    clv = np.clip(np.nan_to_num(expected * value), 0, None)
    return {"p_alive": np.clip(purchases.p_alive(x, t_x, age), 0, 1), "expected": expected, "clv": clv}


def _upsert(connection: Connection, rows: list[dict[str, Any]]) -> None:
    insert = sqlite.insert if is_sqlite(connection.engine) else postgresql.insert
    stmt = insert(MEMBER_LIFETIME)
    keep = [c.name for c in MEMBER_LIFETIME.columns if c.name != "member_id"]
    connection.execute(stmt.on_conflict_do_update(index_elements=["member_id"],
                                                  set_={c: stmt.excluded[c] for c in keep}), rows)


def _rows(fit_id: int, s: Summaries, out: dict[str, np.ndarray], now: datetime) -> list[dict[str, Any]]:
    """Row dicts for ``executemany``; columns are converted as whole arrays, then zipped."""
    columns = {"member_id": s["member_id"].tolist(), "frequency": s["frequency"].astype(np.int64).tolist(),
               "recency_days": s["recency"].tolist(), "age_days": s["T"].tolist(),
               "monetary_cents": np.rint(s["monetary"]).astype(np.int64).tolist(),
               "p_alive": out["p_alive"].tolist(), "expected_purchases_12m": out["expected"].tolist(),
               "clv_12m_cents": np.rint(out["clv"]).astype(np.int64).tolist()}
    names = list(columns)
    return [{**dict(zip(names, values, strict=True)), "fit_id": fit_id, "computed_at": now}
            for values in zip(*columns.values(), strict=True)]


def fit_lifetime(engine: Engine, *, as_of: datetime | None = None, chunk_size: int = DEFAULT_CHUNK,
                 penalizer: float = 0.0) -> LifetimeFitResult:
    """Fit both models on every purchaser as of ``as_of`` (default now), store the fit and every member's row.

    One ``lifetime_fits`` row; ``member_lifetime`` upserted in chunks, then rows of members no longer in the
    fit deleted. ``ValueError`` when there are no purchasers at all.
    """
    started = time.perf_counter()
    as_of = as_utc(as_of or utcnow())
    s = load_summaries(engine, as_of=as_of, chunk_size=chunk_size)
    if len(s["member_id"]) == 0:
        raise ValueError(f"no member has a purchase before {as_of:%Y-%m-%d %H:%M} UTC: nothing to fit")
    purchases, spend = fit_models(s, penalizer=penalizer)
    out = predict(purchases, spend, s)
    repeat = int((s["frequency"] > 0).sum())
    params = {**summary_params(purchases, spend), "time_unit": "days", "horizon_days": HORIZON_DAYS,
              "repeat_members": repeat, "refunds": "pro rata on monetary", "discounted": False,
              "fit_seconds": round(time.perf_counter() - started, 3)}
    now = utcnow()
    with engine.begin() as connection:
        fit_id = int(connection.execute(sa.insert(LIFETIME_FITS).values(
            as_of=as_of, members=len(s["member_id"]), params=params, fitted_at=now)
            .returning(LIFETIME_FITS.c.id)).scalar_one())
        rows = _rows(fit_id, s, out, now)
        for start in range(0, len(rows), chunk_size):
            _upsert(connection, rows[start:start + chunk_size])
        deleted = connection.execute(sa.delete(MEMBER_LIFETIME).where(MEMBER_LIFETIME.c.fit_id != fit_id)).rowcount
    return LifetimeFitResult(fit_id, as_of, len(rows), repeat, params, int(deleted or 0),
                             round(time.perf_counter() - started, 3))


def latest_fit(engine: Engine) -> dict[str, Any] | None:
    """The most recent ``lifetime_fits`` row as a dict, or None before the first fit."""
    f = LIFETIME_FITS.c
    with engine.connect() as connection:
        row = connection.execute(sa.select(LIFETIME_FITS).order_by(f.id.desc()).limit(1)).mappings().first()
    return dict(row) if row else None


def member_lifetime(engine: Engine, member_id: int) -> dict[str, Any] | None:
    """A member's ``member_lifetime`` row as a dict, or None (no purchase, or no fit yet)."""
    with engine.connect() as connection:
        row = connection.execute(sa.select(MEMBER_LIFETIME).where(MEMBER_LIFETIME.c.member_id == member_id)
                                 ).mappings().first()
    return dict(row) if row else None


def value_bands(engine: Engine, bands: int = 5) -> list[dict[str, Any]]:
    """Members split into ``bands`` equal groups by CLV (highest first): count, mean p_alive, CLV and purchases."""
    ml = MEMBER_LIFETIME.c
    band = sa.func.ntile(bands).over(order_by=ml.clv_12m_cents.desc()).label("band")
    ranked = sa.select(band, ml.p_alive, ml.clv_12m_cents, ml.expected_purchases_12m).subquery()
    query = (sa.select(ranked.c.band, sa.func.count(), sa.func.avg(ranked.c.p_alive),
                       sa.func.avg(ranked.c.clv_12m_cents), sa.func.avg(ranked.c.expected_purchases_12m),
                       sa.func.sum(ranked.c.clv_12m_cents))
             .group_by(ranked.c.band).order_by(ranked.c.band))
    keys = ("band", "members", "mean_p_alive", "mean_clv_cents", "mean_purchases", "total_clv_cents")
    with engine.connect() as connection:
        return [dict(zip(keys, row, strict=True)) for row in fetch_rows(connection, query)]

