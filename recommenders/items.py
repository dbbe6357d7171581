""""Recommended for you": items (categories or products) from co-purchase, for template content.

Implicit feedback: ``X`` is a members x items matrix of purchase counts (dense or scipy sparse).
Two scorers, both fitted in one pass over ``X``:

* ``"item_item"``: cosine similarity between items' buyer vectors (shrunk for rarely bought
  items), a member's score for an item is the similarity-weighted sum of what they bought;
* ``"svd"``: truncated SVD of the log-scaled matrix, scores = the member's low-rank reconstruction.

:class:`PopularityItems` is the baseline both must beat on held-out purchases.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import sparse
from sklearn.base import BaseEstimator
from sklearn.decomposition import TruncatedSVD
from sklearn.utils.validation import check_is_fitted, validate_data


def _log_scaled(X: Any) -> sparse.csr_matrix:
    """log(1 + count): a member's tenth coffee says less than their first."""
    matrix = sparse.csr_matrix(X, dtype=np.float64)
    matrix.data = np.log1p(np.clip(matrix.data, 0, None))
    return matrix


def top_k(scores: np.ndarray, k: int, seen: Any = None) -> np.ndarray:
    """Indexes of the ``k`` best items per row, best first; items already bought skipped when ``seen`` is given."""
    scores = np.array(scores, dtype=np.float64)
    if seen is not None:
        scores[sparse.csr_matrix(seen).toarray() > 0] = -np.inf
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


class ItemRecommender(BaseEstimator):
    """Item-item or truncated-SVD recommendations from a members x items purchase-count matrix."""

    def __init__(self, method: str = "item_item", n_components: int = 16, shrinkage: float = 10.0,
                 random_state: int | None = 0) -> None:
        self.method = method
        self.n_components = n_components
        self.shrinkage = shrinkage
        self.random_state = random_state

    def fit(self, X: Any, y: Any = None) -> ItemRecommender:
        """Learn item similarities (or item factors) from purchase counts."""
        if self.method not in ("item_item", "svd"):
            raise ValueError(f"method must be 'item_item' or 'svd', not {self.method!r}")
        X = validate_data(self, X, accept_sparse="csr")
        matrix = _log_scaled(X)
        if self.method == "svd":
            rank = max(1, min(self.n_components, min(matrix.shape) - 1))
            self.svd_ = TruncatedSVD(n_components=rank, random_state=self.random_state).fit(matrix)
            return self
        co = (matrix.T @ matrix).toarray()
        norms = np.sqrt(np.diag(co))
        similarity = co / (np.outer(norms, norms) + self.shrinkage)  # shrinkage: rare items get weak links
        np.fill_diagonal(similarity, 0.0)
        self.similarity_ = similarity
        return self

    def score(self, X: Any) -> np.ndarray:
        """(members, items) affinity of each member for each item."""
        check_is_fitted(self)
        X = validate_data(self, X, accept_sparse="csr", reset=False)
        matrix = _log_scaled(X)
        if self.method == "svd":
            return np.asarray(self.svd_.inverse_transform(self.svd_.transform(matrix)))
        return np.asarray(matrix @ self.similarity_)

    def recommend(self, X: Any, k: int = 3, exclude_seen: bool = True) -> np.ndarray:
        """The ``k`` best item indexes per member (not already bought, unless ``exclude_seen=False``)."""
        return top_k(self.score(X), k, X if exclude_seen else None)


class PopularityItems(BaseEstimator):
    """The baseline: the most bought items, the same for everyone."""

    def fit(self, X: Any, y: Any = None) -> PopularityItems:
        """Count buyers per item."""
        X = validate_data(self, X, accept_sparse="csr")
        self.popularity_ = np.asarray((sparse.csr_matrix(X) > 0).sum(axis=0)).ravel().astype(float)
        return self

    def recommend(self, X: Any, k: int = 3, exclude_seen: bool = True) -> np.ndarray:
        """The ``k`` most popular items each member has not bought yet."""
        check_is_fitted(self)
        X = validate_data(self, X, accept_sparse="csr", reset=False)
        scores = np.tile(self.popularity_, (X.shape[0], 1))
        return top_k(scores, k, X if exclude_seen else None)


def hit_rate(recommended: np.ndarray, held_out: np.ndarray) -> float:
    """Share of members whose held-out item is among their recommendations."""
    return float(np.mean([h in row for row, h in zip(recommended, held_out, strict=True)]))
