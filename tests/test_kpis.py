"""Programme KPIs on a hand-built programme: every figure is worked out by hand here, on both backends."""

from __future__ import annotations

import itertools
from datetime import UTC, date, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session

from loyalty.db import fetch_rows, session_scope
from loyalty.kpis import SEGMENTS, CohortRow, lifecycle_segments, month_bounds, programme_kpis, retention_cohorts
from loyalty.measurement_types import KpiRow, ProgrammeKpis
from loyalty.models import Transaction
from loyalty.models_measurement import LifetimeFit, MemberLifetime, SurveyResponse
from tests.factories import add_member

AS_OF = datetime(2026, 7, 1, tzinfo=UTC)
PERIOD = 30  # current period [1 Jun, 1 Jul) is June; previous [2 May, 1 Jun)
OLD = datetime(2025, 1, 1, tzinfo=UTC)
_keys = itertools.count(1)


def at(month: int, day: int, year: int = 2026) -> datetime:
    return datetime(year, month, day, 12, tzinfo=UTC)


def buy(session: Session, member_id: int, when: datetime, cents: int) -> None:
    session.add(Transaction(external_id=f"T{next(_keys)}", member_id=member_id, amount_cents=cents, occurred_at=when))


def answer(session: Session, member_id: int, when: datetime, score: int, survey: str = "nps") -> None:
    session.add(SurveyResponse(invitation_key=f"inv-{next(_keys)}", member_id=member_id, survey=survey,
                               channel="web", score=score, responded_at=when, updated_at=when))


def add_clv(session: Session, values: dict[int, int]) -> None:
    fit = LifetimeFit(as_of=AS_OF, members=len(values))
    session.add(fit)
    session.flush()
    for member_id, clv in values.items():
        session.add(MemberLifetime(member_id=member_id, fit_id=fit.id, frequency=1, recency_days=1.0, age_days=1.0,
                                   monetary_cents=clv, p_alive=0.5, expected_purchases_12m=1.0, clv_12m_cents=clv))


def build(engine: Engine) -> dict[str, int]:
    """Nine members; A..H as below, J joins after as_of and must count nowhere."""
    with session_scope(engine) as s:
        ids = {name: add_member(s, tier=tier, locale=locale, joined_at=joined).id or 0
               for name, tier, locale, joined in [
                   ("A", "gold", "en_CA", OLD), ("B", "silver", "fr_CA", OLD), ("C", "member", "en_CA", OLD),
                   ("D", "member", "fr_CA", OLD), ("E", "platinum", "en_CA", OLD),
                   ("F", "member", "en_CA", at(6, 20)), ("G", "member", "fr_CA", OLD),
                   ("H", "silver", "en_CA", OLD), ("J", "member", "en_CA", at(7, 2))]}
        for when in (at(9, 10, 2025), at(11, 10, 2025), at(1, 10), at(3, 10)):  # A: 7 purchases in a year: loyal
            buy(s, ids["A"], when, 800)
        for name, when, cents in [("A", at(5, 10), 10_000), ("A", at(6, 5), 5_000), ("A", at(6, 20), 7_000),
                                  ("B", at(4, 12), 2_500), ("B", at(5, 12), 3_000), ("B", at(6, 10), 4_000),
                                  ("B", at(6, 11), -1_000), ("C", at(5, 20), 2_000), ("C", AS_OF, 99_999),
                                  ("D", at(6, 15), 6_000), ("F", at(6, 25), 1_000), ("J", at(7, 3), 5_000),
                                  ("H", AS_OF - timedelta(days=180), 900),  # exactly 180 days: still at risk
                                  ("G", AS_OF - timedelta(days=180, seconds=1), 900)]:  # one second more: lapsed
            buy(s, ids[name], when, cents)
        for name, when, score in [("A", at(5, 25), 0), ("A", at(6, 3), 10), ("A", at(6, 20), 6), ("B", at(6, 8), 9),
                                  ("C", at(5, 20), 10), ("D", at(6, 9), 7), ("E", at(6, 30), 3),
                                  ("F", AS_OF, 10)]:  # at as_of: outside the period
            answer(s, ids[name], when, score)
        answer(s, ids["D"], at(6, 10), 0, survey="csat")  # not an NPS answer
        add_clv(s, {ids["A"]: 50_000, ids["B"]: 20_000, ids["C"]: 5_000})
    return ids


def row(kpis: ProgrammeKpis, dimension: str, group: str) -> KpiRow:
    [found] = [r for r in kpis.rows + kpis.months if r.dimension == dimension and r.group == group]
    return found


