"""Constructed measurement results for the report tests (the reports' input, built by hand)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from loyalty.measurement_types import ArmResult, CumulativePoint, Estimate, KpiRow, ProgrammeKpis, RunMeasurement

SLOT = datetime(2026, 5, 4, 14, tzinfo=UTC)


REVENUE_LIFT = Estimate(120.0, -10.0, 250.0, 0.07)


def arm(name: str, members: int, converted: int, *, lift: Estimate | None = None, roi: float | None = None,
        revenue_cents: int = 0, cost_cents: float = 0.0, revenue_lift: Estimate = REVENUE_LIFT) -> ArmResult:
    """One arm; treated when it has a lift (or a cost)."""
    treated = lift is not None or cost_cents > 0
    return ArmResult(arm=name, treated=treated, members=members, sent=members if treated else 0,
                     delivered=members * 9 // 10 if treated else 0, opened=members // 3 if treated else 0,
                     clicked=members // 10 if treated else 0, converted=converted, revenue_cents=revenue_cents,
                     conversion_lift=lift, revenue_lift_cents=revenue_lift if lift else None,
                     incremental_conversions=lift.value * members if lift else 0.0,
                     incremental_revenue_cents=revenue_lift.value * members if lift else 0.0,
                     offer_cost_cents=cost_cents * 0.8, message_cost_cents=cost_cents * 0.2, roi=roi)


def measurement(arms: list[ArmResult] | None = None, *, caution: str | None = None, run_id: int = 7) -> RunMeasurement:
    """A run with a holdout and the given treated arms (default: two offers, one clearly positive)."""
    arms = arms or [arm("holdout", 1000, 50),
                    arm("bonus_500", 2000, 142, lift=Estimate(0.021, 0.004, 0.038, 0.012), roi=0.35,
                        revenue_cents=900_000, cost_cents=40_000),
                    arm("double_points", 2000, 106, lift=Estimate(0.003, -0.011, 0.017, 0.64), roi=-0.4,
                        revenue_cents=700_000, cost_cents=30_000, revenue_lift=Estimate(-40.0, -200.0, 120.0, 0.62))]
    treated = [a for a in arms if a.treated]
    overall = arm("all treated", sum(a.members for a in treated), sum(a.converted for a in treated),
                  lift=Estimate(0.012, 0.001, 0.023, 0.031), roi=0.05,
                  revenue_cents=sum(a.revenue_cents for a in treated),
                  cost_cents=sum(a.offer_cost_cents + a.message_cost_cents for a in treated))
    cumulative = [CumulativePoint(day, 0.071 * day / 14, 0.05 * day / 14) for day in range(0, 15)]
    return RunMeasurement(run_id=run_id, campaign="win_back", slot=SLOT, window_end=SLOT + timedelta(days=14),
                          as_of=SLOT + timedelta(days=15), arms=arms, overall=overall, cumulative=cumulative,
                          caution=caution)


def kpi_row(dimension: str, group: str, members: int, *, month: int = 0) -> KpiRow:
    """A KPI row whose values drift with ``month`` (a visible trend)."""
    return KpiRow(dimension=dimension, group=group, members=members, retention_rate=0.41 + 0.01 * month,
                  nps=12.0 + month, responses=80 + month, average_transaction_value_cents=4_250.0 + 50 * month,
                  purchase_frequency=1.8 + 0.05 * month, clv_12m_cents=18_000.0 + 100 * month)


def kpis() -> ProgrammeKpis:
    """Twelve months, three tiers, two locales and a CLV histogram."""
    months = [kpi_row("month", f"2025-{m:02d}" if m <= 12 else f"2026-{m - 12:02d}", 1000 + 10 * m, month=m)
              for m in range(7, 19)]
    rows = [kpi_row("all", "all", 1200), kpi_row("tier", "bronze", 900), kpi_row("tier", "silver", 250),
            kpi_row("tier", "gold", 50), kpi_row("locale", "en_CA", 800), kpi_row("locale", "fr_CA", 400)]
    histogram = [(float(low), float(low + 5_000), count)
                 for low, count in zip(range(0, 60_000, 5_000), (210, 330, 250, 160, 90, 60, 40, 25, 15, 10, 6, 4),
                                       strict=True)]
    return ProgrammeKpis(as_of=SLOT, period_days=90, rows=rows, months=months,
                         tier_distribution={"bronze": 900, "silver": 250, "gold": 50}, clv_histogram=histogram,
                         nps_breakdown={"promoters": 40, "passives": 25, "detractors": 15},
                         first_month=date(2024, 5, 1))
