"""Shrinkage of per-member lifts toward each arm's average, and the paired policy-gain interval."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recommenders.campaign_eval import campaign_table, evaluate_campaign, revalue
from recommenders.evaluation import policy_gain, policy_value
from recommenders.shrinkage import fit_slope
from recommenders.uplift import UpliftRecommender


def campaign(n: int = 12000, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Arm 'flat' lifts everyone by 0.10; arm 'steep' by 0.25 where x0 > 0.5 and nothing elsewhere."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4))
    arm = rng.choice(np.array(["control", "flat", "steep"]), size=n)
    tau = np.column_stack([np.full(n, 0.10), 0.25 * (X[:, 0] > 0.5)])
    p = 0.2 + np.where(arm == "flat", tau[:, 0], 0.0) + np.where(arm == "steep", tau[:, 1], 0.0)
    return X, arm, (rng.random(n) < p).astype(int), tau


def test_slope_undoes_an_over_spread_score() -> None:
    rng = np.random.default_rng(1)
    n = 200_000
    tau = rng.uniform(0, 0.3, n)
    treated = rng.random(n) < 0.5
    y = (rng.random(n) < 0.2 + tau * treated).astype(float)
    _, slope = fit_slope(2 * tau, y, treated)  # a model twice as spread as the truth
    assert slope == pytest.approx(0.5, abs=0.05)
    assert fit_slope(-tau, y, treated)[1] == 0.0  # anti-correlated: no trust at all
    assert fit_slope(np.full(n, 0.1), y, treated)[1] == 0.0


def test_auto_shrinkage_trusts_the_arm_with_signal_and_not_the_flat_one() -> None:
    X, arm, y, tau = campaign()
    model = UpliftRecommender(method="t", control="control", max_iter=60, min_samples_leaf=50, shrinkage="auto").fit(
        X, y, treatment=arm)
    shrink = model.shrinkage_["conversion"]
    flat, steep = shrink.slope
    print(shrink.slope)
    assert flat < 0.25 and steep > 0.4  # the tree ensemble over-spreads even real effects
    diff_in_means = [y[arm == a].mean() - y[arm == "control"].mean() for a in ("flat", "steep")]
    np.testing.assert_allclose(shrink.center, diff_in_means)
    lift, raw = model.predict(X), model.predict_raw(X)
    assert lift[:, 0].std() < 0.5 * raw[:, 0].std()  # the flat arm's noise is damped
    assert (np.argsort(lift[:, 1], kind="stable") == np.argsort(raw[:, 1], kind="stable")).all()
    # Shrunk lifts are closer to the truth than raw ones.
    assert np.mean((lift - tau) ** 2) < np.mean((raw - tau) ** 2)


def test_fixed_and_no_shrinkage() -> None:
    X, arm, y, _ = campaign(4000)
    none = UpliftRecommender(method="x", control="control", max_iter=10, shrinkage=None).fit(X, y, treatment=arm)
    np.testing.assert_array_equal(none.predict(X), none.predict_raw(X))
    zero = UpliftRecommender(method="x", control="control", max_iter=10, shrinkage=0).fit(X, y, treatment=arm)
    lift = zero.predict(X)
    assert np.ptp(lift, axis=0).max() == 0  # the arm's average for everyone: a single-arm policy
    with pytest.raises(ValueError, match="shrinkage"):
        UpliftRecommender(control="control", shrinkage="some").fit(X, y, treatment=arm)
    with pytest.raises(ValueError, match="shrinkage"):
        UpliftRecommender(control="control", shrinkage=1.5).fit(X, y, treatment=arm)


def test_paired_gain_by_hand() -> None:
    arm = np.array([-1, 0, 1, 0, 1, -1])
    reward = np.array([0.0, 1.0, 1.0, 0.0, 1.0, 1.0])
    model, everyone_0 = np.array([-1, 0, 1, 0, 0, -1]), np.zeros(6, dtype=int)
    gain = policy_gain("g", model, everyone_0, arm, reward, n_arms=2, n_boot=200)
    a = policy_value("a", model, arm, reward, n_arms=2, n_boot=10).value
    b = policy_value("b", everyone_0, arm, reward, n_arms=2, n_boot=10).value
    assert gain.value == pytest.approx(a - b) and gain.low <= gain.value <= gain.high
    same = policy_gain("s", model, model, arm, reward, n_arms=2, n_boot=50)
    assert (same.value, same.low, same.high) == (0.0, 0.0, 0.0)


def test_evaluation_reports_the_named_method_and_its_gain() -> None:
    X, arm, y, _ = campaign(9000, seed=2)
    frame = pd.DataFrame(X, columns=[f"x{i}" for i in range(4)]).assign(arm=arm, y=y)
    table = campaign_table(frame, treatment="arm", control="control", outcome="y")
    report = evaluate_campaign(table, methods=("t",), test_size=0.5, n_boot=200, policy_method="t",
                               params={"max_iter": 40})
    gain, values = report.gains["t"], report.policies["t"]
    assert report.policy_of() == "t" and gain.low <= gain.value <= gain.high
    assert gain.value == pytest.approx(values[0].value - max(v.value for v in values if "send all" in v.name))
    assert gain.value > 0  # 'steep' where x0 > 0.5 (+0.25), 'flat' elsewhere (+0.10)
    dearer = revalue(report, cost=0.2, n_boot=200)
    assert dearer.methods is report.methods and dearer.policies["t"][0].value < values[0].value
    with pytest.raises(ValueError, match="policy method"):
        evaluate_campaign(table, methods=("t",), policy_method="x")
