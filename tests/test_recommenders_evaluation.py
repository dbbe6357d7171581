"""Evaluation metrics and the policy on small cases checked by hand; feature schemas; the evaluate command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from recommenders.evaluation import (
    arm_propensities,
    compare_policies,
    ipw_values,
    policy_value,
    qini_auc,
    qini_curve,
    uplift_at_k,
    uplift_curve,
)
from recommenders.features import RAW_COLUMNS, SchemaMismatchError, build_features, conform
from recommenders.policy import NO_OFFER, OfferBook, choose_offers, eligibility, expected_value, realised_value

# 8 rows ranked by score: treated responders on top, control responders at the bottom.
Y = np.array([1, 1, 0, 0, 1, 0, 0, 1])
W = np.array([1, 1, 0, 1, 0, 0, 0, 0])
S = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2])


def test_uplift_at_k_by_hand() -> None:
    # overall top half: rows 0-3 -> treated 1,1,0 (2/3), control row 2 (0/1)
    assert uplift_at_k(Y, S, W, k=0.5, strategy="overall") == pytest.approx(2 / 3)
    # by group: top 50% of the 3 treated (2 rows: 1,1) and of the 5 control (3 rows: 0,1,0)
    assert uplift_at_k(Y, S, W, k=0.5) == pytest.approx(1 - 1 / 3)
    with pytest.raises(ValueError, match="fraction"):
        uplift_at_k(Y, S, W, k=0)


def test_qini_and_uplift_curves_by_hand() -> None:
    x, gain = qini_curve(Y, S, W)
    assert x.tolist() == list(range(9))
    # after 4 rows: 2 treated responders, 0 control responders -> 2; at the end: 2 - 2 * 3/5 = 0.8
    assert gain[4] == pytest.approx(2.0) and gain[-1] == pytest.approx(2 - 2 * 3 / 5)
    _, curve = uplift_curve(Y, S, W)
    assert curve[-1] == pytest.approx((2 / 3 - 2 / 5) * 8)
    assert qini_auc(Y, S, W) > 0 > qini_auc(Y, -S, W)
    assert qini_auc(Y, Y * W - Y * (1 - W), W) == pytest.approx(1.0)  # the perfect ranking


def test_ties_move_together() -> None:
    x, _ = qini_curve(Y, np.zeros(8), W)
    assert x.tolist() == [0, 8]


def test_ipw_policy_value_by_hand() -> None:
    arm = np.array([-1, -1, 0, 0, 1, 1])
    reward = np.array([1.0, 0.0, 1.0, 1.0, 0.0, 3.0])
    propensity = arm_propensities(arm, 2)
    assert propensity.tolist() == pytest.approx([1 / 3] * 3)
    send_all_0 = ipw_values(np.zeros(6, dtype=int), arm, reward, propensity)
    assert send_all_0.mean() == pytest.approx(1.0)  # the mean reward of arm 0
    value = policy_value("arm 1", np.ones(6, dtype=int), arm, reward, n_arms=2, n_boot=200)
    assert value.value == pytest.approx(1.5) and value.low <= 1.5 <= value.high
    names = [v.name for v in compare_policies(np.full(6, NO_OFFER), arm, reward, ["a", "b"], n_boot=10)]
    assert names == ["model policy", "send to none", "random", "send all: a", "send all: b"]


def test_policy_chooses_best_paying_eligible_offer_or_none() -> None:
    value = np.array([[5.0, 9.0], [-1.0, -2.0], [3.0, 8.0]])
    eligible = np.array([[True, True], [True, True], [True, False]])
    assert choose_offers(value, eligible).tolist() == [1, NO_OFFER, 0]
    cost = np.full(value.shape, 10.0)
    # budget for one offer: the member whose best offer is worth most (row 0, value 9) gets it
    assert choose_offers(value, eligible, cost=cost, budget=15).tolist() == [1, NO_OFFER, NO_OFFER]
    assert realised_value(np.array([1, NO_OFFER, 0]), value) == 12.0


def test_eligibility_masks_and_expected_value() -> None:
    book = OfferBook(("a", "gold_only"), np.array([100.0, 0.0]), np.array([0, 2]), np.array([14.0, 0.0]))
    mask = eligibility(book, tier_rank=np.array([0, 2, 3]), consent=np.array([True, True, False]),
                       days_since_offer=np.array([[3.0, np.nan], [np.nan, 1.0], [30.0, 30.0]]))
    assert mask.tolist() == [[False, False], [True, True], [False, False]]
    ev = expected_value(np.array([[0.1, 0.0]]), margin_per_conversion=2000, cost_cents=book.cost_cents,
                        redeem_probability=np.array([[0.5, 0.5]]))
    assert ev.tolist() == [[200 - 50, 0.0]]


def raw_rows(n: int = 4) -> pd.DataFrame:
    data = {c: np.arange(n, dtype=float) for c in RAW_COLUMNS}
    data["locale"] = ["fr_CA", "en_CA", "xx_XX", "fr_CA"][:n]
    data["next_tier_threshold"] = [1000.0, 5000.0, np.nan, 1000.0][:n]
    data["spend365_grocery"] = data["monetary_365d"] / 2
    return pd.DataFrame(data)


def test_features_schema_is_recorded_and_enforced() -> None:
    frame, schema = build_features(raw_rows(), categories=["grocery", "beauty"])
    assert frame.index.name == "member_id" and set(schema.dtypes) == {"float64"}
    assert frame["share_grocery"].tolist()[1:] == [0.5, 0.5, 0.5] and frame["share_beauty"].sum() == 0
    assert frame["locale_other"].tolist() == [0, 0, 1, 0] and np.isnan(frame["tier_progress"].iloc[2])
    assert conform(frame, schema).shape == frame.shape
    other, _ = build_features(raw_rows(), categories=["grocery"])
    with pytest.raises(SchemaMismatchError, match="missing"):
        conform(other, schema)
    with pytest.raises(SchemaMismatchError, match="order"):
        conform(frame[list(reversed(frame.columns))], schema)
    with pytest.raises(SchemaMismatchError, match="dtypes"):
        conform(frame.astype({"tenure_days": "float32"}), schema)
    with pytest.raises(SchemaMismatchError, match="lack"):
        build_features(raw_rows().drop(columns=["locale"]), categories=[])


def test_evaluate_command_on_generated_campaign(tmp_path: Path) -> None:
    from loyalty.cli import app

    rng = np.random.default_rng(3)
    n = 3000
    x = rng.normal(size=n)
    arm = rng.choice(["none", "mail", "sms"], size=n)
    p = 0.1 + 0.25 * ((arm == "mail") & (x > 0)) + 0.25 * ((arm == "sms") & (x <= 0))
    frame = pd.DataFrame({"x": x, "region": rng.choice(["n", "s"], size=n), "arm": arm,
                          "bought": (rng.random(n) < p).astype(int)})
    frame["spend"] = frame["bought"] * 30.0
    frame.to_csv(tmp_path / "c.csv", index=False)
    result = CliRunner().invoke(app, ["evaluate", "--data", str(tmp_path / "c.csv"), "--treatment", "arm",
                                      "--control", "none", "--outcome", "bought", "--spend", "spend", "--value", "0",
                                      "--margin", "0.5", "--cost", "1", "--method", "t", "--folds", "2",
                                      "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "uplift@30%" in result.output and "send all: mail" in result.output
    assert (tmp_path / "out" / "qini.png").stat().st_size > 1000
    policies = json.loads((tmp_path / "out" / "summary.json").read_text())["policies"]["t"]
    assert policies[0]["name"] == "model policy"
    assert policies[0]["value"] > max(v["value"] for v in policies if v["name"].startswith("send all"))
    bad = CliRunner().invoke(app, ["evaluate", "--data", str(tmp_path / "c.csv"), "--treatment", "arm",
                                   "--control", "nobody", "--outcome", "bought"])
    assert bad.exit_code == 2 and "nobody" in bad.output
