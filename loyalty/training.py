"""Train the uplift model from the database's past campaigns and save it as a versioned artifact.

For every completed campaign run: who was in it and which arm they got (offer or holdout),
their features as of the run's slot (nothing after it), and the outcome attributed to the
run: whether they bought within the attribution window, and how much they spent there.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from loyalty.attribution import RunWindow, window_spend
from loyalty.db import fetch_rows
from loyalty.features_query import load_member_rows
from loyalty.models import CAMPAIGN_ASSIGNMENTS, CAMPAIGN_RUNS, CAMPAIGNS
from loyalty.programme import Programme
from loyalty.types import as_utc, utcnow
from recommenders import registry
from recommenders.evaluation import qini_auc, uplift_at_k
from recommenders.features import FeatureSchema, build_features
from recommenders.uplift import UpliftRecommender

HOLDOUT = "holdout"
#: Strongly regularised trees: a campaign's lifts are a few points on noisy 0/1 outcomes, and on the seeded
#: programme these settings come closest to the oracle policy (see tests/test_recommenders_policy.py).
DEFAULT_PARAMS: dict[str, Any] = {"max_leaf_nodes": 4, "min_samples_leaf": 200, "learning_rate": 0.1,
                                  "max_iter": 100}


@dataclass
class TrainingData:
    """One row per (run, member): features at the slot, arm, conversion and spend in the window."""

    features: pd.DataFrame
    schema: FeatureSchema
    arm: np.ndarray
    converted: np.ndarray
    spend_cents: np.ndarray
    runs: list[dict[str, Any]]


def _runs(connection: Connection, campaign: str | None) -> list[dict[str, Any]]:
    r, c = CAMPAIGN_RUNS.c, CAMPAIGNS.c
    query = (sa.select(r.id, c.name, r.slot, r.attribution_days).join(CAMPAIGNS, c.id == r.campaign_id)
             .where(r.status == "completed").order_by(r.slot))
    if campaign is not None:
        query = query.where(c.name == campaign)
    runs: list[dict[str, Any]] = []
    now = utcnow()
    for run_id, name, slot, days in fetch_rows(connection, query):
        end = as_utc(slot) + timedelta(days=days)
        if end <= now:  # an open window would teach the model truncated outcomes
            runs.append({"run_id": int(run_id), "campaign": str(name), "slot": as_utc(slot), "end": end})
    return runs


def _outcomes(connection: Connection, run: dict[str, Any]) -> pd.DataFrame:
    """Assignments of one run with their attributed conversion and spend (one query)."""
    a = CAMPAIGN_ASSIGNMENTS.c
    window = RunWindow(run["run_id"], run["slot"], run["end"])
    bought, spent, _ = window_spend(a.member_id, window, window.window_end)  # as loyalty.attribution stores it
    query = sa.select(a.member_id, a.arm, bought, spent).where(a.run_id == run["run_id"]).order_by(a.member_id)
    rows = pd.DataFrame(fetch_rows(connection, query),
                        columns=["member_id", "arm", "purchases", "spend_cents"])
    rows["converted"] = (rows["purchases"] > 0).astype(np.int64)
    return rows


def training_data(engine: Engine, programme: Programme, *, campaign: str | None = None) -> TrainingData:
    """Exposures, holdouts and attributed outcomes of every completed run (of ``campaign`` if given)."""
    categories = list(programme.earn.category_multipliers)
    parts, frames = [], []
    with engine.connect() as connection:
        runs = _runs(connection, campaign)
        if not runs:
            raise ValueError("no completed campaign run whose attribution window has closed"
                             + (f" for {campaign!r}" if campaign else ""))
        for run in runs:
            outcome = _outcomes(connection, run)
            if outcome.empty:
                continue
            lo, hi = int(outcome["member_id"].min()), int(outcome["member_id"].max()) + 1
            raw = load_member_rows(connection, programme, id_range=(lo, hi), as_of=run["slot"])
            raw = raw[raw["member_id"].isin(outcome["member_id"])]
            features, _ = build_features(raw, categories=categories)
            outcome = outcome.set_index("member_id").loc[features.index]
            parts.append(outcome)
            frames.append(features)
    features = pd.concat(frames)
    outcome = pd.concat(parts)
    return TrainingData(features, FeatureSchema.of(features), outcome["arm"].to_numpy(dtype=str),
                        outcome["converted"].to_numpy(), outcome["spend_cents"].to_numpy(dtype=float), runs)


def _holdout_metrics(data: TrainingData, model: UpliftRecommender, test: np.ndarray) -> dict[str, Any]:
    lifts = model.predict(data.features.to_numpy()[test])
    metrics: dict[str, Any] = {"test_rows": int(test.sum())}
    for j, arm in enumerate(model.arms_):
        keep = np.isin(data.arm[test], [arm, HOLDOUT])
        y, w = data.converted[test][keep], (data.arm[test][keep] == arm).astype(float)
        metrics[arm] = {"uplift_at_30": round(uplift_at_k(y, lifts[keep, j], w, 0.3), 5),
                        "qini_auc": round(qini_auc(y, lifts[keep, j], w), 5)}
    return metrics


def train(data: TrainingData, *, method: str = "x", name: str = "uplift", test_share: float = 0.25,
          random_state: int = 0, params: dict[str, Any] | None = None) -> registry.ModelArtifact:
    """Fit on a random ``1 - test_share`` of the rows, measure on the rest, then refit on everything.

    ``test_share=0`` skips the measurement (the card's metrics are then empty).
    """
    rng = np.random.default_rng(random_state)
    test = rng.random(data.arm.size) < test_share
    X = data.features.to_numpy()

    def fit(rows: np.ndarray) -> UpliftRecommender:
        model = UpliftRecommender(method=method, control=HOLDOUT, random_state=random_state,
                                  **(DEFAULT_PARAMS if params is None else params))
        return model.fit(X[rows], data.converted[rows], treatment=data.arm[rows], spend=data.spend_cents[rows])

    metrics = _holdout_metrics(data, fit(~test), test) if test.any() else {}
    model = fit(np.ones(data.arm.size, dtype=bool))
    window = {"runs": [r["run_id"] for r in data.runs], "campaigns": sorted({r["campaign"] for r in data.runs}),
              "from": _iso(min(r["slot"] for r in data.runs)), "to": _iso(max(r["end"] for r in data.runs)),
              "rows": int(data.arm.size)}
    card = registry.new_card(name, model, data.schema, data_window=window, metrics=metrics)
    return registry.ModelArtifact(card, model)


def _iso(moment: datetime) -> str:
    return moment.isoformat()


def train_and_save(engine: Engine, programme: Programme, directory: Path, **options: Any) -> Path:
    """:func:`training_data` + :func:`train` + :func:`recommenders.registry.save`."""
    campaign = options.pop("campaign", None)
    return registry.save(train(training_data(engine, programme, campaign=campaign), **options), directory)
