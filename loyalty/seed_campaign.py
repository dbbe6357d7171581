"""The seeded past campaign: a randomised experiment whose true effects are known.

``spring_reactivation`` ran once, about 90 days before the seed's ``as_of``. Its audience
is every member who had opted in to e-mail and joined before the slot. A seeded random 20 %
are held out; the rest are dealt evenly over four offers. During the 14-day attribution
window a member converts (makes one purchase) with probability ``p_base + tau[arm]``:

* ``p_base`` comes from the member's latent purchase rate in the window (lapsed members,
  whose rate is zero, keep a 2 % win-back chance), and lies in [0.02, 0.70];
* ``tau`` is :func:`true_effects` of the member's features at the slot, heterogeneous by
  design, so a recommender fitted on this campaign can be checked against the truth.

Features are computed from the member's history before the slot exactly as documented in
:data:`FEATURES`, so code that recomputes them from the database gets the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import numpy as np

from loyalty.seed_history import SEASONALITY, US_PER_MONTH, Purchases, active_span
from loyalty.seed_io import US_PER_DAY, US_PER_SECOND, from_us, to_us
from loyalty.seed_population import Population

CAMPAIGN_NAME = "spring_reactivation"
OFFER_CODES = ("double_points", "ten_percent_off", "bonus_500", "free_coffee")
HOLDOUT_SHARE = 0.2
ATTRIBUTION_DAYS = 14
DAYS_BEFORE_AS_OF = 90
SEND_HOUR_UTC = 14  # 10:00 in Toronto

#: Features of a member at the slot, all from their history strictly before it.
FEATURES = {
    "recency_days": "days since the last purchase (since joining if they never bought)",
    "frequency_12m": "purchases in the 365 days before the slot",
    "monetary_12m": "amount spent in those purchases, in cents",
    "grocery_share": "share of monetary_12m spent in grocery (0 without purchases)",
    "tier_progress": "tier qualifying value at the slot / threshold of the tier above the one held then "
                     "(NaN at the top tier)",
}


def _ramp(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return np.clip((x - lo) / (hi - lo), 0.0, 1.0)


def true_effects(features: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The true conversion lift of each offer for each member, in probability (0.05 = +5 points).

    ``features`` holds the arrays named in :data:`FEATURES`. By design:

    * ``ten_percent_off`` works on *lapsing high spenders* (last purchase about 1-6 months
      ago, high 12-month spend): up to +23.6 pp; -0.4 pp for recent buyers;
    * ``double_points`` works on *frequent buyers close to the next tier* (30-80 % of the
      way there): up to +27 pp; -1 pp for everyone else;
    * ``bonus_500`` lifts *infrequent buyers* (+11.2 pp with no purchase in a year, less when
      lapsed for over a year) and turns slightly negative (-0.8 pp) for frequent ones;
    * ``free_coffee`` lifts *grocery-heavy* members (up to +12.5 pp) and costs -1.5 pp on
      the others.

    Averaged over the seeded audience each offer lifts conversion by 3-4 pp. For recent,
    frequent, non-grocery members far from a tier, every offer is (slightly) worse than none.
    Every lift lies in [-0.015, 0.27], so ``p_base + tau`` stays a probability.
    """
    recency = np.maximum(np.asarray(features["recency_days"], dtype=float), 1.0)
    frequency = np.asarray(features["frequency_12m"], dtype=float)
    monetary = np.asarray(features["monetary_12m"], dtype=float)
    progress = np.nan_to_num(np.asarray(features["tier_progress"], dtype=float), nan=0.0)
    high_spender = _ramp(np.log10(1 + monetary / 100), 1.7, 3.3)  # 50 $ a year -> 0, 2,000 $ -> 1
    lapsing = np.exp(-0.5 * (np.log(recency / 75) / 0.7) ** 2)  # peaks 75 days after the last purchase
    frequent = np.sqrt(_ramp(frequency, 0.0, 20.0))
    near_tier = _ramp(progress, 0.3, 0.8)
    rare = np.exp(-frequency / 4)
    lapsed = recency > 365
    return {
        "double_points": -0.01 + 0.28 * near_tier * frequent,
        "ten_percent_off": -0.004 + 0.24 * lapsing * high_spender,
        "bonus_500": -0.008 + 0.12 * rare * (1 - 0.6 * lapsed),
        "free_coffee": -0.015 + 0.14 * _ramp(np.asarray(features["grocery_share"], dtype=float), 0.25, 0.65),
    }


