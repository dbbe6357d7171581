"""What templates can see: the documented render context, as small read-only values.

Templates get plain frozen dataclasses, never ORM rows: nothing a template touches can load
more data, write, or reach a session. :data:`DOCUMENTED` lists every top-level variable (the lint
refuses any other name) and is the source of the table in ``templates/README.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from channels.segments import SegmentInfo


@dataclass(frozen=True, slots=True)
class MemberView:
    """The member a message is for (names are member-supplied: always escaped in HTML)."""

    id: int
    first_name: str
    last_name: str
    email: str | None
    phone: str | None
    locale: str = "en_CA"
    time_zone: str = "America/Toronto"
    joined_at: datetime | None = None

    @property
    def full_name(self) -> str:
        """First and last name, or whichever is known."""
        return " ".join(part for part in (self.first_name, self.last_name) if part)

    @property
    def language(self) -> str:
        """``fr`` for ``fr_CA``."""
        return self.locale.split("_")[0].lower()


@dataclass(frozen=True, slots=True)
class TierView:
    """A tier of the programme."""

    code: str
    name: str
    threshold: int
    earn_multiplier: float = 1.0
    perks: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class OfferView:
    """An offer from ``config/offers.yaml`` (``value``: percent, cents or points depending on ``kind``)."""

    code: str
    name: str
    kind: str
    value: float
    description: str = ""
    min_tier: str | None = None
    expires_at: date | None = None


@dataclass(frozen=True, slots=True)
class CampaignView:
    """The campaign (or trigger) sending the message; ``code`` becomes ``utm_campaign``."""

    code: str
    name: str = ""


@dataclass(frozen=True, slots=True)
class ProgrammeView:
    """The programme's name and currency."""

    name: str
    currency: str


#: The value types templates read attributes from directly (plain data, no methods worth guarding).
VIEW_TYPES = (MemberView, TierView, OfferView, CampaignView, ProgrammeView)


@dataclass(frozen=True)
class RenderContext:
    """Everything a message may say about one member. Links are added by the library."""

    member: MemberView
    tier: TierView
    points: int
    next_tier: TierView | None = None
    points_to_next_tier: int | None = None
    offer: OfferView | None = None
    recommendations: tuple[OfferView, ...] = ()
    campaign: CampaignView | None = None
    points_expiring: int = 0
    points_expiry_date: date | None = None
    now: datetime = field(default_factory=lambda: datetime.now(UTC))
    #: The outbox key the message is queued under (survey links carry it); None outside a campaign run.
    message_key: str | None = None

    def variables(self) -> dict[str, Any]:
        """The top-level template variables (without links and programme, which the library adds)."""
        return {
            "member": self.member, "tier": self.tier, "points": self.points, "next_tier": self.next_tier,
            "points_to_next_tier": self.points_to_next_tier, "offer": self.offer,
            "recommendations": self.recommendations, "campaign": self.campaign,
            "points_expiring": self.points_expiring, "points_expiry_date": self.points_expiry_date, "now": self.now,
            "message_key": self.message_key,
        }


#: Every variable a template may use, with what it holds (rendered into templates/README.md).
DOCUMENTED: dict[str, str] = {
    "member": "the member: first_name, last_name, full_name, email, phone, locale, language, time_zone, joined_at",
    "tier": "their tier: code, name, threshold, earn_multiplier, perks (a list)",
    "points": "their points balance (a number: use |points or |number)",
    "next_tier": "the next tier up (same fields as tier), or none at the top",
    "points_to_next_tier": "points still needed to reach next_tier, or none",
    "offer": "the offer this message carries (code, name, kind, value, description, min_tier, expires_at), or none",
    "recommendations": "other offers picked for the member (a list, possibly empty)",
    "campaign": "the campaign or trigger sending it: code, name (or none)",
    "points_expiring": "points that expire soon (0 when none)",
    "points_expiry_date": "when they expire (a date), or none",
    "now": "the time of rendering (UTC; |date and |datetime show it in the member's zone)",
    "programme": "the programme: name, currency",
    "unsubscribe_url": "the member's one-click unsubscribe link for this channel",
    "preferences_url": "the member's preference page",
    "site_url": "the shop's home page",
    "survey_url": "survey_url(): this message's survey page; add ?score=N (0-10) for a one-click answer",
    "link": "link(route, **params): a link to the shop; routes: home, rewards, offer (code=...), tiers, app",
    "range": "range(n), at most 1,000 items",
}


@dataclass(frozen=True)
class RenderLimits:
    """Channel limits and the budget of one render."""

    sms_segment_cap: int = 3
    push_title_max: int = 50
    push_body_max: int = 150
    subject_max: int = 150
    timeout_seconds: float = 1.0
    max_output_chars: int = 400_000


@dataclass(frozen=True, init=False)
class Rendered:
    """One rendered message: ``content`` is the outbox payload for ``channel``."""

    name: str
    channel: str
    language: str
    content: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    segments: SegmentInfo | None = None

    def __init__(self, name: str, channel: str, language: str, content: dict[str, Any],
                 headers: dict[str, str] | None = None, segments: SegmentInfo | None = None) -> None:
        # Written straight into __dict__: a frozen dataclass's own __init__ pays object.__setattr__ per field,
        # a measurable share of rendering a short SMS. Still frozen afterwards.
        self.__dict__.update(name=name, channel=channel, language=language, content=content,
                             headers={} if headers is None else headers, segments=segments)
