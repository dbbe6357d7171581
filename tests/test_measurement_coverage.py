"""Do the reported 95 % conversion-lift intervals cover the seeded campaign's true effects 95 % of the time?

The estimand. In the seeded ``spring_reactivation`` campaign (:func:`loyalty.seed_campaign.plan_campaign`)
member *i* converts in the window with probability ``p_base_i + tau_i[arm_i]``: ``p_base`` already
contains the background (organic) purchase rate, because the seeder *removes* the audience's organic
purchases in the window (``CampaignStep.keep_organic``) and replaces them by the experiment's single
converting purchase, dated inside the window (``conversion_times``). So the database's intent-to-treat
``converted`` is exactly ``plan.converted``, and, given the assignment,

    E[conv. rate of arm k - conv. rate of holdout] = mean_{i in k} tau_i[k] + (mean_k p_base - mean_H p_base).

The second term is the randomisation's imbalance, zero on average; its spread is part of the arms'
sample variances, which the interval uses. The estimand of arm k is therefore the first term: the
average true effect of offer k on the members who got it (``tau`` as drawn, i.e. clipped so the
probability stays in [0, 1]). ``overall`` pools the treated arms: its estimand is the mean of every
treated member's own ``tau``.

Speed: seeding a database per seed costs about a second, so the >= 50 seeds run the seed's own numpy
simulation (population, purchase history, features, tiers, then the real ``plan_campaign``) and feed
the counts to the same :func:`loyalty.measurement_stats.proportion_lift` that ``measure_run`` uses;
two seeds go end to end through a real database (seed, attribute, measure_run) and must give the same
counts and intervals as the truth file, so the simulation's shortcut is checked.
"""

from __future__ import annotations

import csv
import gzip
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy.engine import Engine

from loyalty import attribution
from loyalty.measurement import latest_run_id, measure_run
from loyalty.measurement_stats import proportion_lift
from loyalty.measurement_types import Estimate
from loyalty.programme import Programme
from loyalty.seed import HISTORY_DAYS, seed_programme
from loyalty.seed_campaign import (
    CAMPAIGN_NAME,
    OFFER_CODES,
    CampaignPlan,
    FeatureWindow,
    campaign_slot_us,
    plan_campaign,
)
from loyalty.seed_history import build_periods, draw_purchases, earn_points
from loyalty.seed_io import US_PER_DAY, to_us
from loyalty.seed_population import build_population, stream
from loyalty.tiers import window_start

AS_OF = datetime(2026, 6, 1, tzinfo=UTC)
SEEDS = range(100)
MEMBERS = 1_200  # about 780 in the audience: some 156 per arm and in the holdout


def simulate_plan(programme: Programme, seed: int, size: int) -> CampaignPlan:
    """The seeded campaign of ``seed`` without a database: the seeder's draws up to the slot, then its plan.

    Like the seeder: the population, monthly purchases with points at the tier held, upgrades at each
    month end, features from the history before the slot. Simplified: e-mail opt-ins (75 % of members
    with an address, soon after joining) and no redemptions or expiry, which do not enter the features.
    """
    as_of_us = to_us(AS_OF)
    categories = list(programme.earn.category_multipliers) or ["general"]
    pop = build_population(size, seed, as_of_us, categories)
    slot = campaign_slot_us(as_of_us)
    window = FeatureWindow(size, slot, categories.index("grocery") if "grocery" in categories else None)
    thresholds = np.array([t.threshold for t in programme.tiers.tiers])
    rank = np.zeros(size, dtype=np.int64)
    qualifying_at, qualifying_points = np.zeros(0, dtype=np.int64), np.zeros((0,), dtype=np.int64)
    qualifying_member = np.zeros(0, dtype=np.int64)
    periods = build_periods(as_of_us - HISTORY_DAYS * US_PER_DAY, as_of_us, (slot, slot + 14 * US_PER_DAY))
    for period in (p for p in periods if p.end_us <= slot):
        purchases = draw_purchases(stream(seed, 1000 + period.index), pop, period, categories)
        window.add(purchases)
        points = earn_points(programme, categories, purchases.amount, purchases.category, rank[purchases.member])
        qualifying_member = np.concatenate([qualifying_member, purchases.member])
        qualifying_at = np.concatenate([qualifying_at, purchases.at])
        qualifying_points = np.concatenate([qualifying_points, points])
        qualifying = _qualifying(programme, qualifying_member, qualifying_at, qualifying_points, period.end_us, size)
        rank = np.maximum(rank, np.searchsorted(thresholds, qualifying, side="right") - 1)  # upgrades only
    rng = stream(seed, 2)
    opted_in = pop.has_email & (rng.random(size) < 0.75)
    email_opt_in_us = np.where(opted_in, pop.joined_us + (rng.exponential(20.0, size) * US_PER_DAY).astype(np.int64),
                               -1)
    qualifying = _qualifying(programme, qualifying_member, qualifying_at, qualifying_points, slot, size)
    return plan_campaign(stream(seed, 4), pop, window, email_opt_in_us, thresholds.tolist(), rank, qualifying)


