"""Segments with readable labels, and item recommendations that beat popularity on held-out purchases."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recommenders.items import ItemRecommender, PopularityItems, hit_rate, top_k
from recommenders.segments import Segmenter, describe


def behaviour(n: int = 3000, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """Two clear groups: recent grocery-heavy frequent buyers, and lapsed big spenders on electronics."""
    rng = np.random.default_rng(seed)
    group = rng.integers(0, 2, n)
    frame = pd.DataFrame({
        "recency_days": np.where(group == 0, rng.uniform(1, 20, n), rng.uniform(300, 700, n)),
        "frequency_365d": np.where(group == 0, rng.poisson(30, n), rng.poisson(2, n)).astype(float),
        "monetary_365d": np.where(group == 0, rng.uniform(1e4, 5e4, n), rng.uniform(1e5, 3e5, n)),
        "tier_progress": np.where(group == 0, rng.uniform(0, 0.3, n), np.nan),
        "share_grocery": np.where(group == 0, rng.uniform(0.85, 1, n), 0.0),
        "share_electronics": np.where(group == 0, 0.0, rng.uniform(0.8, 1, n)),
    })
    return frame, group


def test_segments_separate_groups_and_read_well() -> None:
    frame, group = behaviour()
    segmenter = Segmenter(n_segments=2).fit(frame)
    segment = segmenter.predict(frame)
    agreement = max((segment == group).mean(), (segment != group).mean())
    assert agreement > 0.98
    labels = set(segmenter.labels_)
    # Labels are relative to the population (quantiles): half of it lapsed, so that half's centre reads "lapsing".
    assert any(label.startswith(("lapsing high spenders", "lapsed high spenders")) and "electronics-heavy" in label
               for label in labels), labels
    assert any(label.startswith("recent") and "grocery-heavy" in label for label in labels), labels
    assert set(segmenter.label(frame.iloc[:5])) <= labels
    assert segmenter.sizes_.sum() == len(frame)


def test_describe_numbers_nothing_it_cannot_see() -> None:
    assert describe(pd.Series({"recency_days": 0.6, "monetary_365d": 0.9})) == "lapsing high spenders"
    assert describe(pd.Series(dtype=float)) == "steady occasional buyers"


def baskets(members: int = 2000, items: int = 30, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Purchase counts where members of one of 5 tastes buy mostly within its 6 items; one purchase held out."""
    rng = np.random.default_rng(seed)
    taste = rng.integers(0, 5, members)
    counts = np.zeros((members, items))
    held = np.empty(members, dtype=np.int64)
    popular = rng.permutation(items)[:3]  # a few items everyone buys now and then
    for m in range(members):
        own = taste[m] * 6 + rng.choice(6, size=4, replace=False)
        counts[m, own[:3]] += rng.integers(1, 4, 3)
        held[m] = own[3]
        counts[m, rng.choice(popular)] += 1
    return counts, held


@pytest.mark.parametrize("method", ["item_item", "svd"])
def test_items_beat_popularity_on_held_out_purchases(method: str) -> None:
    counts, held = baskets()
    train, test = slice(0, 1500), slice(1500, None)
    model = ItemRecommender(method=method, n_components=8).fit(counts[train])
    ours = hit_rate(model.recommend(counts[test], k=3), held[test])
    baseline = hit_rate(PopularityItems().fit(counts[train]).recommend(counts[test], k=3), held[test])
    assert ours > baseline + 0.3, (ours, baseline)
    assert not (model.recommend(counts[test], k=3) == np.argmax(counts[test], axis=1)[:, None]).any()


def test_top_k_orders_and_skips_seen() -> None:
    scores = np.array([[0.1, 0.9, 0.5, 0.7]])
    assert top_k(scores, 2).tolist() == [[1, 3]]
    assert top_k(scores, 2, seen=np.array([[0, 1, 0, 0]])).tolist() == [[3, 2]]
    with pytest.raises(ValueError, match="method"):
        ItemRecommender(method="als").fit(np.ones((3, 3)))
