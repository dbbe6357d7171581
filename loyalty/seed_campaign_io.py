"""Rows and files for the seeded campaign (:mod:`loyalty.seed_campaign`).

The campaign is stored as the real pipeline would have left it: a ``Campaign``, one completed
``CampaignRun``, an assignment per audience member, a delivered e-mail per treated member
with SendGrid-style delivery events, and the offers' ledger effects on converting purchases.
The truth goes to ``<truth_dir>/spring_reactivation_truth.csv.gz`` (see :data:`TRUTH_COLUMNS`).
"""

from __future__ import annotations

import csv
import gzip
import io
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
from sqlmodel import Session

from loyalty.models import CAMPAIGN_RUNS, CAMPAIGNS
from loyalty.programme import Programme
from loyalty.seed_campaign import (
    ATTRIBUTION_DAYS,
    CAMPAIGN_NAME,
    FEATURES,
    HOLDOUT_SHARE,
    OFFER_CODES,
    CampaignPlan,
    FeatureWindow,
    conversion_times,
    plan_campaign,
    spend_shift,
)
from loyalty.seed_history import Entries, Period, Purchases, draw_baskets, draw_categories, draw_channels
from loyalty.seed_io import US_PER_DAY, US_PER_SECOND, BulkWriter, from_us
from loyalty.seed_population import LOCALES, Population, stream
from loyalty.seed_tiers import TierTracker
from loyalty.types import OfferKind

#: Columns of the truth file, in order.
TRUTH_COLUMNS = ("member_id", "external_id", "arm", "p_base", *(f"tau_{c}" for c in OFFER_CODES),
                 *(f"spend_lift_{c}" for c in OFFER_CODES), "converted", *FEATURES)
BONUS_MINIMUM_CENTS = 2_500  # "500 extra points on a purchase of $25 or more"

_SUBJECTS = {
    "double_points": ("Double points are back this weekend", "Points doublés ce week-end"),
    "ten_percent_off": ("10% off your next basket", "10 % de rabais sur votre prochain panier"),
    "bonus_500": ("500 bonus points are waiting for you", "500 points en prime vous attendent"),
    "free_coffee": ("Your next coffee is on us", "Votre prochain café est offert"),
}


def write_campaign(session: Session, writer: BulkWriter, rng: np.random.Generator, plan: CampaignPlan,
                   pop: Population, first_member_id: int) -> int:
    """Insert the campaign, its completed run, assignments, outbox messages and events; returns the run id."""
    slot = from_us(plan.slot_us)
    campaign_id: int = session.execute(CAMPAIGNS.insert().returning(CAMPAIGNS.c.id).values(
        name=CAMPAIGN_NAME, created_at=slot - timedelta(days=14),
        description="Spring win-back: one of four offers, or nothing (seeded history with known effects).",
    )).scalar_one()
    opened, clicked = _engagement(rng, plan)
    run_id: int = session.execute(CAMPAIGN_RUNS.insert().returning(CAMPAIGN_RUNS.c.id).values(
        campaign_id=campaign_id, slot=slot, status="completed", holdout_share=HOLDOUT_SHARE,
        attribution_days=ATTRIBUTION_DAYS, started_at=slot - timedelta(minutes=15),
        finished_at=slot + timedelta(hours=1), stats=_stats(plan, opened, clicked),
    )).scalar_one()
    member_ids = plan.members + first_member_id
    first = writer.next_id("campaign_assignments")
    arms = plan.arm_names()
    writer.insert("campaign_assignments", {
        "id": np.arange(first, first + plan.members.size), "run_id": [run_id] * plan.members.size,
        "member_id": member_ids, "arm": arms, "offer_code": [None if a == "holdout" else a for a in arms],
        "variant": [None] * plan.members.size, "assigned_at": writer.times(np.full(plan.members.size, plan.slot_us)),
    })
    _write_messages(writer, rng, plan, pop, run_id, first_member_id, opened, clicked)
    writer.sync_sequence("campaign_assignments", "outbox_messages", "delivery_events")
    return int(run_id)


def _engagement(rng: np.random.Generator, plan: CampaignPlan) -> tuple[np.ndarray, np.ndarray]:
    """Opens and clicks per treated member; converters open and click more."""
    converted = plan.converted[plan.treated]
    opened = rng.random(converted.size) < 0.22 + 0.35 * converted
    clicked = opened & (rng.random(converted.size) < 0.25 + 0.35 * converted)
    return opened, clicked


def _stats(plan: CampaignPlan, opened: np.ndarray, clicked: np.ndarray) -> dict[str, Any]:
    arms = plan.arm_names()
    names = ["holdout", *OFFER_CODES]
    return {
        "source": "seed", "audience": int(plan.members.size), "holdout": int((plan.arm < 0).sum()),
        "sent": int(plan.treated.size), "delivered": int(plan.treated.size), "opened": int(opened.sum()),
        "clicked": int(clicked.sum()),
        "arms": {n: arms.count(n) for n in names},
        "conversions": {n: int(plan.converted[plan.arm == i - 1].sum()) for i, n in enumerate(names)},
    }


