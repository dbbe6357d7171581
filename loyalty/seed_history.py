"""Purchase history for the seeder, one period (about a month) at a time.

Each period draws every member's purchases at once (Poisson counts from the latent rate,
scaled by seasonality and by the part of the period the member was a buying member), prices
them in points with the programme's rules at each member's current tier, adds redemptions
that never exceed the balance the member had when the period began, and writes the lot with
:class:`loyalty.seed_io.BulkWriter`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from itertools import pairwise
from typing import Any

import numpy as np

from loyalty.programme import Programme
from loyalty.seed_io import US_PER_DAY, US_PER_SECOND, BulkWriter, from_us, to_us
from loyalty.seed_population import CATEGORY_BASKET, CHANNEL_MIX, LOCALES, Population
from loyalty.tiers import DAYS_PER_MONTH

#: Purchases by calendar month relative to the average: a December peak, a summer bump.
SEASONALITY = np.array([0.80, 0.85, 0.95, 0.95, 1.00, 1.05, 1.15, 1.15, 0.95, 1.00, 1.15, 1.55])
SEASONALITY = SEASONALITY / SEASONALITY.mean()
US_PER_MONTH = DAYS_PER_MONTH * US_PER_DAY
REWARD_BLOCK = 500  # points per reward; members redeem whole rewards
MIN_BASKET_CENTS = 150


@dataclass(frozen=True)
class Period:
    """``[start_us, end_us)``; at a ``review`` (1 January) tiers may also move down."""

    index: int
    start_us: int
    end_us: int
    review: bool

    @property
    def month(self) -> int:
        """Calendar month (1-12) the period starts in, for seasonality."""
        return from_us(self.start_us).month


def build_periods(start_us: int, end_us: int, whole: tuple[int, int]) -> list[Period]:
    """Calendar months between ``start_us`` and ``end_us``, with ``whole`` as one period of its own.

    ``whole`` (the campaign's attribution window) is never split, even across a month end.
    A period containing or ending at 1 January 00:00 is a review (its end is when tiers may
    also move down); ``end_us`` never is, because the seeder's final evaluation covers it.
    """
    month_starts, month = [], from_us(start_us).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    while to_us(month) < end_us:
        month = datetime(month.year + month.month // 12, month.month % 12 + 1, 1, tzinfo=UTC)
        month_starts.append(to_us(month))
    inside = [b for b in month_starts if start_us < b < end_us and not whole[0] < b < whole[1]]
    edges = sorted({start_us, end_us, *inside, *(b for b in whole if start_us < b < end_us)})
    new_years = [b for b in month_starts if from_us(b).month == 1]
    return [Period(i, lo, hi, review=hi != end_us and any(lo < y <= hi for y in new_years))
            for i, (lo, hi) in enumerate(pairwise(edges))]


@dataclass
class Purchases:
    """Purchases as parallel arrays (member is an index into the population)."""

    member: np.ndarray
    at: np.ndarray
    amount: np.ndarray
    category: np.ndarray
    channel: np.ndarray

    def __len__(self) -> int:
        return int(self.member.size)

    def take(self, rows: np.ndarray) -> Purchases:
        """The purchases selected by a boolean mask or index array."""
        return Purchases(*(getattr(self, f.name)[rows] for f in fields(self)))

    def plus(self, other: Purchases) -> Purchases:
        """These purchases followed by ``other``."""
        return Purchases(*(np.concatenate([getattr(self, f.name), getattr(other, f.name)]) for f in fields(self)))


def active_span(pop: Population, start_us: int, end_us: int) -> tuple[np.ndarray, np.ndarray]:
    """Per member, the part of ``[start, end)`` between joining and churning (empty when none)."""
    lo = np.maximum(pop.joined_us, start_us)
    hi = np.minimum(pop.churn_us, end_us)
    return lo, np.maximum(hi, lo)


def draw_purchases(rng: np.random.Generator, pop: Population, period: Period, categories: list[str]) -> Purchases:
    """Every member's purchases in ``period``, vectorised over the population."""
    lo, hi = active_span(pop, period.start_us, period.end_us)
    expected = pop.rate * SEASONALITY[period.month - 1] * (hi - lo) / US_PER_MONTH
    member = np.repeat(np.arange(pop.size), rng.poisson(expected))
    at = lo[member] + (rng.random(member.size) * (hi - lo)[member]).astype(np.int64)
    at = _shop_hours(rng, at, pop.utc_offset_us[member], lo[member], hi[member])
    category = draw_categories(rng, pop.preference[member])
    drawn = Purchases(member, at, draw_baskets(rng, pop, member, category, categories), category,
                      draw_channels(rng, pop, member))
    # Strictly inside the period: a purchase at a boundary would count in the evaluation ending there.
    return drawn.take((at > lo[member]) & (at < hi[member]))


def _shop_hours(rng: np.random.Generator, at: np.ndarray, offset: np.ndarray, lo: np.ndarray,
                hi: np.ndarray) -> np.ndarray:
    """Move each purchase to a plausible local time of day (8:00-22:00, busiest mid-afternoon)."""
    local_day = (at + offset) // US_PER_DAY
    hours = np.clip(rng.normal(14.5, 3.2, at.size), 8.0, 21.95)
    moment = local_day * US_PER_DAY + (hours * 3600).astype(np.int64) * US_PER_SECOND - offset
    moment = np.clip(moment, lo + US_PER_SECOND, hi - US_PER_SECOND)
    return moment - moment % US_PER_SECOND


def draw_categories(rng: np.random.Generator, weights: np.ndarray) -> np.ndarray:
    """One draw per row of ``weights`` (rows sum to one)."""
    if weights.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    cumulative = np.cumsum(weights, axis=1)
    draws = np.asarray(rng.random(weights.shape[0]))
    picks = (draws[:, None] > cumulative).sum(axis=1)
    return np.minimum(picks, weights.shape[1] - 1)


def draw_baskets(rng: np.random.Generator, pop: Population, member: np.ndarray, category: np.ndarray,
                 categories: list[str], shift: np.ndarray | None = None) -> np.ndarray:
    """Amounts in cents: the member's typical basket, the category's size, lognormal noise."""
    factor = np.array([CATEGORY_BASKET.get(c, 1.0) for c in categories])[category]
    noise = np.exp(rng.normal(-0.45**2 / 2, 0.45, member.size))
    amount = pop.basket[member] * factor * noise
    if shift is not None:
        amount = amount + shift
    return np.maximum(np.rint(amount), MIN_BASKET_CENTS).astype(np.int64)


def draw_channels(rng: np.random.Generator, pop: Population, member: np.ndarray) -> np.ndarray:
    """Store, online or app, by the member's locale."""
    mix = np.array([CHANNEL_MIX[locale] for locale in LOCALES])
    return draw_categories(rng, mix[pop.locale[member]])


def earn_points(programme: Programme, categories: list[str], amount: np.ndarray, category: np.ndarray,
                tier_rank: np.ndarray) -> np.ndarray:
    """:meth:`Programme.points_for`, vectorised: the same float operations in the same order."""
    by_category = np.array([programme.earn.category_multipliers.get(c, 1.0) for c in categories])
    by_tier = np.array([tier.earn_multiplier for tier in programme.tiers.tiers])
    raw = amount / 100 * programme.earn.points_per_unit * by_category[category] * by_tier[tier_rank]
    return np.where(amount > 0, np.floor(raw), 0).astype(np.int64)


@dataclass
class Entries:
    """Ledger lines as parallel arrays; ``key`` is the idempotency key, ``txn`` 0 for none."""

    member: np.ndarray
    at: np.ndarray
    kind: np.ndarray
    points: np.ndarray
    reason: np.ndarray
    source: np.ndarray
    key: np.ndarray
    txn: np.ndarray

    @classmethod
    def of(cls, member: np.ndarray, at: np.ndarray, points: np.ndarray, *, kind: str, reason: Any,
           source: str, key: Any, txn: np.ndarray | None = None) -> Entries:
        """Entries of one kind; ``reason`` and ``key`` are a string or one string per entry."""
        n = member.size

        def column(value: Any) -> np.ndarray:
            return np.full(n, value, dtype=object) if isinstance(value, str) else np.asarray(value, dtype=object)

        return cls(member, at, np.full(n, kind, dtype=object), points, column(reason), np.full(n, source, dtype=object),
                   column(key), np.zeros(n, dtype=np.int64) if txn is None else txn)

    @classmethod
    def join(cls, parts: Sequence[Entries]) -> Entries:
        """All ``parts`` in one batch."""
        return cls(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(cls)))