def _qualifying(programme: Programme, member: np.ndarray, at: np.ndarray, points: np.ndarray, at_us: int,
                size: int) -> np.ndarray:
    since = to_us(window_start(programme.tiers, datetime.fromtimestamp(at_us / 1e6, UTC)))
    keep = (at >= since) & (at <= at_us)
    return np.bincount(member[keep], weights=points[keep], minlength=size).astype(np.int64)


def arm_truth(arm: np.ndarray, tau: dict[str, np.ndarray]) -> dict[str, float]:
    """The estimand per offer (mean of its ``tau`` over its own members) and ``overall`` (every treated member's)."""
    own = np.zeros(arm.size)
    for index, code in enumerate(OFFER_CODES):
        own[arm == index] = tau[code][arm == index]
    truth = {code: float(tau[code][arm == index].mean()) for index, code in enumerate(OFFER_CODES)}
    return truth | {"overall": float(own[arm >= 0].mean())}


def arm_lifts(arm: np.ndarray, converted: np.ndarray) -> dict[str, Estimate | None]:
    """The conversion lift of each offer and of all treated members against the holdout, from the counts."""
    hold = arm < 0
    x0, n0 = int(converted[hold].sum()), int(hold.sum())
    lifts = {code: proportion_lift(int(converted[arm == i].sum()), int((arm == i).sum()), x0, n0)
             for i, code in enumerate(OFFER_CODES)}
    return lifts | {"overall": proportion_lift(int(converted[~hold].sum()), int((~hold).sum()), x0, n0)}


def covered(lift: Estimate | None, truth: float) -> bool:
    assert lift is not None
    return lift.low <= truth <= lift.high


def test_conversion_lift_intervals_cover_the_true_effect_at_the_nominal_rate(programme: Programme) -> None:
    hits: dict[str, list[bool]] = {name: [] for name in (*OFFER_CODES, "overall")}
    for seed in SEEDS:
        plan = simulate_plan(programme, seed, MEMBERS)
        assert (plan.arm < 0).sum() >= 100 and all((plan.arm == i).sum() >= 100 for i in range(len(OFFER_CODES)))
        truth, lifts = arm_truth(plan.arm, plan.tau), arm_lifts(plan.arm, plan.converted)
        for name in hits:
            hits[name].append(covered(lifts[name], truth[name]))
    arms = np.array([hits[code] for code in OFFER_CODES])
    rate, intervals = float(arms.mean()), arms.size
    print(f"\ncoverage of 95% conversion-lift intervals over {len(SEEDS)} seeds: {rate:.3f} of {intervals} arm "
          f"intervals (per offer: {', '.join(f'{c} {np.mean(hits[c]):.2f}' for c in OFFER_CODES)}); "
          f"overall {np.mean(hits['overall']):.3f}")
    # Binomial sd at 400 intervals is 0.011: 0.92 is about 3 sd below 0.95. Too high means too wide.
    assert 0.92 <= rate <= 0.985, rate
    assert 0.88 <= float(np.mean(hits["overall"])) <= 1.0


def _truth_file(path: Path) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    with gzip.open(path, "rt") as handle:
        rows = list(csv.DictReader(handle))
    names = ["holdout", *OFFER_CODES]
    arm = np.array([names.index(r["arm"]) - 1 for r in rows])
    tau = {c: np.array([float(r[f"tau_{c}"]) for r in rows]) for c in OFFER_CODES}
    return arm, tau, np.array([r["converted"] == "1" for r in rows])


@pytest.mark.parametrize("seed", [3, 8])
def test_end_to_end_seeds_measure_what_the_truth_file_says(engine: Engine, programme: Programme, tmp_path: Path,
                                                          seed: int) -> None:
    seed_programme(engine, programme, members=600, seed=seed, as_of=AS_OF, truth_dir=tmp_path)
    attribution.attribute_all(engine, as_of=AS_OF, chunk_size=250)
    run_id = latest_run_id(engine, CAMPAIGN_NAME)
    assert run_id is not None
    measured = measure_run(engine, run_id, as_of=AS_OF, programme=programme)
    assert measured.caution is None
    arm, tau, converted = _truth_file(tmp_path / f"{CAMPAIGN_NAME}_truth.csv.gz")
    expected = arm_lifts(arm, converted)
    by_name = {a.arm: a for a in [*measured.arms, measured.overall]}
    assert by_name["holdout"].converted == int(converted[arm < 0].sum())
    for name, lift in expected.items():
        assert by_name[name].conversion_lift == lift, name  # same counts, hence the same interval
    truth = arm_truth(arm, tau)
    hits = [covered(by_name[n].conversion_lift, truth[n]) for n in OFFER_CODES]
    print(f"\nseed {seed} end to end: {sum(hits)} of {len(hits)} arm intervals cover the truth")