def test_programme_kpis_by_hand(engine: Engine) -> None:
    build(engine)
    kpis = programme_kpis(engine, as_of=AS_OF, period_days=PERIOD, months=2)
    everyone = kpis.rows[0]
    assert (everyone.dimension, everyone.group, everyone.members) == ("all", "all", 8)
    # Previous-period buyers A, B, C; A and B bought again in June.
    assert everyone.retention_rate == pytest.approx(2 / 3)
    # June: A 5000 + 7000, B 4000 (then a 1000 refund), D 6000, F 1000: five purchases by four members.
    june_net = 5_000 + 7_000 + 4_000 - 1_000 + 6_000 + 1_000
    assert everyone.average_transaction_value_cents == pytest.approx(june_net / 5)
    assert everyone.purchase_frequency == pytest.approx(5 / 4)
    # Latest June answers: A 6 (detractor), B 9 (promoter), D 7 (passive), E 3 (detractor).
    assert (everyone.nps, everyone.responses) == (pytest.approx(100 * (1 - 2) / 4), 4)
    assert kpis.nps_breakdown == {"promoters": 1, "passives": 1, "detractors": 2}
    assert everyone.clv_12m_cents == pytest.approx((50_000 + 20_000 + 5_000) / 3)
    assert (kpis.as_of, kpis.period_days) == (AS_OF, PERIOD)


def test_tier_and_locale_rows(engine: Engine) -> None:
    build(engine)
    kpis = programme_kpis(engine, as_of=AS_OF, period_days=PERIOD, months=2)
    assert kpis.tier_distribution == {"member": 4, "silver": 2, "gold": 1, "platinum": 1}
    assert list(kpis.tier_distribution) == ["member", "silver", "gold", "platinum"]  # programme order
    assert [r.group for r in kpis.rows if r.dimension == "tier"] == ["member", "silver", "gold", "platinum"]
    gold = row(kpis, "tier", "gold")  # A alone
    assert (gold.retention_rate, gold.purchase_frequency, gold.clv_12m_cents) == (1.0, 2.0, 50_000)
    assert gold.average_transaction_value_cents == pytest.approx((5_000 + 7_000) / 2)
    member = row(kpis, "tier", "member")  # C, D, F, G: C lapsed from May, D and F bought once
    assert (member.members, member.retention_rate, member.clv_12m_cents) == (4, 0.0, 5_000)
    assert member.average_transaction_value_cents == pytest.approx((6_000 + 1_000) / 2)
    platinum = row(kpis, "tier", "platinum")  # E: never bought, answered 3
    assert platinum.retention_rate is platinum.average_transaction_value_cents is platinum.clv_12m_cents is None
    assert (platinum.nps, platinum.responses) == (-100.0, 1)
    assert [r.group for r in kpis.rows if r.dimension == "locale"] == ["en_CA", "fr_CA"]
    en, fr = row(kpis, "locale", "en_CA"), row(kpis, "locale", "fr_CA")
    assert (en.members, en.retention_rate, fr.members, fr.retention_rate) == (5, 1 / 2, 3, 1.0)
    assert sum(r.members for r in kpis.rows if r.dimension == "locale") == kpis.rows[0].members


def test_segments(engine: Engine) -> None:
    ids = build(engine)
    with session_scope(engine) as s:  # K bought 16 months ago; L only had a refund, and buys after as_of
        ids |= {name: add_member(s, joined_at=OLD).id or 0 for name in "KL"}
        buy(s, ids["K"], at(3, 1, 2025), 500)
        buy(s, ids["L"], at(3, 1, 2025), -500)
        buy(s, ids["L"], at(7, 2), 500)
    with engine.connect() as connection:
        seg = lifecycle_segments(AS_OF)
        found = dict(fetch_rows(connection, sa.select(seg.c.member_id, seg.c.segment)))
    expected = {"A": "loyal", "B": "active", "C": "active", "D": "active", "E": "never_purchased", "F": "new",
                "G": "lapsed", "H": "at_risk", "K": "lapsed", "L": "never_purchased"}
    assert found == {ids[name]: segment for name, segment in expected.items()}  # J had not joined
    kpis = programme_kpis(engine, as_of=AS_OF, period_days=PERIOD, months=2)
    assert [r.group for r in kpis.rows if r.dimension == "segment"] == list(SEGMENTS)
    active = row(kpis, "segment", "active")  # B, C, D: of B and C (May buyers) only B bought in June
    assert (active.members, active.retention_rate, active.purchase_frequency) == (3, 1 / 2, 1.0)
    assert active.average_transaction_value_cents == pytest.approx((4_000 - 1_000 + 6_000) / 2)
    assert (row(kpis, "segment", "lapsed").members, row(kpis, "segment", "never_purchased").members) == (2, 2)