def _write_messages(writer: BulkWriter, rng: np.random.Generator, plan: CampaignPlan, pop: Population,
                    run_id: int, first_member_id: int, opened: np.ndarray, clicked: np.ndarray) -> None:
    """One delivered e-mail per treated member, in their language, and its delivery events."""
    members = plan.members[plan.treated]
    count = members.size
    member_ids = (members + first_member_id).tolist()
    codes = np.array(OFFER_CODES, dtype=object)[plan.arm[plan.treated]].tolist()
    french = [LOCALES[i].startswith("fr") for i in pop.locale[members].tolist()]
    first = writer.next_id("outbox_messages")
    delivered = plan.slot_us + rng.integers(5, 120, count) * US_PER_SECOND
    provider = np.array([f"seed.{run_id}.{m}" for m in member_ids], dtype=object)
    slot = np.full(count, plan.slot_us)
    payloads = {(c, fr): writer.as_json({"subject": _SUBJECTS[c][fr]}) for c in OFFER_CODES for fr in (False, True)}
    writer.insert("outbox_messages", {
        "id": np.arange(first, first + count), "key": [f"seed:{run_id}:{m}" for m in member_ids],
        "run_id": [run_id] * count, "member_id": member_ids, "channel": ["email"] * count,
        "template": [f"offers/{c}" for c in codes], "offer_code": codes,
        "payload": [payloads[c, fr] for c, fr in zip(codes, french, strict=True)],
        "status": ["delivered"] * count, "attempts": [1] * count, "provider_id": provider.tolist(),
        "last_error": [None] * count, "skip_reason": [None] * count, "not_before": writer.times(slot),
        "created_at": writer.times(slot - 15 * 60 * US_PER_SECOND), "updated_at": writer.times(delivered),
        "sent_at": writer.times(slot),
    })
    open_at = delivered + np.minimum(rng.exponential(8 * 3600, count), 10 * 86_400).astype(np.int64) * US_PER_SECOND
    events = [("delivered", np.ones(count, dtype=bool), delivered), ("open", opened, open_at),
              ("click", clicked, open_at + rng.integers(5, 1800, count) * US_PER_SECOND)]
    _write_events(writer, np.arange(first, first + count), provider, events)


def _write_events(writer: BulkWriter, outbox_ids: np.ndarray, provider: np.ndarray,
                  events: list[tuple[str, np.ndarray, np.ndarray]]) -> None:
    """SendGrid-style events ``(name, which messages, when)``, message by message."""
    outbox = np.concatenate([outbox_ids[mask] for _, mask, _ in events])
    order = np.argsort(outbox, kind="stable")
    names = np.concatenate([np.full(int(mask.sum()), name, dtype=object) for name, mask, _ in events])[order]
    refs = np.concatenate([provider[mask] for _, mask, _ in events])[order]
    first = writer.next_id("delivery_events")
    writer.insert("delivery_events", {
        "id": np.arange(first, first + outbox.size), "outbox_id": outbox[order],
        "provider": ["sendgrid"] * outbox.size,
        "provider_event_id": [f"seed-{o}-{n}" for o, n in zip(outbox[order].tolist(), names.tolist(), strict=True)],
        "event": names.tolist(),
        "occurred_at": writer.times(np.concatenate([when[mask] for _, mask, when in events])[order]),
        "payload": [f'{{"sg_message_id": "{r}"}}' for r in refs.tolist()],  # ids are plain ASCII
    })


def offer_entries(programme: Programme, plan: CampaignPlan, purchases: Purchases, points: np.ndarray,
                  txn_ids: np.ndarray, run_id: int, first_member_id: int) -> Entries:
    """Ledger effects of the offers on converting purchases: bonus points and points multipliers.

    ``purchases`` are the converters' purchases in ``plan.members`` order, ``points`` what each
    earned by the normal rules; discounts and free items change the amount, not the ledger.
    """
    specs = {o.code: o for o in programme.offers}
    arm = plan.arm[np.flatnonzero(plan.converted)]
    extra = np.zeros(len(purchases), dtype=np.int64)
    for index, code in enumerate(OFFER_CODES):
        got, spec = arm == index, specs[code]
        if spec.kind is OfferKind.BONUS_POINTS:
            extra[got & (purchases.amount >= BONUS_MINIMUM_CENTS)] = int(spec.value)
        elif spec.kind is OfferKind.POINTS_MULTIPLIER:
            extra[got] = np.floor(points[got] * (spec.value - 1)).astype(np.int64)
    rows = np.flatnonzero(extra > 0)
    codes = np.array(OFFER_CODES, dtype=object)[arm[rows]]
    members = purchases.member[rows] + first_member_id
    return Entries.of(purchases.member[rows], purchases.at[rows], extra[rows], kind="earn",
                      reason=[f"offer {c}" for c in codes.tolist()], source="offer",
                      key=[f"offer:{run_id}:{m}" for m in members.tolist()], txn=txn_ids[rows])


