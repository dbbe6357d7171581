"""P(convert | member, offer), learned from members who were sent an offer.

One gradient-boosting classifier over the member's features plus a one-hot of the offer
(offers share what they have in common: most of a member's propensity is the member). Used
to weigh an offer's cost by how likely it is to be redeemed, and as a response-model baseline
against uplift (a high propensity is not a high lift).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data
from threadpoolctl import threadpool_limits


class OfferPropensity(ClassifierMixin, BaseEstimator):
    """A classifier of conversion given features and (optionally) the offer received.

    ``fit(X, y, offer=None)``: with ``offer`` (one label per row) the offer becomes a feature
    and :meth:`predict_offer_proba` scores every member against every offer; without it, a
    plain classifier.
    """

    def __init__(self, max_iter: int = 100, learning_rate: float = 0.1, max_leaf_nodes: int = 15,
                 min_samples_leaf: int = 20, random_state: int | None = 0, n_threads: int | None = 1) -> None:
        self.max_iter = max_iter
        self.learning_rate = learning_rate
        self.max_leaf_nodes = max_leaf_nodes
        self.min_samples_leaf = min_samples_leaf
        self.random_state = random_state
        self.n_threads = n_threads  # OpenMP threads (see UpliftRecommender: one is safest on shared machines)

    def _with_offer(self, X: np.ndarray, index: np.ndarray | None) -> np.ndarray:
        if not self.offers_:
            return X
        onehot = np.zeros((X.shape[0], len(self.offers_)))
        if index is not None:
            onehot[np.arange(X.shape[0]), index] = 1.0
        return np.hstack([X, onehot])

    def fit(self, X: Any, y: Any, offer: Any = None) -> OfferPropensity:
        """Fit on treated members: features ``X``, outcome ``y``, the ``offer`` each one received."""
        X, y = validate_data(self, X, y, ensure_all_finite="allow-nan")
        check_classification_targets(y)
        self.offers_: tuple[str, ...] = ()
        index = None
        if offer is not None:
            labels = np.asarray(offer).astype(str)
            self.offers_ = tuple(sorted(set(labels)))
            index = np.searchsorted(np.array(self.offers_), labels)
        model = HistGradientBoostingClassifier(
            max_iter=self.max_iter, learning_rate=self.learning_rate, max_leaf_nodes=self.max_leaf_nodes,
            min_samples_leaf=self.min_samples_leaf, random_state=self.random_state, early_stopping=False)
        with threadpool_limits(limits=self.n_threads, user_api="openmp"):
            self.model_ = model.fit(self._with_offer(X, index), y)
        self.classes_ = self.model_.classes_
        self.n_iter_ = self.model_.n_iter_
        return self

    def _offer_index(self, n: int, offer: Any) -> np.ndarray | None:
        if offer is None:
            return None
        labels = np.broadcast_to(np.asarray(offer).astype(str), (n,))
        unknown = set(labels) - set(self.offers_)
        if unknown:
            raise ValueError(f"offers not seen in fit: {sorted(unknown)}")
        return np.searchsorted(np.array(self.offers_), labels)

    def predict_proba(self, X: Any, offer: Any = None) -> np.ndarray:
        """Class probabilities; with offers fitted, ``offer`` (one label or one per row) says which."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, ensure_all_finite="allow-nan")
        with threadpool_limits(limits=self.n_threads, user_api="openmp"):
            return self.model_.predict_proba(self._with_offer(X, self._offer_index(X.shape[0], offer)))

    def predict(self, X: Any, offer: Any = None) -> np.ndarray:
        """The most likely class."""
        check_is_fitted(self)
        return self.classes_[np.argmax(self.predict_proba(X, offer), axis=1)]

    def predict_offer_proba(self, X: Any) -> np.ndarray:
        """(n, n_offers) P(convert) for every member under every offer (the last class is 'converted')."""
        check_is_fitted(self)
        if not self.offers_:
            raise ValueError("fitted without offer=: nothing to score per offer")
        return np.column_stack([self.predict_proba(X, offer=o)[:, -1] for o in self.offers_])

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        return tags
