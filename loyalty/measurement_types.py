"""What measurement hands to reports: plain, frozen results, no database handles.

:mod:`loyalty.measurement` fills :class:`RunMeasurement` (attribution and lift of one campaign run),
:mod:`loyalty.kpis` fills :class:`ProgrammeKpis`; :mod:`loyalty.reports` renders both, in the
terminal, as self-contained HTML and as Prefect artifacts. Money is in cents; rates are fractions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime


@dataclass(frozen=True)
class Estimate:
    """A difference (treated arm minus holdout) with its 95% confidence interval and two-sided p-value."""

    value: float
    low: float
    high: float
    p_value: float


@dataclass(frozen=True)
class ArmResult:
    """One arm of a run: an offer, an offer/variant, or the holdout (``treated`` False)."""

    arm: str
    treated: bool
    members: int
    sent: int
    delivered: int
    opened: int
    clicked: int
    converted: int
    revenue_cents: int
    #: Lift against the holdout; None for the holdout itself or when either side is too small.
    conversion_lift: Estimate | None = None
    revenue_lift_cents: Estimate | None = None  # per member
    incremental_conversions: float = 0.0
    incremental_revenue_cents: float = 0.0
    offer_cost_cents: float = 0.0
    message_cost_cents: float = 0.0
    #: (incremental margin - cost) / cost; None when the arm cost nothing.
    roi: float | None = None

    @property
    def conversion_rate(self) -> float:
        return self.converted / self.members if self.members else 0.0

    @property
    def revenue_per_member_cents(self) -> float:
        return self.revenue_cents / self.members if self.members else 0.0


@dataclass(frozen=True)
class CumulativePoint:
    """Conversions so far, ``day`` days after the slot, per member of each side (for the cumulative chart)."""

    day: int
    treated_rate: float
    holdout_rate: float


@dataclass(frozen=True)
class RunMeasurement:
    """Attribution and lift of one campaign run, as of ``as_of``."""

    run_id: int
    campaign: str
    slot: datetime
    window_end: datetime
    as_of: datetime
    arms: list[ArmResult]  # the holdout first, then treated arms by name
    #: All treated arms pooled against the holdout.
    overall: ArmResult
    cumulative: list[CumulativePoint] = field(default_factory=list)
    #: Set while the attribution window is still open: early figures overstate certainty.
    caution: str | None = None


@dataclass(frozen=True)
class KpiRow:
    """The five programme KPIs for one group (a tier, segment, locale or month; "all" for the programme)."""

    dimension: str  # "all", "tier", "segment", "locale" or "month"
    group: str
    members: int
    retention_rate: float | None  # share of the previous period's buyers who bought again this period
    nps: float | None  # -100..100; None without responses
    responses: int
    average_transaction_value_cents: float | None
    purchase_frequency: float | None  # purchases per active member per period
    clv_12m_cents: float | None  # mean predicted 12-month value (None before a lifetime fit)


@dataclass(frozen=True)
class ProgrammeKpis:
    """Programme health: KPI rows by dimension, monthly trend, tier distribution and CLV histogram."""

    as_of: datetime
    period_days: int
    rows: list[KpiRow]  # dimension "all" first
    months: list[KpiRow]  # dimension "month", oldest first, group "YYYY-MM"
    tier_distribution: dict[str, int]  # tier code -> members, programme order
    clv_histogram: list[tuple[float, float, int]]  # (low cents, high cents, members)
    nps_breakdown: dict[str, int] = field(default_factory=dict)  # promoters / passives / detractors
    first_month: date | None = None
