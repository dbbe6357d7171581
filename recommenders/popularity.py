"""The baseline: in each segment, the offer with the best historical response rate.

No features beyond the segment: it ranks offers by their treated conversion rate within the
segment, shrunk towards the offer's overall rate (``prior_strength`` pseudo-members) so a
small segment does not crown an offer on three lucky conversions. What uplift must beat.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted, validate_data


class PopularityRecommender(BaseEstimator):
    """``fit(X, y, offer=..., segment=None)``; ``predict(X, segment=None)`` → best offer per row.

    ``X`` is only checked for shape (the baseline ignores features); ``segment`` holds an integer
    segment per row (e.g. from :class:`recommenders.segments.Segmenter`), or None for one segment.
    """

    def __init__(self, prior_strength: float = 20.0) -> None:
        self.prior_strength = prior_strength

    def fit(self, X: Any, y: Any, offer: Any = None, segment: Any = None) -> PopularityRecommender:
        """Response rates of each offer per segment, from members who received one."""
        if offer is None:
            raise ValueError("PopularityRecommender.fit needs offer= (the offer each row received)")
        X, y = validate_data(self, X, y, ensure_all_finite="allow-nan", y_numeric=True)
        labels = np.asarray(offer).astype(str)
        self.offers_ = np.array(sorted(set(labels)))
        code = np.searchsorted(self.offers_, labels)
        seg = np.zeros(y.size, dtype=np.int64) if segment is None else np.asarray(segment, dtype=np.int64)
        self.n_segments_ = int(seg.max()) + 1
        k = self.offers_.size
        overall = np.bincount(code, weights=y, minlength=k) / np.maximum(np.bincount(code, minlength=k), 1)
        cell = seg * k + code
        hits = np.bincount(cell, weights=y, minlength=self.n_segments_ * k).reshape(-1, k)
        counts = np.bincount(cell, minlength=self.n_segments_ * k).reshape(-1, k)
        self.rates_ = (hits + self.prior_strength * overall) / (counts + self.prior_strength)
        self.overall_ = overall
        return self

    def predict_scores(self, X: Any, segment: Any = None) -> np.ndarray:
        """(n, n_offers) shrunk response rate of each offer in each row's segment."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, ensure_all_finite="allow-nan")
        if segment is None:
            return np.tile(self.overall_, (X.shape[0], 1))
        seg = np.asarray(segment, dtype=np.int64)
        known = (seg >= 0) & (seg < self.n_segments_)
        return np.where(known[:, None], self.rates_[np.where(known, seg, 0)], self.overall_)

    def predict(self, X: Any, segment: Any = None) -> np.ndarray:
        """The offer code with the best response in each row's segment."""
        check_is_fitted(self)
        return self.offers_[np.argmax(self.predict_scores(X, segment), axis=1)]

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        return tags
