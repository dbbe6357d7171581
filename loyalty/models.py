"""The loyalty programme's tables (SQLModel).

Conventions: every timestamp is stored as UTC and read back timezone-aware (see
:class:`loyalty.types.UTCDateTime`); money is an integer count of minor units (cents) so
sums are exact on every backend; enums are stored as short strings, not native database
enums, so migrations stay plain. The schema itself is owned by the Alembic migrations in
``loyalty/migrations``; a test asserts the two never drift apart.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from loyalty.types import (
    Channel,
    OfferKind,
    OutboxStatus,
    PointsKind,
    PushKind,
    RunStatus,
    TierDirection,
    UTCDateTime,
    enum_type,
    utcnow,
)


def _created() -> Any:
    return Field(default_factory=utcnow, sa_type=UTCDateTime)


class Tier(SQLModel, table=True):
    """A tier of the programme, synced from ``config/tiers.yaml``."""

    __tablename__ = "tiers"

    code: str = Field(primary_key=True, max_length=32)
    name: str = Field(max_length=64)
    rank: int = Field(unique=True)
    threshold: int = Field(ge=0, description="Qualifying points or spend (minor units) over the window.")
    earn_multiplier: float = Field(default=1.0, gt=0)
    perks: list[str] = Field(default_factory=list, sa_type=sa.JSON)


class Offer(SQLModel, table=True):
    """An offer a campaign may choose, synced from ``config/offers.yaml``."""

    __tablename__ = "offers"

    code: str = Field(primary_key=True, max_length=64)
    name: str = Field(max_length=128)
    kind: OfferKind = Field(sa_type=enum_type(OfferKind))
    value: float = Field(description="Percent, minor units, or points, depending on kind.")
    cost_cents: int = Field(ge=0, description="Expected cost to the programme of one redemption.")
    min_tier: str | None = Field(default=None, foreign_key="tiers.code", max_length=32)
    cooldown_days: int = Field(default=0, ge=0)
    active: bool = True
    description: str = ""


class Member(SQLModel, table=True):
    """A programme member. ``points_balance`` always equals the sum of their ledger."""

    __tablename__ = "members"
    __table_args__ = (
        sa.CheckConstraint("points_balance >= 0", name="ck_members_points_balance_non_negative"),
        sa.Index("ix_members_tier_last_purchase", "tier", "last_purchase_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    external_id: str = Field(max_length=64, unique=True)
    first_name: str = Field(default="", max_length=100)
    last_name: str = Field(default="", max_length=100)
    email: str | None = Field(default=None, max_length=254, index=True)
    phone: str | None = Field(default=None, max_length=20, description="E.164")
    locale: str = Field(default="en_CA", max_length=10)
    time_zone: str = Field(default="America/Toronto", max_length=64)
    tier: str = Field(default="member", foreign_key="tiers.code", max_length=32)
    points_balance: int = 0
    joined_at: datetime = _created()
    last_purchase_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    birthday: date | None = None
    created_at: datetime = _created()
    updated_at: datetime = _created()


class Transaction(SQLModel, table=True):
    """A purchase (or refund, with a negative amount) by a member."""

    __tablename__ = "transactions"
    __table_args__ = (sa.Index("ix_transactions_member_occurred", "member_id", "occurred_at"),)

    id: int | None = Field(default=None, primary_key=True)
    external_id: str = Field(max_length=64, unique=True)
    member_id: int = Field(foreign_key="members.id")
    amount_cents: int
    currency: str = Field(default="CAD", max_length=3)
    category: str = Field(default="general", max_length=32)
    channel: str = Field(default="store", max_length=16)
    occurred_at: datetime = Field(sa_type=UTCDateTime, index=True)


class PointsEntry(SQLModel, table=True):
    """One line of the append-only points ledger: positive credits, negative debits."""

    __tablename__ = "points_entries"
    __table_args__ = (sa.Index("ix_points_entries_member_created", "member_id", "created_at"),)

    id: int | None = Field(default=None, primary_key=True)
    member_id: int = Field(foreign_key="members.id")
    kind: PointsKind = Field(sa_type=enum_type(PointsKind))
    points: int
    reason: str = Field(default="", max_length=200)
    source: str = Field(default="", max_length=64)
    idempotency_key: str | None = Field(default=None, max_length=128, unique=True)
    transaction_id: int | None = Field(default=None, foreign_key="transactions.id")
    created_at: datetime = _created()


class ChannelConsent(SQLModel, table=True):
    """A member's current consent for one channel, with where and when it was given."""

    __tablename__ = "channel_consents"
    __table_args__ = (sa.UniqueConstraint("member_id", "channel", name="uq_channel_consents_member_channel"),)

    id: int | None = Field(default=None, primary_key=True)
    member_id: int = Field(foreign_key="members.id")
    channel: Channel = Field(sa_type=enum_type(Channel))
    opted_in: bool
    source: str = Field(default="", max_length=64)
    recorded_at: datetime = _created()


