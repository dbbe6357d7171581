"""The lift statistics against published hand-worked values, and their edge cases (never NaN)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from loyalty.measurement_stats import (
    Moments,
    newcombe_interval,
    pooled_z_p_value,
    proportion_lift,
    roi,
    welch_lift,
    wilson_interval,
)

# Newcombe (1998), "Two-sided confidence intervals for the single proportion", score method (3).
WILSON = [((81, 263), (0.2553, 0.3662)), ((15, 148), (0.0624, 0.1605)), ((0, 20), (0.0, 0.1611)),
          ((1, 29), (0.0061, 0.1718))]
# Newcombe (1998), "Interval estimation for the difference between independent proportions", Table II,
# method 10 (hybrid score): examples (a)-(h).
NEWCOMBE = [((56, 70, 48, 80), (0.0524, 0.3339)), ((9, 10, 3, 10), (0.1705, 0.8090)),
            ((6, 7, 2, 7), (0.0582, 0.8062)), ((5, 56, 0, 29), (-0.0381, 0.1926)),
            ((0, 10, 0, 20), (-0.1611, 0.2775)), ((0, 10, 0, 10), (-0.2775, 0.2775)),
            ((10, 10, 0, 20), (0.6791, 1.0)), ((10, 10, 0, 10), (0.6075, 1.0))]
# Welch's t-test, worked example 1 on Wikipedia: t = -2.46, df = 24.9, p = 0.021.
A1 = [27.5, 21.0, 19.0, 23.6, 17.0, 17.9, 16.9, 20.1, 21.9, 22.6, 23.1, 19.6, 19.0, 21.7, 21.4]
A2 = [27.1, 22.0, 20.8, 23.4, 23.4, 23.5, 25.8, 22.0, 24.8, 20.2, 21.9, 22.1, 22.9, 20.5, 24.4]


def moments(values: list[float] | list[int]) -> Moments:
    return Moments(len(values), sum(values), sum(v * v for v in values))


@pytest.mark.parametrize(("counts", "expected"), WILSON)
def test_wilson_matches_newcombe(counts: tuple[int, int], expected: tuple[float, float]) -> None:
    assert wilson_interval(*counts) == pytest.approx(expected, abs=5e-5)


@pytest.mark.parametrize(("counts", "expected"), NEWCOMBE)
def test_newcombe_hybrid_score_matches_table(counts: tuple[int, int, int, int],
                                             expected: tuple[float, float]) -> None:
    assert newcombe_interval(*counts) == pytest.approx(expected, abs=5e-5)
    lift = proportion_lift(*counts)
    assert lift is not None
    assert (lift.low, lift.high) == pytest.approx(expected, abs=5e-5)
    assert lift.value == pytest.approx(counts[0] / counts[1] - counts[2] / counts[3])
    assert lift.low <= lift.value <= lift.high


def test_pooled_z_test_by_hand() -> None:
    # 56/70 vs 48/80: pooled 104/150, z = 0.175 / sqrt(p(1-p)(1/70 + 1/80)) = 2.6502, p = erfc(z / sqrt 2).
    pooled = 104 / 150
    z = (56 / 70 - 48 / 80) / math.sqrt(pooled * (1 - pooled) * (1 / 70 + 1 / 80))
    assert z == pytest.approx(2.6502, abs=1e-4)
    assert pooled_z_p_value(56, 70, 48, 80) == pytest.approx(math.erfc(z / math.sqrt(2)), rel=1e-9)
    assert pooled_z_p_value(48, 80, 56, 70) == pooled_z_p_value(56, 70, 48, 80)  # two-sided
    assert pooled_z_p_value(30, 100, 30, 100) == pytest.approx(1.0)


@pytest.mark.parametrize(("counts", "same"), [((0, 10, 0, 20), True), ((10, 10, 20, 20), True),
                                              ((0, 1, 0, 1), True), ((1, 1, 0, 1), False)])
def test_proportion_edge_cases_are_finite(counts: tuple[int, int, int, int], same: bool) -> None:
    lift = proportion_lift(*counts)
    assert lift is not None
    assert all(math.isfinite(v) for v in (lift.value, lift.low, lift.high, lift.p_value))
    assert -1 <= lift.low <= lift.value <= lift.high <= 1 and 0 <= lift.p_value <= 1
    assert (lift.p_value == 1.0) is same  # nobody (or everybody) converted on both sides: no evidence


def test_proportion_refuses_empty_arms_and_impossible_counts() -> None:
    assert proportion_lift(0, 0, 3, 10) is None and proportion_lift(3, 10, 0, 0) is None
    with pytest.raises(ValueError, match="out of range"):
        proportion_lift(11, 10, 3, 10)


def test_welch_matches_worked_example() -> None:
    lift = welch_lift(moments(A1), moments(A2))
    assert lift is not None
    assert lift.value == pytest.approx(np.mean(A1) - np.mean(A2))
    assert lift.p_value == pytest.approx(0.021, abs=5e-4)
    se = math.sqrt(np.var(A1, ddof=1) / 15 + np.var(A2, ddof=1) / 15)
    assert lift.value / se == pytest.approx(-2.46, abs=5e-3)
    # t(0.975, df = 24.99) = 2.0595 (tables: 2.060 at 25 degrees of freedom).
    assert (lift.low, lift.high) == pytest.approx((lift.value - 2.0595 * se, lift.value + 2.0595 * se), abs=2e-3)


def test_welch_from_exact_integer_moments() -> None:
    # Revenue in cents around a huge mean: exact integer moments keep the small variance right.
    base = 10**12
    treated = moments([base + v for v in (0, 100, 200, 300)])
    holdout = moments([base + v for v in (0, 50, 100)])
    assert treated.variance == pytest.approx(np.var([0, 100, 200, 300], ddof=1))
    lift = welch_lift(treated, holdout)
    assert lift is not None and lift.value == pytest.approx(100.0)


def test_welch_edge_cases() -> None:
    assert welch_lift(moments([5]), moments([1, 2, 3])) is None  # one value has no variance
    assert welch_lift(moments([1, 2]), moments([])) is None
    assert welch_lift(moments([4, 4, 4]), moments([0, 0])) is None  # no spread anywhere: no honest interval
    one_sided = welch_lift(moments([4, 4, 4]), moments([0, 1, 2]))  # spread on one side only is fine
    assert one_sided is not None and all(math.isfinite(v) for v in vars(one_sided).values())
    assert Moments(0, 0, 0).mean == 0.0 and Moments(1, 7, 49).variance == 0.0
    assert moments([1, 2]) + moments([3]) == moments([1, 2, 3])


def test_roi() -> None:
    assert roi(10, 3000, 10_000) == pytest.approx(2.0)  # 30,000 margin for 10,000 spent
    assert roi(-2.5, 3000, 1000) == pytest.approx(-8.5)  # a harmful offer loses more than its cost
    assert roi(10, 3000, 0) is None