def true_spend_lifts(features: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """How each offer shifts the converting purchase's amount, in cents (before the 1.50 $ floor).

    Relative to the member's typical basket (``monetary_12m / frequency_12m``, 40 $ without
    purchases): 10 % off grows baskets by a quarter; double points grows them, most near a
    tier; the 500-point bonus pulls small baskets up to its 25 $ minimum; a free coffee brings
    members in for smaller baskets.
    """
    frequency = np.asarray(features["frequency_12m"], dtype=float)
    typical = np.where(frequency > 0, np.asarray(features["monetary_12m"], dtype=float) / np.maximum(frequency, 1),
                       4000.0)
    near_tier = _ramp(np.nan_to_num(np.asarray(features["tier_progress"], dtype=float), nan=0.0), 0.3, 0.8)
    lifts = {
        "double_points": 0.15 * typical * (1 + 2 * near_tier),
        "ten_percent_off": 0.25 * typical,
        "bonus_500": np.clip(2500 - 0.6 * typical, 0, 2500),
        "free_coffee": -0.3 * typical,
    }
    return {code: np.rint(lift).astype(np.int64) for code, lift in lifts.items()}


def campaign_slot_us(as_of_us: int) -> int:
    """When the campaign was sent: 14:00 UTC on the day ninety days before ``as_of``."""
    day = from_us(as_of_us) - timedelta(days=DAYS_BEFORE_AS_OF)
    return to_us(day.replace(hour=SEND_HOUR_UTC, minute=0, second=0, microsecond=0))


class FeatureWindow:
    """Accumulates each member's history before the slot into :data:`FEATURES`."""

    def __init__(self, size: int, slot_us: int, grocery: int | None) -> None:
        self.slot_us = slot_us
        self.since_us = slot_us - 365 * US_PER_DAY
        self.grocery = grocery
        self.last_us = np.full(size, -1, dtype=np.int64)
        self.frequency = np.zeros(size, dtype=np.int64)
        self.monetary = np.zeros(size, dtype=np.int64)
        self.grocery_spend = np.zeros(size, dtype=np.int64)

    def add(self, purchases: Purchases) -> None:
        """Count purchases made before the slot."""
        before = purchases.at < self.slot_us
        np.maximum.at(self.last_us, purchases.member[before], purchases.at[before])
        recent = before & (purchases.at >= self.since_us)
        member = purchases.member[recent]
        np.add.at(self.frequency, member, 1)
        np.add.at(self.monetary, member, purchases.amount[recent])
        if self.grocery is not None:
            grocery = recent & (purchases.category == self.grocery)
            np.add.at(self.grocery_spend, purchases.member[grocery], purchases.amount[grocery])

    def features(self, members: np.ndarray, joined_us: np.ndarray, thresholds: list[int], tier_rank: np.ndarray,
                 qualifying: np.ndarray) -> dict[str, np.ndarray]:
        """:data:`FEATURES` for ``members`` (population indexes) at the slot, given tiers and qualifying values then."""
        last = np.where(self.last_us[members] >= 0, self.last_us[members], joined_us[members])
        monetary = self.monetary[members]
        rank = tier_rank[members]
        upper = np.array([*thresholds[1:], 0], dtype=float)[rank]
        progress = np.where(upper > 0, qualifying[members] / np.where(upper > 0, upper, 1), np.nan)
        return {
            "recency_days": (self.slot_us - last) / US_PER_DAY,
            "frequency_12m": self.frequency[members].astype(np.int64),
            "monetary_12m": monetary,
            "grocery_share": np.where(monetary > 0, self.grocery_spend[members] / np.maximum(monetary, 1), 0.0),
            "tier_progress": progress,
        }


@dataclass
class CampaignPlan:
    """Who was in the experiment, which arm they got, their truth, and whether they converted."""

    slot_us: int
    members: np.ndarray  # population indexes, ascending
    arm: np.ndarray  # -1 for the holdout, else an index into OFFER_CODES
    features: dict[str, np.ndarray]
    p_base: np.ndarray
    tau: dict[str, np.ndarray]  # realised conversion lift per offer
    spend_lift: dict[str, np.ndarray]
    converted: np.ndarray

    @property
    def treated(self) -> np.ndarray:
        """Rows (into ``members``) that were sent an offer."""
        return np.flatnonzero(self.arm >= 0)

    def arm_names(self) -> list[str]:
        """Each member's arm as stored: 'holdout' or the offer code."""
        names = np.array(["holdout", *OFFER_CODES], dtype=object)
        return names[self.arm + 1].tolist()


def plan_campaign(rng: np.random.Generator, pop: Population, window: FeatureWindow, email_opt_in_us: np.ndarray,
                  thresholds: list[int], tier_rank: np.ndarray, qualifying: np.ndarray) -> CampaignPlan:
    """Choose the audience, randomise the arms and draw every outcome."""
    slot = window.slot_us
    members = np.flatnonzero((email_opt_in_us >= 0) & (email_opt_in_us < slot) & (pop.joined_us < slot))
    features = window.features(members, pop.joined_us, thresholds, tier_rank, qualifying)
    end = slot + ATTRIBUTION_DAYS * US_PER_DAY
    lo, hi = active_span(pop, slot, end)
    expected = pop.rate * SEASONALITY[from_us(slot).month - 1] * (hi - lo) / US_PER_MONTH
    p_base = 0.02 + 0.68 * (1 - np.exp(-expected[members]))
    arm = np.empty(members.size, dtype=np.int64)
    order = rng.permutation(members.size)
    holdout = round(HOLDOUT_SHARE * members.size)
    arm[order[:holdout]] = -1
    arm[order[holdout:]] = np.arange(members.size - holdout) % len(OFFER_CODES)
    effects = true_effects(features)
    tau = {code: np.clip(p_base + lift, 0, 1) - p_base for code, lift in effects.items()}
    lift_of_arm = np.zeros(members.size)
    for index, code in enumerate(OFFER_CODES):
        lift_of_arm[arm == index] = tau[code][arm == index]
    converted = rng.random(members.size) < p_base + lift_of_arm
    return CampaignPlan(slot, members, arm, features, p_base, tau, true_spend_lifts(features), converted)


def conversion_times(rng: np.random.Generator, plan: CampaignPlan) -> np.ndarray:
    """When converters bought: mostly in the first days after the e-mail, always in the window."""
    rows = np.flatnonzero(plan.converted)
    delay = np.clip(rng.exponential(3.0, rows.size) * US_PER_DAY, US_PER_SECOND,  # never at a period boundary
                    ATTRIBUTION_DAYS * US_PER_DAY - US_PER_SECOND)
    moment = plan.slot_us + delay.astype(np.int64)
    return moment - moment % US_PER_SECOND


def spend_shift(plan: CampaignPlan) -> np.ndarray:
    """Per converter (in ``members`` order), the spend lift of the offer they received (0 in the holdout)."""
    rows = np.flatnonzero(plan.converted)
    shift = np.zeros(rows.size, dtype=np.int64)
    for index, code in enumerate(OFFER_CODES):
        got = plan.arm[rows] == index
        shift[got] = plan.spend_lift[code][rows[got]]
    return shift
