"""Which offer each treated member of a campaign chunk gets: eligibility, the recommender, the budget.

The decision is :mod:`recommenders.policy`'s, on arrays: eligibility is a mask (tier high
enough, the offer's cooldown elapsed since the member last got it), values come from the
recommender, and the policy keeps the best eligible offer of positive value per member, or
none. The recommenders:

* ``uplift`` — the newest trained artifact's lifts: expected incremental margin
  (lift x ``margin_per_conversion_cents``) minus the expected cost (P(convert | offer) x cost);
  nothing is sent to a member no offer pays for;
* ``propensity`` — the same artifact's P(convert | offer): the response-model baseline, which
  targets likely buyers whether or not the offer moves them;
* ``rules`` — the first eligible offer in the spec's order (also the fallback, logged, while
  no model has been trained).

A campaign budget is in cents of expected offer cost per run. Chunks are processed
independently, so each gets the share of the budget its audience is of the run's planned
audience, and spends it on its most valuable members first.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from pathlib import Path

import numpy as np
import sqlalchemy as sa
from sqlmodel import Session

from loyalty import jobs
from loyalty.campaigns import CampaignSpec, Recommender
from loyalty.db import fetch_rows
from loyalty.features_query import load_member_rows
from loyalty.models import CAMPAIGN_ASSIGNMENTS, CAMPAIGN_RUNS, MEMBERS
from loyalty.types import as_utc
from recommenders import registry
from recommenders.features import build_features, conform
from recommenders.policy import NO_OFFER, OfferBook, choose_offers, eligibility, expected_value

log = logging.getLogger(__name__)

NO_ELIGIBLE_OFFER = "no_eligible_offer"
NO_OFFER_PAYS = "no_offer_pays"
OVER_BUDGET = "over_budget"
_SECONDS_PER_DAY = 86_400.0


@dataclass
class OfferChoice:
    """Per member the offer code (absent: no offer), and why the others got none."""

    offers: dict[int, str] = field(default_factory=dict)
    dropped: Counter[str] = field(default_factory=Counter)


def offer_book(rt: jobs.Runtime, spec: CampaignSpec) -> OfferBook:
    """The campaign's offers as arrays, in the spec's order."""
    return OfferBook.from_specs(rt.programme.offers, [t.code for t in rt.programme.tiers.tiers], spec.offers)


def tier_ranks(session: Session, rt: jobs.Runtime, ids: Sequence[int]) -> np.ndarray:
    """Each member's tier rank (0 = the entry tier), in ``ids`` order."""
    rows = dict(fetch_rows(session, sa.select(MEMBERS.c.id, MEMBERS.c.tier).where(MEMBERS.c.id.in_(list(ids)))))
    return np.array([rt.programme.tiers.rank(rows[i]) for i in ids], dtype=np.int64)


def days_since_offers(session: Session, ids: Sequence[int], codes: Sequence[str], as_of: datetime) -> np.ndarray:
    """(n, k) days since each member was last assigned each offer by any campaign run before ``as_of`` (inf: never)."""
    a, r = CAMPAIGN_ASSIGNMENTS.c, CAMPAIGN_RUNS.c
    query = (sa.select(a.member_id, a.offer_code, sa.func.max(r.slot))
             .join(CAMPAIGN_RUNS, r.id == a.run_id)
             .where(a.member_id.in_(list(ids)), a.offer_code.in_(list(codes)), r.slot < as_of)
             .group_by(a.member_id, a.offer_code))
    since = np.full((len(ids), len(codes)), np.inf)
    row_of, column_of = {m: i for i, m in enumerate(ids)}, {c: j for j, c in enumerate(codes)}
    for member_id, code, last in fetch_rows(session, query):
        since[row_of[int(member_id)], column_of[code]] = (as_of - as_utc(last)).total_seconds() / _SECONDS_PER_DAY
    return since


@lru_cache(maxsize=4)
def _load_artifact(path: Path, mtime_ns: int) -> registry.ModelArtifact:
    # Keyed on the mtime too: a retrained artifact saved under the same name is picked up.
    return registry.load(path)


def latest_artifact(rt: jobs.Runtime) -> registry.ModelArtifact | None:
    """The newest uplift artifact under ``var/models`` (loaded once per process), or None before training."""
    directory = rt.settings.var_dir / "models"
    cards = registry.list_cards(directory) if directory.is_dir() else []
    if not cards:
        return None
    path = directory / f"{cards[-1].name}-{cards[-1].version}.joblib"
    return _load_artifact(path, path.stat().st_mtime_ns)