def write_truth(path: Path, plan: CampaignPlan, first_member_id: int) -> Path:
    """Write the truth file (gzip with a zero timestamp, so identical seeds give identical bytes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = io.StringIO()
    out = csv.writer(text, lineterminator="\n")
    out.writerow(TRUTH_COLUMNS)
    ids = (plan.members + first_member_id).tolist()
    columns: list[list[Any]] = [
        ids, [f"S{m + 1:07d}" for m in plan.members.tolist()], plan.arm_names(), _fixed(plan.p_base),
        *(_fixed(plan.tau[c]) for c in OFFER_CODES), *(plan.spend_lift[c].tolist() for c in OFFER_CODES),
        plan.converted.astype(np.int64).tolist(), *(_fixed(plan.features[f]) for f in FEATURES),
    ]
    out.writerows(zip(*columns, strict=True))
    with path.open("wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0,
                                                filename="") as zipped:
        zipped.write(text.getvalue().encode())
    return path


def _fixed(values: np.ndarray) -> list[Any]:
    if np.issubdtype(np.asarray(values).dtype, np.integer):
        return np.asarray(values).tolist()
    return [format(v, ".6f") if v == v else "nan" for v in np.asarray(values, dtype=float).tolist()]


class CampaignStep:
    """The campaign's part in the month-by-month history.

    Before the slot it accumulates features; the period starting at the slot is the
    attribution window, where audience members buy only if they convert.
    """

    def __init__(self, session: Session, writer: BulkWriter, programme: Programme, pop: Population,
                 categories: list[str], first_member_id: int, seed: int, window: FeatureWindow) -> None:
        self.session, self.writer, self.programme, self.pop = session, writer, programme, pop
        self.categories, self.first_member_id, self.seed, self.window = categories, first_member_id, seed, window
        self.email_opt_in_us = np.full(pop.size, -1, dtype=np.int64)
        self.plan: CampaignPlan | None = None
        self.run_id = 0

    def span(self) -> tuple[int, int]:
        """The attribution window, which the history must keep as one period."""
        return self.window.slot_us, self.window.slot_us + ATTRIBUTION_DAYS * US_PER_DAY

    def observe(self, period: Period, purchases: Purchases) -> None:
        """Feed a finished period's purchases to the features, while before the slot."""
        if period.end_us <= self.window.slot_us:
            self.window.add(purchases)

    def start(self, period: Period, tiers: TierTracker) -> Purchases | None:
        """At the slot: run the experiment, write its rows and return the converters' purchases."""
        if period.start_us != self.window.slot_us:
            return None
        thresholds = [t.threshold for t in self.programme.tiers.tiers]
        plan = plan_campaign(stream(self.seed, 4), self.pop, self.window, self.email_opt_in_us, thresholds,
                             tiers.rank, tiers.qualifying(period.start_us))
        self.plan = plan
        self.run_id = write_campaign(self.session, self.writer, stream(self.seed, 5), plan, self.pop,
                                     self.first_member_id)
        rng = stream(self.seed, 6)
        members = plan.members[plan.converted]
        category = draw_categories(rng, self.pop.preference[members])
        amount = draw_baskets(rng, self.pop, members, category, self.categories, shift=spend_shift(plan))
        return Purchases(members, conversion_times(rng, plan), amount, category,
                         draw_channels(rng, self.pop, members))

    def keep_organic(self, purchases: Purchases) -> np.ndarray:
        """Mask of the window's organic purchases to keep: the audience's are replaced by the experiment."""
        assert self.plan is not None
        return ~np.isin(purchases.member, self.plan.members)

    def offer_entries(self, purchases: Purchases, points: np.ndarray, txn_ids: np.ndarray, converters: int) -> Entries:
        """Offer bonuses on the converters' purchases (the last ``converters`` rows)."""
        assert self.plan is not None
        rows = np.arange(len(purchases) - converters, len(purchases))
        return offer_entries(self.programme, self.plan, purchases.take(rows), points[rows], txn_ids[rows],
                             self.run_id, self.first_member_id)

    def write_truth(self, truth_dir: Path) -> Path:
        """Write the truth file (empty but for its header when nobody was in the audience)."""
        path = truth_dir / f"{CAMPAIGN_NAME}_truth.csv.gz"
        plan = self.plan or _empty_plan(self.window.slot_us)
        return write_truth(path, plan, self.first_member_id)


def _empty_plan(slot_us: int) -> CampaignPlan:
    none = np.zeros(0, dtype=np.int64)
    empty = dict.fromkeys(OFFER_CODES, none)
    return CampaignPlan(slot_us, none, none, {f: np.zeros(0) for f in FEATURES}, np.zeros(0), empty, empty,
                        np.zeros(0, dtype=bool))