class Suppression(SQLModel, table=True):
    """An address that must not be sent to on a channel, whoever it belongs to, and why.

    Kept per address rather than per member: a hard-bounced mailbox or a number that texted
    STOP stays blocked even if it is re-imported under another member.
    """

    __tablename__ = "suppressions"
    __table_args__ = (sa.UniqueConstraint("channel", "address", name="uq_suppressions_channel_address"),)

    id: int | None = Field(default=None, primary_key=True)
    channel: Channel = Field(sa_type=enum_type(Channel))
    address: str = Field(max_length=1024, description="Normalised email, E.164 number or push endpoint.")
    member_id: int | None = Field(default=None, foreign_key="members.id", index=True)
    reason: str = Field(max_length=32, description="hard_bounce, spam_complaint, sms_stop, invalid_address, ...")
    source: str = Field(default="", max_length=64)
    created_at: datetime = _created()


class PushSubscription(SQLModel, table=True):
    """A Web Push subscription (endpoint + keys) or an FCM registration token."""

    __tablename__ = "push_subscriptions"

    id: int | None = Field(default=None, primary_key=True)
    member_id: int = Field(foreign_key="members.id", index=True)
    kind: PushKind = Field(sa_type=enum_type(PushKind))
    endpoint: str = Field(max_length=1024, unique=True, description="Web Push endpoint or FCM token.")
    p256dh: str | None = Field(default=None, max_length=128)
    auth: str | None = Field(default=None, max_length=64)
    created_at: datetime = _created()
    last_success_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class Campaign(SQLModel, table=True):
    """A campaign known to the database; its full spec lives in ``config/campaigns``."""

    __tablename__ = "campaigns"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=64, unique=True)
    description: str = ""
    created_at: datetime = _created()


class CampaignRun(SQLModel, table=True):
    """One execution of a campaign for a scheduled slot; a re-run of the slot resumes it."""

    __tablename__ = "campaign_runs"
    __table_args__ = (sa.UniqueConstraint("campaign_id", "slot", name="uq_campaign_runs_campaign_slot"),)

    id: int | None = Field(default=None, primary_key=True)
    campaign_id: int = Field(foreign_key="campaigns.id")
    slot: datetime = Field(sa_type=UTCDateTime)
    status: RunStatus = Field(default=RunStatus.PLANNED, sa_type=enum_type(RunStatus))
    holdout_share: float = Field(default=0.1, ge=0, le=1)
    attribution_days: int = Field(default=14, ge=0)
    started_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    finished_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    stats: dict[str, Any] = Field(default_factory=dict, sa_type=sa.JSON)


class CampaignAssignment(SQLModel, table=True):
    """Which experiment arm (an offer, a variant, or the holdout) a member got in a run."""

    __tablename__ = "campaign_assignments"
    __table_args__ = (sa.UniqueConstraint("run_id", "member_id", name="uq_campaign_assignments_run_member"),)

    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="campaign_runs.id")
    member_id: int = Field(foreign_key="members.id", index=True)
    arm: str = Field(max_length=64, description="'holdout' or the offer/variant sent.")
    offer_code: str | None = Field(default=None, foreign_key="offers.code", max_length=64)
    variant: str | None = Field(default=None, max_length=32)
    assigned_at: datetime = _created()


