"""Render contexts for real members (from the database, in bulk) and sample personas (no database).

:func:`build_contexts` serves a chunk of a campaign: one query for the members, one for their
qualifying values (points or spend over the tier window, for "points to the next tier") and, when
asked, one for the points about to expire; never a query per member. :func:`personas` are the
sample members the lint and the preview render with: one per shipped language and a few edge cases
(a top-tier member, a name with markup and a quote in it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta

import sqlalchemy as sa
from sqlmodel import Session

from loyalty.db import fetch_rows
from loyalty.expiry import points_expiring
from loyalty.models import MEMBERS
from loyalty.programme import OfferSpec, Programme, TierSpec
from loyalty.rendering_types import CampaignView, MemberView, OfferView, RenderContext, TierView
from loyalty.tiers import qualifying_query
from loyalty.types import utcnow


def tier_view(spec: TierSpec) -> TierView:
    """A tier as templates see it."""
    return TierView(spec.code, spec.name, spec.threshold, spec.earn_multiplier, tuple(spec.perks))


def offer_view(spec: OfferSpec, expires_at: date | None = None) -> OfferView:
    """An offer as templates see it."""
    return OfferView(spec.code, spec.name, spec.kind.value, spec.value, spec.description, spec.min_tier, expires_at)


def offer_for_message(programme: Programme, name: str) -> OfferView | None:
    """The offer of message ``offers/<code>`` (None for other messages or unknown codes)."""
    folder, _, code = name.partition("/")
    if folder != "offers":
        return None
    return next((offer_view(o) for o in programme.offers if o.code == code), None)


def tier_progress(programme: Programme, tier_code: str,
                  qualifying: int) -> tuple[TierView, TierView | None, int | None]:
    """(tier, next tier, points or spend still needed) for a member's tier and qualifying value."""
    tiers = programme.tiers.tiers
    try:
        rank = programme.tiers.rank(tier_code)
    except KeyError:
        rank = 0
    current = tier_view(tiers[rank])
    if rank + 1 >= len(tiers):
        return current, None, None
    following = tiers[rank + 1]
    return current, tier_view(following), max(0, following.threshold - qualifying)


def build_contexts(session: Session, programme: Programme, member_ids: Sequence[int], *,
                   offer: OfferView | None = None, campaign: CampaignView | None = None,
                   recommendations: dict[int, tuple[OfferView, ...]] | None = None,
                   expiring_within_days: int | None = None, now: datetime | None = None) -> dict[int, RenderContext]:
    """A :class:`RenderContext` for each existing member in ``member_ids`` (missing ids are left out)."""
    if not member_ids:
        return {}
    now = now or utcnow()
    ids = sorted({int(i) for i in member_ids})
    m = MEMBERS.c
    rows = fetch_rows(session, sa.select(m.id, m.first_name, m.last_name, m.email, m.phone, m.locale, m.time_zone,
                                         m.tier, m.points_balance, m.joined_at).where(m.id.in_(ids)))
    qualifying = {int(mid): int(value) for mid, _, value in
                  fetch_rows(session, qualifying_query(programme.tiers, now, member_ids=ids))}
    expiring: dict[int, int] = {}
    if expiring_within_days is not None:
        expiring = points_expiring(session, programme, within_days=expiring_within_days, as_of=now,
                                   id_range=(ids[0], ids[-1] + 1))
    expiry_date = (now + timedelta(days=expiring_within_days)).date() if expiring_within_days is not None else None
    contexts = {}
    for mid, first, last, email, phone, locale, zone, tier, balance, joined in rows:
        current, following, needed = tier_progress(programme, tier, qualifying.get(int(mid), 0))
        member = MemberView(int(mid), first or "", last or "", email, phone, locale or "en_CA",
                            zone or "America/Toronto", joined)
        contexts[int(mid)] = RenderContext(
            member=member, tier=current, points=int(balance), next_tier=following, points_to_next_tier=needed,
            offer=offer, recommendations=(recommendations or {}).get(int(mid), ()), campaign=campaign,
            points_expiring=expiring.get(int(mid), 0),
            points_expiry_date=expiry_date if expiring.get(int(mid)) else None, now=now)
    return contexts


#: Sample members for lint and preview: (key, label, locale, first, last, tier, points, qualifying).
_PERSONAS = (
    ("camille", "Camille Tremblay (fr_CA, Silver)", "fr_CA", "Camille", "Tremblay", "silver", 1250, 3200),
    ("olivia", "Olivia Smith (en_CA, Gold)", "en_CA", "Olivia", "Smith", "gold", 7420, 9800),
    ("lea", "Léa Côté (fr_FR, Member)", "fr_FR", "Léa", "Côté", "member", 80, 80),
    ("noah", "Noah Chen (en_US, Platinum)", "en_US", "Noah", "Chen", "platinum", 23150, 31000),
    ("mallory", 'Mallory <script>alert(1)</script> "O\'Neil" (en_CA, markup in the name)', "en_CA",
     "<script>alert(1)</script>", "O'Neil\r\nBcc: victim@example.com", "member", 1, 1),
)
PERSONA_BASE_ID = 900_000


def personas(programme: Programme, *, name: str = "", now: datetime | None = None) -> dict[str, RenderContext]:
    """Sample members (no database) for message ``name``: its offer, some recommendations, points expiring."""
    now = now or datetime(2026, 3, 5, 15, 0, tzinfo=UTC)
    offer = offer_for_message(programme, name)
    recommendations = tuple(offer_view(o) for o in programme.offers[:3] if offer is None or o.code != offer.code)
    campaign = CampaignView(code=name.rsplit("/", 1)[-1] or "preview", name="Preview")
    result = {}
    for n, (key, _label, locale, first, last, tier, points, qualifying) in enumerate(_PERSONAS, 1):
        current, following, needed = tier_progress(programme, tier, qualifying)
        member = MemberView(PERSONA_BASE_ID + n, first, last, f"{key}@example.com", "+15145550100", locale,
                            "America/Toronto" if locale != "fr_FR" else "Europe/Paris", now - timedelta(days=400))
        result[key] = RenderContext(member=member, tier=current, points=points, next_tier=following,
                                    points_to_next_tier=needed, offer=offer, recommendations=recommendations,
                                    campaign=campaign, points_expiring=min(points, 500),
                                    points_expiry_date=(now + timedelta(days=30)).date(), now=now)
    return result


def persona_labels() -> dict[str, str]:
    """Persona key → human label (for the preview page and the CLI)."""
    return {key: label for key, label, *_ in _PERSONAS}


def with_offer(context: RenderContext, offer: OfferView | None) -> RenderContext:
    """``context`` carrying ``offer`` instead."""
    return replace(context, offer=offer)
