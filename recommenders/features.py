"""Member rows in, a numeric feature frame and its recorded schema out.

Pure pandas/numpy: the rows come from :mod:`loyalty.features_query` (or any frame with the
same columns, see :data:`RAW_COLUMNS`); nothing here knows the database. The
:class:`FeatureSchema` (names and dtypes, in order) is saved with every model so scoring can
refuse a frame built differently from the one the model was trained on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

#: Windows (days) over which recency/frequency/monetary are counted.
WINDOWS = (30, 90, 365)
#: Locales one-hot encoded; anything else falls in ``locale_other``.
LOCALES = ("en_CA", "fr_CA", "en_US", "fr_FR")
#: Columns every raw member frame carries (category spend columns ``spend365_<category>`` come on top).
RAW_COLUMNS = (
    "member_id", "tenure_days", "recency_days", *(f"frequency_{w}d" for w in WINDOWS),
    *(f"monetary_{w}d" for w in WINDOWS), "tier_rank", "qualifying_value", "next_tier_threshold",
    "points_balance", "points_expiring_30d", "consent_email", "consent_sms", "consent_push",
    "messages_365d", "opens_365d", "clicks_365d", "offers_received", "offers_converted", "locale",
)


class SchemaMismatchError(ValueError):
    """A feature frame (or a model artifact) does not match the schema expected."""


@dataclass(frozen=True)
class FeatureSchema:
    """The ordered feature names and their dtypes, as recorded at training time."""

    names: tuple[str, ...]
    dtypes: tuple[str, ...]

    @classmethod
    def of(cls, frame: pd.DataFrame) -> FeatureSchema:
        """The schema of ``frame`` as it is."""
        return cls(tuple(str(c) for c in frame.columns), tuple(str(t) for t in frame.dtypes))

    def to_dict(self) -> dict[str, list[str]]:
        """A JSON-friendly form, stored in artifacts."""
        return {"names": list(self.names), "dtypes": list(self.dtypes)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureSchema:
        """The inverse of :meth:`to_dict`."""
        return cls(tuple(data["names"]), tuple(data["dtypes"]))

    def check(self, frame: pd.DataFrame) -> None:
        """Raise :class:`SchemaMismatchError` naming what differs between ``frame`` and this schema."""
        other = FeatureSchema.of(frame)
        if other == self:
            return
        missing = sorted(set(self.names) - set(other.names))
        extra = sorted(set(other.names) - set(self.names))
        if missing or extra:
            raise SchemaMismatchError(f"feature names differ: missing {missing}, unexpected {extra}")
        if other.names != self.names:
            raise SchemaMismatchError("feature columns are in a different order")
        bad = [n for n, a, b in zip(self.names, self.dtypes, other.dtypes, strict=True) if a != b]
        raise SchemaMismatchError(f"feature dtypes differ for {bad}")


def _ratio(numerator: pd.Series, denominator: pd.Series) -> pd.Series:
    """numerator / denominator, 0 where the denominator is 0 (no history is not missing data)."""
    den = denominator.astype(float)
    return (numerator.astype(float) / den.where(den > 0)).fillna(0.0)


def _rfm(raw: pd.DataFrame) -> dict[str, pd.Series]:
    out: dict[str, pd.Series] = {
        "tenure_days": raw["tenure_days"].astype(float),
        "recency_days": raw["recency_days"].astype(float),
    }
    for w in WINDOWS:
        out[f"frequency_{w}d"] = raw[f"frequency_{w}d"].astype(float)
        out[f"monetary_{w}d"] = raw[f"monetary_{w}d"].astype(float)
    out["avg_basket_365d"] = _ratio(raw["monetary_365d"], raw["frequency_365d"])
    return out


def _tier_and_points(raw: pd.DataFrame) -> dict[str, pd.Series]:
    threshold = raw["next_tier_threshold"].astype(float)  # NaN at the top tier: gradient boosting handles it
    qualifying = raw["qualifying_value"].astype(float)
    return {
        "tier_rank": raw["tier_rank"].astype(float),
        "tier_progress": qualifying / threshold,
        "distance_to_next_tier": (threshold - qualifying).clip(lower=0),
        "points_balance": raw["points_balance"].astype(float),
        "points_expiring_30d": raw["points_expiring_30d"].astype(float),
    }


def _engagement(raw: pd.DataFrame) -> dict[str, pd.Series]:
    return {
        "consent_email": raw["consent_email"].astype(float),
        "consent_sms": raw["consent_sms"].astype(float),
        "consent_push": raw["consent_push"].astype(float),
        "messages_365d": raw["messages_365d"].astype(float),
        "open_rate": _ratio(raw["opens_365d"], raw["messages_365d"]),
        "click_rate": _ratio(raw["clicks_365d"], raw["messages_365d"]),
        "offers_received": raw["offers_received"].astype(float),
        "offer_response_rate": _ratio(raw["offers_converted"], raw["offers_received"]),
    }


def build_features(raw: pd.DataFrame, *, categories: Sequence[str],
                   locales: Sequence[str] = LOCALES) -> tuple[pd.DataFrame, FeatureSchema]:
    """Turn raw member rows into a float64 feature frame indexed by ``member_id``, and its schema.

    ``categories`` fixes the category-share columns (``share_<category>`` of 365-day spend) so
    two frames built from different members still share one schema.
    """
    missing = [c for c in RAW_COLUMNS if c not in raw.columns]
    if missing:
        raise SchemaMismatchError(f"raw member rows lack columns {missing}")
    columns = {**_rfm(raw), **_tier_and_points(raw), **_engagement(raw)}
    for category in categories:
        spend = raw.get(f"spend365_{category}", pd.Series(0.0, index=raw.index))
        columns[f"share_{category}"] = _ratio(spend, raw["monetary_365d"])
    locale = raw["locale"].astype(str)
    for name in locales:
        columns[f"locale_{name}"] = (locale == name).astype(float)
    columns["locale_other"] = (~locale.isin(list(locales))).astype(float)
    frame = pd.DataFrame(columns).astype(np.float64)
    frame.index = pd.Index(raw["member_id"].astype(np.int64), name="member_id")
    return frame, FeatureSchema.of(frame)


def conform(frame: pd.DataFrame, schema: FeatureSchema) -> np.ndarray:
    """The frame as a float64 matrix in the schema's column order, or :class:`SchemaMismatchError`."""
    schema.check(frame)
    return frame.to_numpy(dtype=np.float64)
