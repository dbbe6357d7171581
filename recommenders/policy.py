"""The offer policy: per member, the offer with the highest expected incremental value, or none.

Pure numpy. Eligibility (tier, consent, cooldown) is a boolean mask built here from plain
arrays and applied outside the estimator, so a model never needs to know the rules. Decisions
are arm indexes into the offer list, with :data:`NO_OFFER` (-1) for "send nothing".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

NO_OFFER = -1


@dataclass(frozen=True)
class OfferBook:
    """The offers a campaign may choose from, as arrays (built from ``config/offers.yaml``)."""

    codes: tuple[str, ...]
    cost_cents: np.ndarray  # cost of one redemption
    min_tier_rank: np.ndarray  # 0 = open to every tier
    cooldown_days: np.ndarray

    @classmethod
    def from_specs(cls, specs: Sequence[Any], tier_codes: Sequence[str], codes: Sequence[str]) -> OfferBook:
        """From offer specs (objects with code, cost_cents, min_tier, cooldown_days), in ``codes`` order."""
        by_code = {s.code: s for s in specs}
        missing = [c for c in codes if c not in by_code]
        if missing:
            raise ValueError(f"offers not configured: {missing}")
        rank = {t: i for i, t in enumerate(tier_codes)}
        chosen = [by_code[c] for c in codes]
        return cls(tuple(codes), np.array([s.cost_cents for s in chosen], dtype=float),
                   np.array([rank[s.min_tier] if s.min_tier else 0 for s in chosen], dtype=np.int64),
                   np.array([s.cooldown_days for s in chosen], dtype=float))


def eligibility(book: OfferBook, *, tier_rank: np.ndarray, consent: np.ndarray,
                days_since_offer: np.ndarray | None = None) -> np.ndarray:
    """(n, k) mask: tier high enough, consent to be contacted, and each offer's cooldown elapsed.

    ``days_since_offer`` is (n, k) days since the member last received each offer (inf or NaN
    for never).
    """
    mask = (np.asarray(tier_rank)[:, None] >= book.min_tier_rank[None, :]) & np.asarray(consent, bool)[:, None]
    if days_since_offer is not None:
        since = np.nan_to_num(np.asarray(days_since_offer, dtype=float), nan=np.inf)
        mask &= since >= book.cooldown_days[None, :]
    return mask


def expected_value(conversion_lift: np.ndarray, *, margin_per_conversion: float, cost_cents: np.ndarray,
                   redeem_probability: np.ndarray | None = None, spend_lift: np.ndarray | None = None,
                   margin_rate: float = 0.0) -> np.ndarray:
    """(n, k) expected incremental value in cents: lift * margin (+ spend lift * margin rate) - expected cost.

    An offer costs ``cost_cents`` per redemption; with ``redeem_probability`` (P(convert | offer))
    the cost is weighted by it, otherwise every send is charged in full (the cautious bound).
    """
    value = conversion_lift * margin_per_conversion
    if spend_lift is not None:
        value = value + spend_lift * margin_rate
    redeem = 1.0 if redeem_probability is None else redeem_probability
    return np.asarray(value - redeem * cost_cents[None, :], dtype=float)


def choose_offers(value: np.ndarray, eligible: np.ndarray, *, cost: np.ndarray | None = None,
                  budget: float | None = None) -> np.ndarray:
    """Per member, the eligible offer of highest positive value, else :data:`NO_OFFER`.

    With ``budget``, members are ranked by the value of their best offer and served in that
    order while the cumulative ``cost`` (n, k: the expected cost of each choice) fits.
    """
    masked = np.where(eligible, value, -np.inf)
    best = np.argmax(masked, axis=1)
    best_value = masked[np.arange(masked.shape[0]), best] if masked.size else np.zeros(0)
    decision = np.where(best_value > 0, best, NO_OFFER)
    if budget is None:
        return decision
    if cost is None:
        raise ValueError("a budget needs the cost of each choice")
    return _within_budget(decision, best_value, cost, budget)


def _within_budget(decision: np.ndarray, best_value: np.ndarray, cost: np.ndarray, budget: float) -> np.ndarray:
    """Keep the most valuable decisions whose cumulative cost fits the budget; drop the rest."""
    chosen = np.flatnonzero(decision >= 0)
    order = chosen[np.argsort(-best_value[chosen], kind="stable")]
    spent = np.cumsum(cost[order, decision[order]])
    out = np.full(decision.shape, NO_OFFER)
    keep = order[spent <= budget]
    out[keep] = decision[keep]
    return out


def realised_value(decision: np.ndarray, true_value: np.ndarray) -> float:
    """Total true value of ``decision`` given the true (n, k) value of each offer (0 for no offer)."""
    rows = np.flatnonzero(decision >= 0)
    return float(true_value[rows, decision[rows]].sum())