class OutboxMessage(SQLModel, table=True):
    """A message to deliver. ``key`` is unique, so the same message is never queued twice."""

    __tablename__ = "outbox_messages"
    __table_args__ = (
        sa.Index("ix_outbox_messages_dispatch", "status", "channel", "not_before"),
        sa.Index("ix_outbox_messages_member_created", "member_id", "created_at"),
        sa.Index("ix_outbox_messages_run_member", "run_id", "member_id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    key: str = Field(max_length=128, unique=True)
    run_id: int | None = Field(default=None, foreign_key="campaign_runs.id", index=True)
    member_id: int = Field(foreign_key="members.id")
    channel: Channel = Field(sa_type=enum_type(Channel))
    template: str = Field(max_length=128)
    offer_code: str | None = Field(default=None, foreign_key="offers.code", max_length=64)
    payload: dict[str, Any] = Field(default_factory=dict, sa_type=sa.JSON)
    status: OutboxStatus = Field(default=OutboxStatus.PENDING, sa_type=enum_type(OutboxStatus))
    attempts: int = 0
    provider_id: str | None = Field(default=None, max_length=128, index=True)
    last_error: str | None = Field(default=None, max_length=500)
    skip_reason: str | None = Field(default=None, max_length=64)
    not_before: datetime | None = Field(default=None, sa_type=UTCDateTime)
    created_at: datetime = _created()
    updated_at: datetime = _created()
    sent_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class DeliveryEvent(SQLModel, table=True):
    """A provider's report about a message (delivered, opened, bounced...), stored once."""

    __tablename__ = "delivery_events"

    id: int | None = Field(default=None, primary_key=True)
    outbox_id: int | None = Field(default=None, foreign_key="outbox_messages.id", index=True)
    provider: str = Field(max_length=16)
    provider_event_id: str = Field(max_length=128, unique=True)
    event: str = Field(max_length=32)
    occurred_at: datetime = Field(sa_type=UTCDateTime)
    payload: dict[str, Any] = Field(default_factory=dict, sa_type=sa.JSON)


class TierChange(SQLModel, table=True):
    """A member moving between tiers. Rows with no ``handled_at`` still owe a message."""

    __tablename__ = "tier_changes"

    id: int | None = Field(default=None, primary_key=True)
    member_id: int = Field(foreign_key="members.id", index=True)
    from_tier: str = Field(max_length=32)
    to_tier: str = Field(max_length=32)
    direction: TierDirection = Field(sa_type=enum_type(TierDirection))
    qualifying_value: int = Field(description="Points or spend over the window at evaluation time.")
    changed_at: datetime = _created()
    handled_at: datetime | None = Field(default=None, sa_type=UTCDateTime, index=True)


# Core tables, typed once here for set-based statements (SQLModel leaves ``__table__`` untyped).
TIERS: sa.Table = Tier.__table__  # type: ignore[attr-defined]
OFFERS: sa.Table = Offer.__table__  # type: ignore[attr-defined]
MEMBERS: sa.Table = Member.__table__  # type: ignore[attr-defined]
TRANSACTIONS: sa.Table = Transaction.__table__  # type: ignore[attr-defined]
POINTS_ENTRIES: sa.Table = PointsEntry.__table__  # type: ignore[attr-defined]
CHANNEL_CONSENTS: sa.Table = ChannelConsent.__table__  # type: ignore[attr-defined]
SUPPRESSIONS: sa.Table = Suppression.__table__  # type: ignore[attr-defined]
PUSH_SUBSCRIPTIONS: sa.Table = PushSubscription.__table__  # type: ignore[attr-defined]
CAMPAIGNS: sa.Table = Campaign.__table__  # type: ignore[attr-defined]
CAMPAIGN_RUNS: sa.Table = CampaignRun.__table__  # type: ignore[attr-defined]
CAMPAIGN_ASSIGNMENTS: sa.Table = CampaignAssignment.__table__  # type: ignore[attr-defined]
OUTBOX_MESSAGES: sa.Table = OutboxMessage.__table__  # type: ignore[attr-defined]
DELIVERY_EVENTS: sa.Table = DeliveryEvent.__table__  # type: ignore[attr-defined]
TIER_CHANGES: sa.Table = TierChange.__table__  # type: ignore[attr-defined]


class CampaignOutcome(SQLModel, table=True):
    """What happened to one member of one campaign run: the message facts and the attributed outcome.

    Intent-to-treat: a treated member counts in their arm whether or not the message went out, and
    treated and holdout are both measured over ``[slot, window_end)``. Purchases are counted up to
    ``counted_until`` (``min(as_of, window_end)`` of the last attribution); ``final`` rows (window
    closed when attributed) are never rewritten.
    """

    __tablename__ = "campaign_outcomes"
    __table_args__ = (sa.UniqueConstraint("run_id", "member_id", name="uq_campaign_outcomes_run_member"),)

    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="campaign_runs.id")
    member_id: int = Field(foreign_key="members.id", index=True)
    arm: str = Field(max_length=64, description="'holdout' or the offer/variant of the assignment.")
    treated: bool = Field(description="arm != 'holdout' (intent to treat).")
    offer_code: str | None = Field(default=None, max_length=64)
    variant: str | None = Field(default=None, max_length=32)
    outbox_id: int | None = Field(default=None, foreign_key="outbox_messages.id")
    channel: Channel | None = Field(default=None, sa_type=enum_type(Channel))
    sent_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    delivered_at: datetime | None = Field(default=None, sa_type=UTCDateTime, description="First 'delivered' event.")
    opened_at: datetime | None = Field(default=None, sa_type=UTCDateTime, description="First 'open' event.")
    clicked_at: datetime | None = Field(default=None, sa_type=UTCDateTime, description="First 'click' event.")
    converted: bool = Field(description="At least one purchase (positive amount) in the window.")
    purchases: int = Field(default=0, description="Purchases (positive amounts) in the window; refunds excluded.")
    revenue_cents: int = Field(default=0, description="Net amount in the window: purchases minus refunds.")
    first_purchase_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    window_end: datetime = Field(sa_type=UTCDateTime, description="slot + attribution_days (exclusive).")
    counted_until: datetime = Field(sa_type=UTCDateTime, description="Transactions before this were counted.")
    final: bool = Field(default=False, description="The window had closed when attributed: never rewritten.")
    attributed_at: datetime = _created()


CAMPAIGN_OUTCOMES: sa.Table = CampaignOutcome.__table__  # type: ignore[attr-defined]

# The measurement tables live in their own module; importing it here puts them in the same metadata.
from loyalty.models_measurement import LIFETIME_FITS, MEMBER_LIFETIME, SURVEY_RESPONSES  # noqa: E402, F401