def check_model(artifact: registry.ModelArtifact | None, spec: CampaignSpec) -> None:
    """Refuse a campaign whose offers the model cannot score (checked before a run starts, and per chunk)."""
    if artifact is None or spec.recommender is Recommender.RULES:
        return
    missing = [c for c in spec.offers if c not in artifact.model.arms_]
    if missing:
        raise ValueError(f"campaign {spec.name!r}: the model {artifact.card.name}-{artifact.card.version} was not "
                         f"trained on offer(s) {missing}; retrain it on a campaign that tried them, drop them "
                         "from the campaign, or use the rules recommender")


def _model_values(session: Session, rt: jobs.Runtime, spec: CampaignSpec, artifact: registry.ModelArtifact,
                  ids: Sequence[int], book: OfferBook, as_of: datetime) -> tuple[np.ndarray, np.ndarray]:
    """(value, expected cost), each (n, k) in cents, from the artifact's predictions for ``ids``.

    A member with no feature row (joined at the slot itself) gets NaN: no offer can be valued for them.
    """
    raw = load_member_rows(session.connection(), rt.programme, id_range=(ids[0], ids[-1] + 1), as_of=as_of)
    features, _ = build_features(raw[raw["member_id"].isin(ids)],
                                 categories=list(rt.programme.earn.category_multipliers))
    rows = features.index.get_indexer(list(ids))
    scored = np.flatnonzero(rows >= 0)
    matrix = conform(features.iloc[rows[scored]], artifact.card.feature_schema)
    lift = np.full((len(ids), len(artifact.model.arms_)), np.nan)
    redeem = lift.copy()
    lift[scored], redeem[scored] = artifact.model.predict_conversion(matrix)
    check_model(artifact, spec)
    column = {arm: j for j, arm in enumerate(artifact.model.arms_)}
    pick = [column[c] for c in book.codes]
    lift, redeem = lift[:, pick], redeem[:, pick]
    cost = redeem * book.cost_cents[None, :]
    margin = rt.programme.margin_per_conversion_cents
    if spec.recommender is Recommender.PROPENSITY:
        return redeem * margin - cost, cost
    return expected_value(lift, margin_per_conversion=margin, cost_cents=book.cost_cents,
                          redeem_probability=redeem), cost


def _rule_values(n: int, book: OfferBook) -> tuple[np.ndarray, np.ndarray]:
    """Rules: earlier offers in the spec are worth more; every send is charged its full cost."""
    k = len(book.codes)
    value = np.tile(np.arange(k, 0, -1, dtype=float), (n, 1))
    return value, np.tile(book.cost_cents.astype(float), (n, 1))


def choose(session: Session, rt: jobs.Runtime, spec: CampaignSpec, ids: Sequence[int], as_of: datetime,
           *, budget_cents: float | None = None) -> OfferChoice:
    """Offers for the treated members ``ids`` (ascending) of one chunk."""
    choice = OfferChoice()
    if not spec.offers or not ids:
        return choice
    book = offer_book(rt, spec)
    mask = eligibility(book, tier_rank=tier_ranks(session, rt, ids), consent=np.ones(len(ids), dtype=bool),
                       days_since_offer=days_since_offers(session, ids, book.codes, as_of))
    artifact = latest_artifact(rt) if spec.recommender is not Recommender.RULES else None
    if artifact is None and spec.recommender is not Recommender.RULES:
        log.warning("campaign %s: no trained model yet, choosing offers by the rules", spec.name)
    value, cost = (_model_values(session, rt, spec, artifact, ids, book, as_of) if artifact is not None
                   else _rule_values(len(ids), book))
    mask &= ~np.isnan(value)
    unbounded = choose_offers(value, mask)
    decision = unbounded if budget_cents is None else choose_offers(value, mask, cost=cost, budget=budget_cents)
    has_eligible = mask.any(axis=1)
    choice.dropped[NO_ELIGIBLE_OFFER] = int((~has_eligible).sum())
    choice.dropped[NO_OFFER_PAYS] = int((has_eligible & (unbounded == NO_OFFER)).sum())
    choice.dropped[OVER_BUDGET] = int(((unbounded != NO_OFFER) & (decision == NO_OFFER)).sum())
    choice.offers = {int(ids[i]): book.codes[int(d)] for i, d in enumerate(decision) if d != NO_OFFER}
    return choice
