"""The statistics of campaign measurement: lift of a treated arm over the holdout, pure numpy/scipy.

* Conversion lift: difference of two proportions with Newcombe's hybrid score interval (method 10 of
  Newcombe 1998, "Interval estimation for the difference between independent proportions"). It
  combines the two Wilson score intervals, so it stays inside [-1, 1], is defined when an arm has no
  or only conversions, and keeps close to 95 % coverage at small counts, where the Wald interval is
  too narrow (it collapses to a point at 0/n) and continuity-corrected Wald is too wide. The
  p-value is the usual pooled two-proportion z-test (the score test of equal proportions).
* Revenue lift per member: Welch's difference of means, with the Welch-Satterthwaite degrees of
  freedom; the arms' revenue variances differ (offers change basket sizes), so no pooling.
  Inputs are sufficient statistics (count, sum, sum of squares), which SQL computes exactly in
  integers, so nothing is fetched member by member.

Every function returns finite numbers or None: never NaN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from loyalty.measurement_types import Estimate

# The normal quantile and tail need no scipy (importing scipy.stats costs ~0.6 s, and the web app
# imports this module); only Welch's t-distribution does, imported where it is used.
Z95 = 1.959963984540054  # the standard normal's 0.975 quantile


@dataclass(frozen=True)
class Moments:
    """Sufficient statistics of one arm's values (e.g. revenue in cents): count, sum, sum of squares."""

    n: int
    total: int | float
    squares: int | float

    @property
    def mean(self) -> float:
        return self.total / self.n if self.n else 0.0

    @property
    def variance(self) -> float:
        """Sample variance (n - 1 denominator); 0 below two values.

        With integer inputs the numerator ``n Σx² - (Σx)²`` is computed exactly in Python integers, so
        there is no cancellation however large the mean is against the spread.
        """
        if self.n < 2:
            return 0.0
        numerator = self.n * self.squares - self.total * self.total
        return max(float(numerator) / (self.n * (self.n - 1)), 0.0)

    def __add__(self, other: Moments) -> Moments:
        return Moments(self.n + other.n, self.total + other.total, self.squares + other.squares)


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``successes / n`` (``n`` > 0)."""
    if n <= 0:
        raise ValueError("wilson_interval needs at least one trial")
    p = successes / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    denominator = 1 + z * z / n
    return max((centre - spread) / denominator, 0.0), min((centre + spread) / denominator, 1.0)


def newcombe_interval(x1: int, n1: int, x0: int, n0: int, z: float = Z95) -> tuple[float, float]:
    """Newcombe's hybrid score interval for ``x1/n1 - x0/n0`` (both ``n`` > 0)."""
    p1, p0 = x1 / n1, x0 / n0
    l1, u1 = wilson_interval(x1, n1, z)
    l0, u0 = wilson_interval(x0, n0, z)
    d = p1 - p0
    low = d - math.sqrt((p1 - l1) ** 2 + (u0 - p0) ** 2)
    high = d + math.sqrt((u1 - p1) ** 2 + (p0 - l0) ** 2)
    return max(low, -1.0), min(high, 1.0)


def pooled_z_p_value(x1: int, n1: int, x0: int, n0: int) -> float:
    """Two-sided p-value of the pooled two-proportion z-test; 1.0 when nobody or everybody converted."""
    pooled = (x1 + x0) / (n1 + n0)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n0))
    if se == 0:  # both arms all 0 or all 1: the difference is exactly zero
        return 1.0
    z = (x1 / n1 - x0 / n0) / se
    return math.erfc(abs(z) / math.sqrt(2))  # two-sided normal tail


def proportion_lift(x1: int, n1: int, x0: int, n0: int) -> Estimate | None:
    """Treated ``x1/n1`` minus holdout ``x0/n0``, with Newcombe's 95 % CI; None if an arm is empty."""
    if n1 <= 0 or n0 <= 0:
        return None
    if not (0 <= x1 <= n1 and 0 <= x0 <= n0):
        raise ValueError(f"counts out of range: {x1}/{n1}, {x0}/{n0}")
    low, high = newcombe_interval(x1, n1, x0, n0)
    return Estimate(value=x1 / n1 - x0 / n0, low=low, high=high, p_value=pooled_z_p_value(x1, n1, x0, n0))


def welch_lift(treated: Moments, holdout: Moments, confidence: float = 0.95) -> Estimate | None:
    """Difference of means (treated - holdout) with Welch's CI and two-sided p-value.

    None when either arm has fewer than two values, or both have no spread at all (the standard error
    is zero and no interval can be given honestly).
    """
    from scipy import stats

    if treated.n < 2 or holdout.n < 2:
        return None
    v1, v0 = treated.variance / treated.n, holdout.variance / holdout.n
    se2 = v1 + v0
    if se2 <= 0:
        return None
    df = se2 * se2 / (v1 * v1 / (treated.n - 1) + v0 * v0 / (holdout.n - 1))
    se = math.sqrt(se2)
    diff = treated.mean - holdout.mean
    margin = float(stats.t.ppf(0.5 + confidence / 2, df)) * se
    p_value = float(2 * stats.t.sf(abs(diff) / se, df))
    return Estimate(value=diff, low=diff - margin, high=diff + margin, p_value=p_value)


def roi(incremental_conversions: float, margin_per_conversion_cents: float, cost_cents: float) -> float | None:
    """(incremental margin - cost) / cost; None when nothing was spent (ROI is undefined)."""
    if cost_cents <= 0:
        return None
    return (incremental_conversions * margin_per_conversion_cents - cost_cents) / cost_cents
