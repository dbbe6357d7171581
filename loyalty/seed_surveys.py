"""Answers to a past NPS survey for the seeded programme (:mod:`loyalty.seed`).

The survey went out :data:`SURVEY_DAYS_BEFORE` days before ``as_of`` (at 14:00 UTC, morning in the
Americas) to members who had bought in the :data:`ACTIVE_DAYS` days before it; a seeded random
:data:`RESPONSE_RATE` of them answered, over the following days (exponential delay, mean 1.5 days,
at most 10). Each answer is written like one recorded by :func:`loyalty.surveys.record_response`:
``invitation_key`` ``seed:nps:<member_id>``, survey ``nps``, channel ``web`` or ``sms``.

Scores (:func:`draw_scores`). A latent satisfaction is a normal draw whose mean rises with the tier the
member held when the survey went out and with how often they had bought in the 90 days before it:

    satisfaction = 7.0 + 1.6 * tier_position + 1.2 * activity + Normal(0, 1.8)

where ``tier_position`` is 0 for the entry tier and 1 for the top one (linear between), ``activity`` is
``log(1 + purchases) / log(1 + 12)`` capped at 1 (12 purchases in 90 days, weekly shoppers, count as
fully active), and the score is the satisfaction rounded and clipped to 0-10. So an occasional entry-tier
buyer is about as often a detractor as a promoter (NPS near 0), an active platinum member skews promoter
(NPS about +60), and the programme lands at a retail-like +10..+30. A share of respondents leave a
comment (detractors most often), drawn from a short list per NPS category in the member's language.

All of it is vectorised: two SQL aggregates read the eligible members, numpy draws every answer, and
the rows go in through the seeder's :class:`~loyalty.seed_io.BulkWriter` in the seeding transaction.
The same seed, members and ``as_of`` give the same rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import sqlalchemy as sa
from sqlmodel import Session

from loyalty.db import fetch_rows
from loyalty.models import MEMBERS, TIER_CHANGES, TRANSACTIONS
from loyalty.programme import Programme
from loyalty.seed_io import US_PER_DAY, BulkWriter, to_us
from loyalty.seed_population import stream
from loyalty.types import NPS_SCORES, NpsCategory

SURVEY_DAYS_BEFORE = 60
ACTIVE_DAYS = 90
RESPONSE_RATE = 0.15
#: Random stream of the survey draws (the seeder's other streams use 1-6 and 1000+).
STREAM = 7
SMS_SHARE = 0.35  # of respondents with a phone number: the rest answered the email's link
MEAN_DELAY_DAYS, MAX_DELAY_DAYS = 1.5, 10.0
BASE, TIER_EFFECT, ACTIVITY_EFFECT, NOISE = 7.0, 1.6, 1.2, 1.8
FULLY_ACTIVE_PURCHASES = 12
#: Chance of a comment by category: unhappy members say why more often.
COMMENT_RATE = {"detractor": 0.45, "passive": 0.20, "promoter": 0.30}
VERBATIMS = {
    "en": {
        "detractor": ("Points take too long to add up.", "Checkout lines were long and nobody helped.",
                      "The rewards I want are never in stock.", "Too many emails, not enough real offers."),
        "passive": ("Fine overall, the app could be faster.", "Decent rewards but nothing special.",
                    "Good prices, average service."),
        "promoter": ("Staff are always friendly and helpful.", "Love the birthday bonus!",
                     "The points add up quickly, great value.", "Easy to redeem in store and online."),
    },
    "fr": {
        "detractor": ("Les points s'accumulent trop lentement.", "Trop d'attente à la caisse.",
                      "Les récompenses que je veux ne sont jamais disponibles."),
        "passive": ("Correct dans l'ensemble, l'appli pourrait être plus rapide.",
                    "Des avantages corrects, sans plus."),
        "promoter": ("Personnel toujours aimable.", "J'adore le bonus d'anniversaire !",
                     "Les points s'accumulent vite, très avantageux."),
    },
}
CATEGORIES = (NpsCategory.DETRACTOR, NpsCategory.PASSIVE, NpsCategory.PROMOTER)


@dataclass(frozen=True)
class Eligible:
    """Members who had bought in the window before the survey, in member id order."""

    member_id: np.ndarray
    purchases: np.ndarray  # positive transactions in the window
    tier_position: np.ndarray  # 0 (entry tier) .. 1 (top tier) when the survey went out
    french: np.ndarray  # bool: the member's locale is French
    has_phone: np.ndarray  # bool


def survey_time(as_of: datetime) -> datetime:
    """When the seeded survey went out: 14:00 UTC on the day :data:`SURVEY_DAYS_BEFORE` days before ``as_of``."""
    day = (as_of - timedelta(days=SURVEY_DAYS_BEFORE)).replace(hour=0, minute=0, second=0, microsecond=0)
    return day + timedelta(hours=14)


def eligible_members(session: Session, programme: Programme, sent_at: datetime) -> Eligible:
    """Buyers of the :data:`ACTIVE_DAYS` before ``sent_at`` with their purchase count, tier then, locale, phone."""
    t, m, c = TRANSACTIONS.c, MEMBERS.c, TIER_CHANGES.c
    bought = (sa.select(t.member_id, sa.func.count().label("n")).where(
        t.occurred_at >= sent_at - timedelta(days=ACTIVE_DAYS), t.occurred_at < sent_at, t.amount_cents > 0)
        .group_by(t.member_id).subquery("bought"))
    rank = sa.func.row_number().over(partition_by=c.member_id, order_by=(c.changed_at.desc(), c.id.desc()))
    moves = sa.select(c.member_id, c.to_tier, rank.label("rank")).where(c.changed_at <= sent_at).subquery("moves")
    query = (sa.select(bought.c.member_id, bought.c.n, moves.c.to_tier, m.locale, m.phone.is_not(None))
             .join(MEMBERS, m.id == bought.c.member_id)
             .outerjoin(moves, sa.and_(moves.c.member_id == bought.c.member_id, moves.c.rank == 1))
             .order_by(bought.c.member_id))
    rows = fetch_rows(session, query)
    codes = [tier.code for tier in programme.tiers.tiers]
    top = max(len(codes) - 1, 1)
    ids, counts, tiers, locales, phones = (list(col) for col in zip(*rows, strict=True)) if rows else ([],) * 5
    position = np.array([codes.index(tier) if tier in codes else 0 for tier in tiers], dtype=np.float64) / top
    return Eligible(np.asarray(ids, dtype=np.int64), np.asarray(counts, dtype=np.int64), position,
                    np.array([str(loc or "").startswith("fr") for loc in locales], dtype=bool),
                    np.asarray(phones, dtype=bool))


def draw_scores(rng: np.random.Generator, tier_position: np.ndarray, purchases: np.ndarray) -> np.ndarray:
    """0-10 scores from the latent satisfaction in the module docstring (one per member)."""
    activity = np.minimum(np.log1p(purchases) / np.log1p(FULLY_ACTIVE_PURCHASES), 1.0)
    latent = BASE + TIER_EFFECT * tier_position + ACTIVITY_EFFECT * activity + rng.normal(0, NOISE, purchases.size)
    return np.clip(np.rint(latent), 0, 10).astype(np.int64)


def category_index(scores: np.ndarray) -> np.ndarray:
    """0 detractor (0-6), 1 passive (7-8), 2 promoter (9-10): indexes into :data:`CATEGORIES`."""
    starts = [NPS_SCORES[NpsCategory.PASSIVE][0], NPS_SCORES[NpsCategory.PROMOTER][0]]
    return np.searchsorted(np.array(starts), scores, side="right")


def draw_verbatims(rng: np.random.Generator, scores: np.ndarray, french: np.ndarray) -> list[str | None]:
    """A comment or None per answer: by category's :data:`COMMENT_RATE`, from the list in the member's language."""
    category = category_index(scores)
    rates = np.array([COMMENT_RATE[name] for name in CATEGORIES])
    comments = rng.random(scores.size) < rates[category]
    pick = rng.random(scores.size)  # a uniform pick, scaled to each list's length below
    texts: list[str | None] = [None] * scores.size
    for lang, is_lang in (("fr", french), ("en", ~french)):
        for index, name in enumerate(CATEGORIES):
            options = VERBATIMS[lang][name]
            chosen = np.flatnonzero(comments & is_lang & (category == index))
            for row, option in zip(chosen.tolist(), (pick[chosen] * len(options)).astype(int).tolist(), strict=True):
                texts[row] = options[option]  # loops over the few commenters only, 12 lists
    return texts


def seed_survey_responses(session: Session, writer: BulkWriter, programme: Programme, *, seed: int,
                          as_of: datetime) -> int:
    """Write the seeded NPS answers (module docstring) in the session's transaction; returns how many."""
    sent_at = survey_time(as_of)
    eligible = eligible_members(session, programme, sent_at)
    rng = stream(seed, STREAM)
    answered = np.flatnonzero(rng.random(eligible.member_id.size) < RESPONSE_RATE)
    if answered.size == 0:
        return 0
    scores = draw_scores(rng, eligible.tier_position[answered], eligible.purchases[answered])
    verbatims = draw_verbatims(rng, scores, eligible.french[answered])
    sms = eligible.has_phone[answered] & (rng.random(answered.size) < SMS_SHARE)
    delay = np.minimum(rng.exponential(MEAN_DELAY_DAYS, answered.size), MAX_DELAY_DAYS)
    at = writer.times(to_us(sent_at) + np.rint(delay * US_PER_DAY).astype(np.int64))
    members = eligible.member_id[answered]
    first = writer.next_id("survey_responses")
    count = writer.insert("survey_responses", {
        "id": np.arange(first, first + answered.size), "invitation_key": [f"seed:nps:{m}" for m in members.tolist()],
        "member_id": members, "survey": ["nps"] * answered.size, "channel": np.where(sms, "sms", "web").tolist(),
        "score": scores, "verbatim": verbatims, "responded_at": at, "updated_at": at,
    })
    writer.sync_sequence("survey_responses")
    return count