def test_month_rows(engine: Engine) -> None:
    build(engine)
    kpis = programme_kpis(engine, as_of=AS_OF, period_days=PERIOD, months=2)
    assert [r.group for r in kpis.months] == ["2026-05", "2026-06"]
    assert kpis.first_month == date(2026, 5, 1)
    may, june = kpis.months
    # May: A 10000, B 3000, C 2000; April's only buyer (B) bought again. Answers: A 0, C 10.
    assert (may.members, may.retention_rate, may.purchase_frequency) == (7, 1.0, 1.0)
    assert may.average_transaction_value_cents == pytest.approx((10_000 + 3_000 + 2_000) / 3)
    assert (may.nps, may.responses, may.clv_12m_cents) == (0.0, 2, None)
    # June: the current period of the other tests, and F has joined.
    assert (june.members, june.retention_rate, june.purchase_frequency) == (8, pytest.approx(2 / 3), 5 / 4)
    assert june.average_transaction_value_cents == pytest.approx(22_000 / 5)
    assert (june.nps, june.responses) == (-25.0, 4)


def test_clv_histogram_caps_the_whale(engine: Engine) -> None:
    values = [1_000 * i for i in range(1, 21)] + [10_000_000]
    with session_scope(engine) as s:
        add_clv(s, {add_member(s, joined_at=OLD).id or 0: v for v in values})
    histogram = programme_kpis(engine, as_of=AS_OF, months=0).clv_histogram
    assert len(histogram) == 12
    # 99th percentile of 21 values: the 20th smallest (20000); the whale lands in the last, open bin.
    width = (20_000 - 1_000) / 12
    assert [low for low, _, _ in histogram] == pytest.approx([1_000 + i * width for i in range(12)])
    assert histogram[-1][1] == 10_000_000
    expected = [sum(1_000 + i * width <= v < 1_000 + (i + 1) * width for v in values) for i in range(11)]
    assert [n for _, _, n in histogram[:-1]] == expected
    assert histogram[-1][2] == len(values) - sum(expected)
    assert sum(n for _, _, n in histogram) == len(values)


def test_empty_programme_gives_none(engine: Engine) -> None:
    kpis = programme_kpis(engine, as_of=AS_OF, period_days=PERIOD, months=3)
    everyone = kpis.rows[0]
    assert everyone == KpiRow("all", "all", 0, None, None, 0, None, None, None)
    assert kpis.tier_distribution == {"member": 0, "silver": 0, "gold": 0, "platinum": 0}
    assert (kpis.clv_histogram, kpis.nps_breakdown) == ([], {"promoters": 0, "passives": 0, "detractors": 0})
    assert [r.group for r in kpis.months] == ["2026-04", "2026-05", "2026-06"]
    assert all(r.members == 0 and r.retention_rate is None and r.nps is None for r in kpis.months)
    assert all(r.average_transaction_value_cents is None for r in kpis.rows)
    assert all(r.rate is None for r in retention_cohorts(engine, as_of=AS_OF, months=3))


def test_retention_cohorts(engine: Engine) -> None:
    with session_scope(engine) as s:
        p, q, r, t, early = (add_member(s, joined_at=j).id or 0 for j in
                             (at(4, 3), at(4, 20), at(5, 10), at(6, 1), at(3, 30)))
        for member_id, when, cents in [(p, at(4, 5), 1_000), (p, at(6, 2), 1_000), (q, at(5, 1), 1_000),
                                       (t, at(6, 30), 1_000), (t, at(6, 30), -1_000), (r, at(6, 3), -500),
                                       (early, at(4, 1), 1_000)]:
            buy(s, member_id, when, cents)
    rows = retention_cohorts(engine, as_of=AS_OF, months=3)
    assert rows == [CohortRow("2026-04", 0, 2, 1, 1 / 2), CohortRow("2026-04", 1, 2, 1, 1 / 2),
                    CohortRow("2026-04", 2, 2, 1, 1 / 2), CohortRow("2026-05", 0, 1, 0, 0.0),
                    CohortRow("2026-05", 1, 1, 0, 0.0), CohortRow("2026-06", 0, 1, 1, 1.0)]


def test_month_bounds_cross_the_year() -> None:
    bounds = month_bounds(datetime(2026, 2, 14, 9, 30, tzinfo=UTC), 3)
    assert [b.date() for b in bounds] == [date(2025, 11, 1), date(2025, 12, 1), date(2026, 1, 1), date(2026, 2, 1)]
    assert all(b.tzinfo is not None and b.hour == 0 for b in bounds)
