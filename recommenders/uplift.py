"""Multi-treatment uplift: how much each offer changes conversion and spend, per member, vs the holdout.

Three meta-learners over scikit-learn's histogram gradient boosting:

* ``"t"`` (T-learner): one outcome model per arm and one for the control; lift = difference;
* ``"x"`` (X-learner, Künzel et al. 2019): T-learner outcome models impute each member's
  individual effect, effect models are fitted on those, and the two sides are blended by the
  arm's share (its propensity in a randomised campaign);
* ``"ct"`` (class transformation, Jaskowski & Jaroszewicz 2012): per arm, a classifier on
  ``Z = y·W + (1-y)(1-W)`` with treated and control reweighted to 50/50, lift = 2·P(Z=1) - 1;
  spend uses the transformed-outcome regression ``y·(W-p)/(p(1-p))``.

Inputs are numeric matrices (NaN allowed); arms are any labels, ``control`` names the holdout.

``shrinkage="auto"`` (the default of ``loyalflow evaluate``; off by default here because its
cross-fitting multiplies fit time by about six) pulls each arm's per-member lift toward the arm's average
lift by how much the model's ranking is worth out of fold (see :mod:`recommenders.shrinkage`): an
arm whose lift the model cannot rank is scored at its average, so the policy does not act on noise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, clone
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.model_selection import StratifiedKFold
from sklearn.utils.validation import check_is_fitted, validate_data
from threadpoolctl import threadpool_limits

from recommenders.shrinkage import Shrinkage, fitted_shrinkage, fixed_shrinkage

METHODS = ("t", "x", "ct")


@dataclass(frozen=True)
class LiftScores:
    """Estimated lifts, one column per arm in ``arms`` order."""

    arms: tuple[str, ...]
    conversion: np.ndarray  # (n, k) in probability
    spend: np.ndarray | None  # (n, k) in the spend's unit, None when no spend was fitted


class UpliftRecommender(BaseEstimator):
    """Per member and offer, the estimated lift in conversion (and spend) over the control arm.

    ``fit(X, y, treatment=..., spend=None)`` returns ``self``; ``predict(X)`` gives the
    conversion lifts ``(n, n_arms)`` in ``arms_`` order, ``predict_spend(X)`` the spend lifts.

    ``shrinkage``: ``"auto"`` chooses per arm and target how far to trust the per-member lifts by
    ``shrinkage_folds``-fold cross-fitting on the training rows (``shrinkage_`` holds the result);
    a number in [0, 1] uses that slope for every arm (0 = the arm's average lift for everyone);
    ``None`` keeps the raw meta-learner. ``predict_raw`` always gives the raw lifts.
    """

    def __init__(self, method: str = "t", control: Any = "holdout", max_iter: int = 100,
                 learning_rate: float = 0.1, max_leaf_nodes: int = 15, min_samples_leaf: int = 50,
                 l2_regularization: float = 1.0, random_state: int | None = 0, n_threads: int | None = 1,
                 shrinkage: str | float | None = None, shrinkage_folds: int = 5) -> None:
        self.method = method
        self.control = control
        self.max_iter = max_iter
        self.learning_rate = learning_rate
        self.max_leaf_nodes = max_leaf_nodes
        self.min_samples_leaf = min_samples_leaf
        self.l2_regularization = l2_regularization
        self.random_state = random_state
        self.n_threads = n_threads
        self.shrinkage = shrinkage
        self.shrinkage_folds = shrinkage_folds

    def _threads(self) -> threadpool_limits:
        """OpenMP threads for the trees. One by default: on a busy 2-core machine OpenMP's spinning threads
        made a fit 45x slower (86 s instead of 1.9 s); None leaves the library's default."""
        return threadpool_limits(limits=self.n_threads, user_api="openmp")

    def _hgb(self, kind: str) -> Any:
        params = {"max_iter": self.max_iter, "learning_rate": self.learning_rate,
                  "max_leaf_nodes": self.max_leaf_nodes, "min_samples_leaf": self.min_samples_leaf,
                  "l2_regularization": self.l2_regularization, "random_state": self.random_state,
                  "early_stopping": False}
        return HistGradientBoostingClassifier(**params) if kind == "clf" else HistGradientBoostingRegressor(**params)

    def fit(self, X: Any, y: Any, treatment: Any = None, spend: Any = None) -> UpliftRecommender:
        """Fit on a randomised campaign: features ``X``, binary outcome ``y``, arm labels ``treatment``."""
        with self._threads():
            return self._fit(X, y, treatment, spend)

    def _fit(self, X: Any, y: Any, treatment: Any, spend: Any) -> UpliftRecommender:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, not {self.method!r}")
        if treatment is None:
            raise ValueError("UpliftRecommender.fit needs treatment= (each row's arm)")
        if isinstance(self.shrinkage, str) and self.shrinkage != "auto":
            raise ValueError(f"shrinkage must be 'auto', None or a number in [0, 1], not {self.shrinkage!r}")
        X, y = validate_data(self, X, y, ensure_all_finite="allow-nan", y_numeric=True)
        arm = np.asarray(treatment)
        if arm.shape[0] != X.shape[0]:
            raise ValueError("treatment must have one label per row of X")
        is_control = arm == self.control
        if not is_control.any():
            raise ValueError(f"no row is in the control arm {self.control!r}")
        self.arms_ = tuple(sorted(str(a) for a in np.unique(arm[~is_control])))
        self.share_ = {a: float(np.mean(arm[~is_control].astype(str) == a) * (~is_control).mean())
                       for a in self.arms_}
        targets = {"conversion": y.astype(float)}
        if spend is not None:
            targets["spend"] = np.asarray(spend, dtype=float)
        self.models_: dict[str, dict[str, Any]] = {}
        for name, target in targets.items():
            binary = name == "conversion" and set(np.unique(target)) <= {0.0, 1.0}
            self.models_[name] = self._fit_target(X, target, arm.astype(str), is_control, binary)
        self.shrinkage_ = self._fit_shrinkage(X, y, arm, is_control, targets)
        return self

    def _fit_shrinkage(self, X: np.ndarray, y: np.ndarray, arm: np.ndarray, is_control: np.ndarray,
                       targets: dict[str, np.ndarray]) -> dict[str, Shrinkage]:
        """Per target, how far each arm's lifts are pulled toward the arm's average (empty: raw lifts)."""
        if self.shrinkage is None:
            return {}
        labels = arm.astype(str)
        if self.shrinkage != "auto":
            return {name: fixed_shrinkage(self._lift_unlimited(X, name, raw=True), target, labels, self.arms_,
                                          is_control, float(self.shrinkage))
                    for name, target in targets.items()}
        oof = self._cross_fitted(X, y, arm, targets)
        return {name: fitted_shrinkage(oof[name], target, labels, self.arms_, is_control)
                for name, target in targets.items()}

    def _cross_fitted(self, X: np.ndarray, y: np.ndarray, arm: np.ndarray,
                      targets: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Out-of-fold raw lifts of every training row, per target, from raw copies of this model."""
        strata = np.unique(arm.astype(str), return_inverse=True)[1] * 2 + (y > 0)
        splitter = StratifiedKFold(n_splits=self.shrinkage_folds, shuffle=True, random_state=self.random_state)
        oof = {name: np.zeros((X.shape[0], len(self.arms_))) for name in targets}
        for train, test in splitter.split(X, strata):
            inner = clone(self).set_params(shrinkage=None)
            spend = targets["spend"][train] if "spend" in targets else None
            inner._fit(X[train], y[train], arm[train], spend)
            if inner.arms_ != self.arms_:
                raise ValueError("every arm needs rows in each shrinkage fold: lower shrinkage_folds")
            for name in targets:
                oof[name][test] = inner._lift_unlimited(X[test], name, raw=True)
        return oof

    def _outcome_model(self, X: np.ndarray, target: np.ndarray, binary: bool) -> Any:
        if binary and np.unique(target).size < 2:
            return float(target.mean())  # a constant: gradient boosting refuses a single class
        return clone(self._hgb("clf" if binary else "reg")).fit(X, target)

    def _fit_target(self, X: np.ndarray, target: np.ndarray, arm: np.ndarray, is_control: np.ndarray,
                    binary: bool) -> dict[str, Any]:
        models: dict[str, Any] = {}
        models["control"] = self._outcome_model(X[is_control], target[is_control], binary)
        if self.method in ("t", "x"):
            for a in self.arms_:
                rows = arm == a
                models[a] = self._outcome_model(X[rows], target[rows], binary)
        if self.method == "x":
            effects = self._fit_x(X, target, arm, is_control, models)
            models = {"control": models["control"], **effects}
        if self.method == "ct":
            for a in self.arms_:
                models[a] = self._fit_ct(X, target, arm == a, is_control, binary)
        return models

    def _fit_x(self, X: np.ndarray, target: np.ndarray, arm: np.ndarray, is_control: np.ndarray,
               outcome: dict[str, Any]) -> dict[str, Any]:
        effects: dict[str, Any] = {}
        mu0_treated = {a: _mean(outcome["control"], X[arm == a]) for a in self.arms_}
        for a in self.arms_:
            rows = arm == a
            imputed_treated = target[rows] - mu0_treated[a]  # D1 = Y(1) - mu0(x)
            imputed_control = _mean(outcome[a], X[is_control]) - target[is_control]  # D0 = mu1(x) - Y(0)
            on_treated = clone(self._hgb("reg")).fit(X[rows], imputed_treated)
            on_control = clone(self._hgb("reg")).fit(X[is_control], imputed_control)
            g = self.share_[a] / (self.share_[a] + 1 - sum(self.share_.values()))  # P(arm a | a or control)
            blended = g * on_control.predict(X) + (1 - g) * on_treated.predict(X)
            # Distilled into one regressor per arm: scoring then costs one model per offer, not two.
            effects[a] = clone(self._hgb("reg")).fit(X, blended)
        return effects

    def _fit_ct(self, X: np.ndarray, target: np.ndarray, treated: np.ndarray, is_control: np.ndarray,
                binary: bool) -> Any:
        rows = treated | is_control
        w = treated[rows].astype(float)
        p = w.mean()
        if binary:
            z = (target[rows] * w + (1 - target[rows]) * (1 - w)).astype(int)
            weight = np.where(w == 1, 0.5 / p, 0.5 / (1 - p))  # balance arms to 50/50, where Z's identity holds
            return clone(self._hgb("clf")).fit(X[rows], z, sample_weight=weight)
        transformed = target[rows] * (w - p) / (p * (1 - p))
        return clone(self._hgb("reg")).fit(X[rows], transformed)

    def _lift(self, X: np.ndarray, name: str, raw: bool = False) -> np.ndarray:
        with self._threads():
            return self._lift_unlimited(X, name, raw)

    def _lift_unlimited(self, X: np.ndarray, name: str, raw: bool = False) -> np.ndarray:
        lift = self._raw_lift(X, name)
        shrink = None if raw else getattr(self, "shrinkage_", {}).get(name)
        return lift if shrink is None else shrink.apply(lift)

    def _raw_lift(self, X: np.ndarray, name: str) -> np.ndarray:
        models = self.models_[name]
        out = np.empty((X.shape[0], len(self.arms_)))
        base = _mean(models["control"], X) if self.method == "t" else None
        for j, a in enumerate(self.arms_):
            if self.method == "t":
                out[:, j] = _mean(models[a], X) - base
            elif self.method == "x":
                out[:, j] = models[a].predict(X)
            elif isinstance(models[a], HistGradientBoostingClassifier):
                out[:, j] = 2 * models[a].predict_proba(X)[:, 1] - 1
            else:
                out[:, j] = models[a].predict(X)
        return out

    def predict(self, X: Any) -> np.ndarray:
        """Estimated conversion lift ``(n, n_arms)`` of each arm over the control."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, ensure_all_finite="allow-nan")
        return self._lift(X, "conversion")

    def predict_raw(self, X: Any) -> np.ndarray:
        """The meta-learner's conversion lift before shrinkage (same ranking when every slope is > 0)."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, ensure_all_finite="allow-nan")
        return self._lift(X, "conversion", raw=True)

    def predict_spend(self, X: Any) -> np.ndarray:
        """Estimated spend lift ``(n, n_arms)``; raises if the model was fitted without ``spend``."""
        check_is_fitted(self)
        if "spend" not in self.models_:
            raise ValueError("this model was fitted without spend")
        X = validate_data(self, X, reset=False, ensure_all_finite="allow-nan")
        return self._lift(X, "spend")

    def predict_lift(self, X: Any) -> LiftScores:
        """Both lifts at once (spend is None when not fitted)."""
        spend = self.predict_spend(X) if "spend" in getattr(self, "models_", {}) else None
        return LiftScores(self.arms_, self.predict(X), spend)

    def predict_conversion(self, X: Any) -> tuple[np.ndarray, np.ndarray]:
        """(conversion lift, P(convert | offer)) per arm in one pass: what the offer policy needs.

        P(convert | offer) is the control's outcome model plus the lift, clipped to [0, 1].
        """
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, ensure_all_finite="allow-nan")
        lift = self._lift(X, "conversion")
        with self._threads():
            base = _mean(self.models_["conversion"]["control"], X)
        return lift, np.clip(base[:, None] + lift, 0, 1)

    def predict_treated_conversion(self, X: Any) -> np.ndarray:
        """P(convert | offer) per arm (see :meth:`predict_conversion`)."""
        return self.predict_conversion(X)[1]

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        return tags


def _mean(model: Any, X: np.ndarray) -> np.ndarray:
    """E[y | x] of an outcome model: P(y=1) for a classifier, the prediction of a regressor, or a constant."""
    if isinstance(model, float):
        return np.full(X.shape[0], model)
    if isinstance(model, HistGradientBoostingClassifier):
        return model.predict_proba(X)[:, 1]
    return model.predict(X)
