"""Behavioural segments: scaled features, KMeans, and a human-readable label per segment from its centroid.

Labels are built from how a centroid stands against the population on a few behaviours that
marketers reason with (recency, spend, frequency, closeness to the next tier, the dominant
category): ``"lapsing high spenders"``, ``"recent frequent buyers, grocery-heavy"``... Two
segments can share a label; :attr:`Segmenter.labels_` then numbers them.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.cluster import KMeans
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import QuantileTransformer
from sklearn.utils.validation import check_is_fitted

#: Features describing behaviour (a subset of recommenders.features' output).
BEHAVIOUR = ("recency_days", "frequency_365d", "monetary_365d", "avg_basket_365d", "tier_progress",
             "points_balance", "open_rate", "offer_response_rate")


class Segmenter(BaseEstimator):
    """KMeans on quantile-scaled behaviour features of a feature frame; ``labels_`` names each segment."""

    def __init__(self, n_segments: int = 6, random_state: int | None = 0) -> None:
        self.n_segments = n_segments
        self.random_state = random_state

    def _columns(self, frame: pd.DataFrame) -> list[str]:
        shares = [c for c in frame.columns if c.startswith("share_")]
        return [c for c in BEHAVIOUR if c in frame.columns] + shares

    def fit(self, frame: pd.DataFrame, y: Any = None) -> Segmenter:
        """Learn ``n_segments`` segments from a feature frame (rows = members)."""
        self.columns_ = self._columns(frame)
        # Quantiles, not z-scores: spend is heavy-tailed and would otherwise own every cluster.
        self.pipeline_: Pipeline = make_pipeline(
            SimpleImputer(strategy="median"),
            QuantileTransformer(n_quantiles=min(200, len(frame)), random_state=self.random_state),
            KMeans(n_clusters=self.n_segments, n_init=4, random_state=self.random_state))
        self.pipeline_.fit(frame[self.columns_].to_numpy(dtype=float))
        scaled = self.pipeline_[:-1].transform(frame[self.columns_].to_numpy(dtype=float))
        self.centroids_ = pd.DataFrame(self.pipeline_[-1].cluster_centers_, columns=self.columns_)
        self.sizes_ = np.bincount(self.pipeline_[-1].predict(scaled), minlength=self.n_segments)
        self.labels_ = _unique([describe(row) for _, row in self.centroids_.iterrows()])
        return self

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        """The segment index of each member."""
        check_is_fitted(self)
        return np.asarray(self.pipeline_.predict(frame[self.columns_].to_numpy(dtype=float)))

    def label(self, frame: pd.DataFrame) -> np.ndarray:
        """The segment label of each member (usable as a campaign audience filter)."""
        return np.asarray(self.labels_, dtype=object)[self.predict(frame)]


def describe(centroid: pd.Series) -> str:
    """A label from a centroid in quantile space (0.5 = the population's median)."""
    recency = centroid.get("recency_days", 0.5)
    spend = centroid.get("monetary_365d", 0.5)
    frequency = centroid.get("frequency_365d", 0.5)
    when = "lapsed" if recency > 0.75 else "lapsing" if recency > 0.55 else "recent" if recency < 0.35 else "steady"
    if spend > 0.65:
        who = "high spenders"
    elif spend < 0.3:
        who = "low spenders"
    else:
        who = "frequent buyers" if frequency > 0.6 else "occasional buyers"
    words = [f"{when} {who}"]
    if centroid.get("tier_progress", 0) > 0.7:
        words.append("close to the next tier")
    shares = centroid[[c for c in centroid.index if c.startswith("share_")]]
    if len(shares) and shares.max() > 0.7:
        words.append(f"{shares.idxmax().removeprefix('share_')}-heavy")
    return ", ".join(words)


def _unique(labels: list[str]) -> list[str]:
    """Number repeated labels (``"recent low spenders (2)"``) so every segment has its own name."""
    seen: Counter[str] = Counter()
    total = Counter(labels)
    out = []
    for label in labels:
        seen[label] += 1
        out.append(f"{label} ({seen[label]})" if total[label] > 1 else label)
    return out