def draw_redemptions(rng: np.random.Generator, pop: Population, period: Period, balance: np.ndarray,
                     first_member_id: int) -> Entries:
    """Rewards redeemed in ``period``, each at most the balance the member started it with.

    Within a period a balance only grows (purchases), so a debit no larger than the opening
    balance never exceeds the balance at the moment it is made.
    """
    lo, hi = active_span(pop, period.start_us, period.end_us)
    share = (hi - lo) / US_PER_MONTH
    wants = rng.random(pop.size) < pop.redeem_propensity * np.minimum(share, 1.0)
    blocks = np.minimum(balance // REWARD_BLOCK, rng.geometric(0.55, pop.size))
    at = lo + (rng.random(pop.size) * (hi - lo)).astype(np.int64)
    member = np.flatnonzero(wants & (blocks > 0) & (hi > lo))
    keys = [f"redeem:{m + first_member_id}:{period.index}" for m in member.tolist()]
    return Entries.of(member, at[member] - at[member] % US_PER_SECOND, -REWARD_BLOCK * blocks[member],
                      kind="redeem", reason="reward redemption", source="rewards", key=keys)


def write_purchases(writer: BulkWriter, purchases: Purchases, first_member_id: int, categories: list[str],
                    currency: str) -> np.ndarray:
    """Insert ``purchases`` as transactions; returns their ids (member order, for index locality)."""
    order = np.lexsort((purchases.at, purchases.member))
    first = writer.next_id("transactions")
    ids = np.empty(len(purchases), dtype=np.int64)
    ids[order] = np.arange(first, first + len(purchases))
    rows = purchases.take(order)
    names = np.array(categories, dtype=object)
    writer.insert("transactions", {
        "id": ids[order], "external_id": [f"T{i:010d}" for i in ids[order].tolist()],
        "member_id": rows.member + first_member_id, "amount_cents": rows.amount,
        "currency": [currency] * len(rows), "category": names[rows.category].tolist(),
        "channel": np.array(["store", "online", "app"], dtype=object)[rows.channel].tolist(),
        "occurred_at": writer.times(rows.at),
    })
    writer.sync_sequence("transactions")
    return ids


def purchase_entries(purchases: Purchases, points: np.ndarray, txn_ids: np.ndarray, categories: list[str]) -> Entries:
    """One ``earn`` entry per purchase that earned points, keyed like :mod:`loyalty.ledger`."""
    earned = np.flatnonzero(points > 0)
    reasons = np.array([f"purchase {c}" for c in categories], dtype=object)[purchases.category[earned]]
    keys = [f"txn:T{i:010d}" for i in txn_ids[earned].tolist()]
    return Entries.of(purchases.member[earned], purchases.at[earned], points[earned], kind="earn",
                      reason=reasons, source="transaction", key=keys, txn=txn_ids[earned])


def write_entries(writer: BulkWriter, entries: Entries, first_member_id: int) -> int:
    """Insert ledger entries (the caller moves the balances); returns how many."""
    if entries.member.size == 0:
        return 0
    order = np.lexsort((entries.at, entries.member))
    rows = Entries(*(getattr(entries, f.name)[order] for f in fields(entries)))
    first = writer.next_id("points_entries")
    writer.insert("points_entries", {
        "id": np.arange(first, first + rows.member.size), "member_id": rows.member + first_member_id,
        "kind": rows.kind.tolist(), "points": rows.points, "reason": rows.reason.tolist(),
        "source": rows.source.tolist(), "idempotency_key": rows.key.tolist(),
        "transaction_id": [t or None for t in rows.txn.tolist()], "created_at": writer.times(rows.at),
    })
    writer.sync_sequence("points_entries")
    return int(rows.member.size)
