"""Shared vocabulary of the domain: enums, and the column types that make backends agree."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect


def utcnow() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return datetime.now(UTC)


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Stores UTC without a zone and always returns aware UTC datetimes.

    SQLite has no zone-aware type and PostgreSQL's ``timestamptz`` answers in the session
    zone; storing naive UTC and re-attaching UTC on the way out gives both the same contract.
    Naive datetimes are refused on the way in because their meaning is ambiguous.
    """

    impl = sa.DateTime(timezone=False)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: pass a timezone-aware datetime")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


def enum_type(enum_cls: type[StrEnum]) -> sa.Enum:
    """A portable string column for ``enum_cls`` storing its values (not a native DB enum)."""
    return sa.Enum(
        enum_cls,
        native_enum=False,
        length=max(len(m.value) for m in enum_cls),
        values_callable=lambda members: [m.value for m in members],
        validate_strings=True,
    )


class Channel(StrEnum):
    EMAIL = "email"
    SMS = "sms"
    PUSH = "push"


class PointsKind(StrEnum):
    EARN = "earn"
    REDEEM = "redeem"
    EXPIRE = "expire"
    ADJUST = "adjust"


class PushKind(StrEnum):
    WEBPUSH = "webpush"
    FCM = "fcm"


class OfferKind(StrEnum):
    DISCOUNT_PERCENT = "discount_percent"
    DISCOUNT_AMOUNT = "discount_amount"
    BONUS_POINTS = "bonus_points"
    POINTS_MULTIPLIER = "points_multiplier"
    FREE_ITEM = "free_item"
    EARLY_ACCESS = "early_access"


class RunStatus(StrEnum):
    PLANNED = "planned"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"


class OutboxStatus(StrEnum):
    """pending → sending → sent → delivered | bounced; failed, skipped and unknown end a try."""

    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    DELIVERED = "delivered"
    BOUNCED = "bounced"
    FAILED = "failed"
    SKIPPED = "skipped"
    UNKNOWN = "unknown"


class TierDirection(StrEnum):
    UP = "up"
    DOWN = "down"


def as_utc(value: Any) -> datetime:
    """Coerce an aware datetime to UTC; refuse naive ones (their zone is unknown)."""
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise ValueError(f"expected a timezone-aware datetime, got {value!r}")
    return value.astimezone(UTC)


class NpsCategory(StrEnum):
    """Net Promoter groups of a 0-10 answer."""

    PROMOTER = "promoter"
    PASSIVE = "passive"
    DETRACTOR = "detractor"


#: Scores (inclusive) of each NPS group: the one definition surveys, audiences and KPIs share.
NPS_SCORES = {NpsCategory.PROMOTER: (9, 10), NpsCategory.PASSIVE: (7, 8), NpsCategory.DETRACTOR: (0, 6)}
