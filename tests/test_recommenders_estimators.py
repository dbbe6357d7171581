"""The estimators: scikit-learn conventions, and recovery of effects planted in generated data."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.utils.estimator_checks import parametrize_with_checks

from recommenders.popularity import PopularityRecommender
from recommenders.propensity import OfferPropensity
from recommenders.uplift import UpliftRecommender

ARMS = ("a", "b")


def planted(n: int = 6000, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A randomised campaign: offer 'a' lifts conversion by 0.3 where x0 > 0, 'b' by 0.3 where x0 <= 0."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3))
    arm = rng.choice(np.array(["control", *ARMS]), size=n)
    tau = np.column_stack([0.3 * (X[:, 0] > 0), 0.3 * (X[:, 0] <= 0)])
    p = 0.2 + np.where(arm == "a", tau[:, 0], 0.0) + np.where(arm == "b", tau[:, 1], 0.0)
    y = (rng.random(n) < p).astype(int)
    spend = y * (20.0 + 10.0 * (arm == "a"))
    return X, arm, y, spend, tau


@parametrize_with_checks([OfferPropensity(max_iter=5, min_samples_leaf=1)])
def test_offer_propensity_follows_sklearn_conventions(estimator: Any, check: Any) -> None:
    check(estimator)


@pytest.mark.parametrize("method", ["t", "x", "ct"])
def test_uplift_recovers_planted_effects(method: str) -> None:
    X, arm, y, spend, tau = planted()
    # The raw meta-learner's recovery (shrinkage, which trades level for less noise, has its own tests).
    model = UpliftRecommender(method=method, control="control", max_iter=50, min_samples_leaf=100, shrinkage=None)
    assert model.fit(X, y, treatment=arm, spend=spend) is model
    assert model.arms_ == ARMS
    lift = model.predict(X)
    assert lift.shape == (X.shape[0], 2)
    best = np.argmax(lift, axis=1)
    assert (best == np.argmax(tau, axis=1)).mean() > 0.85  # the right offer for most members
    assert abs(lift[X[:, 0] > 0.5, 0].mean() - 0.3) < 0.08
    scores = model.predict_lift(X)
    assert scores.spend is not None and scores.spend.shape == lift.shape
    assert scores.spend[:, 0].mean() > scores.spend[:, 1].mean()  # 'a' adds spend per converter
    treated = model.predict_treated_conversion(X)
    assert ((treated >= 0) & (treated <= 1)).all()


def test_uplift_follows_estimator_conventions() -> None:
    X, arm, y, _, _ = planted(800)
    model = UpliftRecommender(method="x", control="control", max_iter=5)
    assert clone(model).get_params() == model.get_params()
    with pytest.raises(NotFittedError):
        model.predict(X)
    with pytest.raises(ValueError, match="treatment"):
        model.fit(X, y)
    model.fit(X, y, treatment=arm)
    assert not hasattr(model, "models") and hasattr(model, "models_") and model.n_features_in_ == 3
    with pytest.raises(ValueError, match="features"):
        model.predict(X[:, :2])
    with pytest.raises(ValueError, match="without spend"):
        model.predict_spend(X)
    assert model.predict_lift(X).spend is None
    nan_rows = X.copy()
    nan_rows[:10, 1] = np.nan  # gradient boosting takes missing values (top tier has no next threshold)
    assert np.isfinite(model.predict(nan_rows)).all()


def test_uplift_refuses_unknown_method_and_missing_control() -> None:
    X, arm, y, _, _ = planted(300)
    with pytest.raises(ValueError, match="method"):
        UpliftRecommender(method="s", control="control").fit(X, y, treatment=arm)
    with pytest.raises(ValueError, match="control"):
        UpliftRecommender(control="holdout").fit(X, y, treatment=arm)


def test_propensity_scores_every_offer() -> None:
    X, arm, y, _, _ = planted()
    treated = arm != "control"
    model = OfferPropensity(max_iter=50, min_samples_leaf=50).fit(X[treated], y[treated], offer=arm[treated])
    proba = model.predict_offer_proba(X)
    assert proba.shape == (X.shape[0], 2) and model.offers_ == ARMS
    assert proba[X[:, 0] > 0.5, 0].mean() > proba[X[:, 0] > 0.5, 1].mean() + 0.15
    with pytest.raises(ValueError, match="not seen"):
        model.predict_proba(X, offer="z")


def test_popularity_picks_the_best_offer_per_segment() -> None:
    X, arm, y, _, _ = planted()
    treated = arm != "control"
    segment = (X[:, 0] > 0).astype(int)
    model = PopularityRecommender(prior_strength=5)
    assert model.fit(X[treated], y[treated], offer=arm[treated], segment=segment[treated]) is model
    assert model.predict(X[:2], segment=np.array([1, 0])).tolist() == ["a", "b"]
    assert model.predict_scores(X[:1]).shape == (1, 2)  # without segments: overall rates
    with pytest.raises(NotFittedError):
        PopularityRecommender().predict(X)
    assert clone(model).get_params() == {"prior_strength": 5}
