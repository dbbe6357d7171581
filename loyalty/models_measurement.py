"""Measurement tables: lifetime-value fits and per-member predictions, and survey responses.

Same conventions as :mod:`loyalty.models` (UTC timestamps, money in cents, enums as strings); the
schema is owned by migration ``0004``. Imported by :mod:`loyalty.models`, so one metadata holds all.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from loyalty.types import UTCDateTime, utcnow


def _created() -> Any:
    return Field(default_factory=utcnow, sa_type=UTCDateTime)


class LifetimeFit(SQLModel, table=True):
    """One fit of the BG/NBD and Gamma-Gamma models on the whole programme, as of a date."""

    __tablename__ = "lifetime_fits"

    id: int | None = Field(default=None, primary_key=True)
    as_of: datetime = Field(sa_type=UTCDateTime, description="Transactions before this instant were used.")
    members: int = Field(description="Members in the fit (with at least one purchase).")
    params: dict[str, Any] = Field(default_factory=dict, sa_type=sa.JSON,
                                   description="BG/NBD r, alpha, a, b (days); Gamma-Gamma p, q, v; fit facts.")
    fitted_at: datetime = _created()


class MemberLifetime(SQLModel, table=True):
    """A member's purchase summary and predicted value under the latest fit (one row per member)."""

    __tablename__ = "member_lifetime"

    member_id: int = Field(foreign_key="members.id", primary_key=True)
    fit_id: int = Field(foreign_key="lifetime_fits.id", index=True)
    frequency: int = Field(description="Repeat purchase days (purchase days minus one).")
    recency_days: float = Field(description="First to last purchase day.")
    age_days: float = Field(description="First purchase day to as_of (T).")
    monetary_cents: int = Field(description="Mean spend of the repeat purchase days (0 when none).")
    p_alive: float = Field(ge=0, le=1)
    expected_purchases_12m: float = Field(ge=0)
    clv_12m_cents: int = Field(description="Expected purchases in 12 months x expected spend, undiscounted.")
    computed_at: datetime = _created()


class SurveyResponse(SQLModel, table=True):
    """An answer to a survey invitation: the 0-10 score, and the member's own words if given.

    ``invitation_key`` is the outbox key of the invitation, so a second answer to the same invitation
    (a double click, a retried webhook, a corrected score) updates this row instead of adding one.
    """

    __tablename__ = "survey_responses"

    id: int | None = Field(default=None, primary_key=True)
    invitation_key: str = Field(max_length=128, unique=True)
    member_id: int = Field(foreign_key="members.id", index=True)
    survey: str = Field(default="nps", max_length=32)
    channel: str = Field(max_length=16, description="How the answer came: 'link' (a score clicked in the email), "
                                                    "'web' (the survey form) or 'sms'.")
    score: int = Field(ge=0, le=10)
    verbatim: str | None = Field(default=None, max_length=2000)
    responded_at: datetime = _created()
    updated_at: datetime = _created()
    # Set when the email's score links were fetched with different scores seconds apart (a mail scanner
    # following every link): the row is not counted until the member answers through the form.
    automated_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


LIFETIME_FITS: sa.Table = LifetimeFit.__table__  # type: ignore[attr-defined]
MEMBER_LIFETIME: sa.Table = MemberLifetime.__table__  # type: ignore[attr-defined]
SURVEY_RESPONSES: sa.Table = SurveyResponse.__table__  # type: ignore[attr-defined]
