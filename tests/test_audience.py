"""Audience SQL: exact member ids for each filter, reachability (consent, address, suppression), id ranges."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session

from loyalty.audience import audience_ids, audience_ranges
from loyalty.campaigns import CampaignSpec
from loyalty.models import ChannelConsent, PushSubscription, Suppression
from loyalty.programme import Programme
from loyalty.types import Channel, PushKind
from tests.factories import add_contactable_member, add_member

AS_OF = datetime(2025, 6, 1, 12, tzinfo=UTC)
EVERYONE = (0, 10**9)


def _ago(days: int) -> datetime:
    return AS_OF - timedelta(days=days)


def _spec(programme: Programme, channels: list[str] | None = None, **audience: Any) -> CampaignSpec:
    data = {"name": "t", "audience": audience, "channels": channels or ["email"], "template": "win_back",
            "schedule": {"cron": "0 10 * * *", "timezone": "UTC"}}
    return CampaignSpec.model_validate(data, context={"programme": programme})


def _people(session: Session) -> dict[str, int]:
    """A small population; each name says what sets the member apart."""
    old = _ago(700)
    ids: dict[str, int] = {}

    def add(name: str, *, channels: tuple[str, ...] = ("email",), days_since_purchase: int | None = 90,
            **fields: Any) -> None:
        fields.setdefault("joined_at", old)
        last = None if days_since_purchase is None else _ago(days_since_purchase)
        member = add_contactable_member(session, channels=channels, last_purchase_at=last, **fields)
        assert member.id is not None
        ids[name] = member.id

    add("lapsing_gold", tier="gold", points_balance=800)
    add("recent", days_since_purchase=10, points_balance=100)
    add("lapsed_long_ago", tier="silver", days_since_purchase=200, points_balance=2000)
    add("never_bought", days_since_purchase=None)
    add("sms_only", channels=("sms",))
    add("email_suppressed", email="Bounced@Example.com")
    add("opted_out", channels=())
    add("french_push", channels=("push",), locale="fr_CA")
    add("push_no_subscription", channels=("push",))
    add("new_member", joined_at=_ago(3), days_since_purchase=2, locale="fr_FR")
    add("joins_later", joined_at=AS_OF + timedelta(days=1), days_since_purchase=None)
    add("no_email", email=None)
    opted_out = ids["opted_out"]
    session.add(ChannelConsent(member_id=opted_out, channel=Channel.EMAIL, opted_in=False, source="test"))
    session.add(Suppression(channel=Channel.EMAIL, address="bounced@example.com", reason="hard_bounce"))
    session.add(PushSubscription(member_id=ids["french_push"], kind=PushKind.WEBPUSH, endpoint="https://push/1"))
    session.add(PushSubscription(member_id=ids["push_no_subscription"], kind=PushKind.WEBPUSH,
                                 endpoint="https://push/dead"))
    session.add(Suppression(channel=Channel.PUSH, address="https://push/dead", reason="invalid_address"))
    session.commit()
    return ids


@pytest.fixture
def people(session: Session) -> dict[str, int]:
    return _people(session)


def _names(engine: Engine, spec: CampaignSpec, people: dict[str, int]) -> list[str]:
    with engine.connect() as connection:
        found = audience_ids(connection, spec, EVERYONE, as_of=AS_OF)
    by_id = {v: k for k, v in people.items()}
    return [by_id[i] for i in found]


def test_everyone_reachable_on_email(engine: Engine, programme: Programme, people: dict[str, int]) -> None:
    # Excluded: sms_only / push members (no email consent), the suppressed address (matched
    # case-insensitively), an explicit opt-out, a member without an email, one who joins after as_of.
    assert _names(engine, _spec(programme), people) == [
        "lapsing_gold", "recent", "lapsed_long_ago", "never_bought", "new_member"]


def test_reachable_on_any_of_the_channels(engine: Engine, programme: Programme, people: dict[str, int]) -> None:
    assert _names(engine, _spec(programme, ["sms", "push"]), people) == ["sms_only", "french_push"]


def test_lapsing_window(engine: Engine, programme: Programme, people: dict[str, int]) -> None:
    spec = _spec(programme, ["email", "sms"], inactive_for_days=60, active_within_days=180)
    assert _names(engine, spec, people) == ["lapsing_gold", "sms_only"]


def test_active_tier_points_locale_and_joined_filters(engine: Engine, programme: Programme,
                                                      people: dict[str, int]) -> None:
    def names(**audience: Any) -> list[str]:
        return _names(engine, _spec(programme, ["email", "push"], **audience), people)

    assert names(active_within_days=30) == ["recent", "new_member"]
    assert names(tiers=["gold", "silver"]) == ["lapsing_gold", "lapsed_long_ago"]
    assert names(min_points=500) == ["lapsing_gold", "lapsed_long_ago"]
    assert names(min_points=500, max_points=1000) == ["lapsing_gold"]
    assert names(locales=["fr"]) == ["french_push", "new_member"]
    assert names(locales=["fr_CA"]) == ["french_push"]
    assert names(joined_within_days=7) == ["new_member"]


def test_audience_ids_stays_inside_its_range(engine: Engine, programme: Programme, people: dict[str, int]) -> None:
    lo, hi = people["recent"], people["never_bought"]
    with engine.connect() as connection:
        assert audience_ids(connection, _spec(programme), (lo, hi), as_of=AS_OF) == [
            people["recent"], people["lapsed_long_ago"]]


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 5, 100])
def test_ranges_cut_on_matching_members_and_cover_them_all(engine: Engine, programme: Programme,
                                                           people: dict[str, int], chunk_size: int) -> None:
    spec = _spec(programme)
    ranges = audience_ranges(engine, spec, as_of=AS_OF, chunk_size=chunk_size)
    with engine.connect() as connection:
        everyone = audience_ids(connection, spec, EVERYONE, as_of=AS_OF)
        chunks = [audience_ids(connection, spec, r, as_of=AS_OF) for r in ranges]
    assert [i for chunk in chunks for i in chunk] == everyone
    assert all(len(chunk) == chunk_size for chunk in chunks[:-1]) and 0 < len(chunks[-1]) <= chunk_size
    assert all(lo < hi for lo, hi in ranges) and all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
    assert ranges[0][0] == everyone[0] and ranges[-1][1] == everyone[-1] + 1


def test_no_match_means_no_ranges(engine: Engine, programme: Programme, session: Session) -> None:
    add_member(session, joined_at=_ago(10))  # no consent at all
    session.commit()
    assert audience_ranges(engine, _spec(programme), as_of=AS_OF, chunk_size=10) == []
    with pytest.raises(ValueError, match="chunk_size"):
        audience_ranges(engine, _spec(programme), as_of=AS_OF, chunk_size=0)


def test_birthdays_within_days_including_leap_day(engine: Engine, programme: Programme) -> None:
    from datetime import date

    from loyalty.audience import birthday_days

    assert birthday_days(date(2026, 2, 28), 1) == {(2, 28), (2, 29)}  # a common year: leap-day births today
    assert birthday_days(date(2028, 2, 28), 1) == {(2, 28)}
    assert birthday_days(date(2026, 12, 31), 2) == {(12, 31), (1, 1)}
    slot = datetime(2026, 2, 28, 5, tzinfo=UTC)
    with Session(engine) as session:
        born = {name: add_contactable_member(session, joined_at=slot - timedelta(days=400), birthday=day).id
                for name, day in {"today": date(1990, 2, 28), "leap_day": date(1992, 2, 29),
                                  "tomorrow": date(1985, 3, 1), "unknown": None}.items()}
        session.commit()
    with engine.connect() as connection:
        today = audience_ids(connection, _spec(programme, birthday_within_days=1), EVERYONE, as_of=slot)
        week = audience_ids(connection, _spec(programme, birthday_within_days=7), EVERYONE, as_of=slot)
    assert today == sorted([born["today"], born["leap_day"]])
    assert week == sorted([born["today"], born["leap_day"], born["tomorrow"]])


def _lifetime_rows(session: Session, rows: dict[int, tuple[float, int]]) -> None:
    """One fit and a ``member_lifetime`` row (p_alive, clv_12m_cents) for each member in ``rows``."""
    from loyalty.models_measurement import LifetimeFit, MemberLifetime

    fit = LifetimeFit(as_of=AS_OF, members=len(rows), params={})
    session.add(fit)
    session.flush()
    assert fit.id is not None
    for member_id, (p_alive, clv_cents) in rows.items():
        session.add(MemberLifetime(member_id=member_id, fit_id=fit.id, frequency=1, recency_days=10.0,
                                   age_days=100.0, monetary_cents=1000, p_alive=p_alive,
                                   expected_purchases_12m=1.0, clv_12m_cents=clv_cents))
    session.commit()


def test_lifetime_filters_use_member_lifetime_and_need_a_row(engine: Engine, programme: Programme,
                                                             people: dict[str, int], session: Session) -> None:
    _lifetime_rows(session, {people["lapsing_gold"]: (0.2, 500), people["recent"]: (0.9, 12_000),
                             people["lapsed_long_ago"]: (0.5, 3_000), people["sms_only"]: (0.95, 50_000)})

    def names(**audience: Any) -> list[str]:
        return _names(engine, _spec(programme, **audience), people)

    assert names(min_p_alive=0.5) == ["recent", "lapsed_long_ago"]  # sms_only is not reachable by email
    assert names(max_p_alive=0.5) == ["lapsing_gold", "lapsed_long_ago"]
    assert names(min_p_alive=0.3, max_p_alive=0.6) == ["lapsed_long_ago"]
    assert names(min_clv_12m_cents=3_000) == ["recent", "lapsed_long_ago"]
    assert names(min_p_alive=0.0) == ["lapsing_gold", "recent", "lapsed_long_ago"]  # no row: no match
    assert names(min_clv_12m_cents=0, tiers=["gold"]) == ["lapsing_gold"]


def test_nps_categories_use_the_latest_answer_within_the_window(engine: Engine, programme: Programme,
                                                                people: dict[str, int], session: Session) -> None:
    from loyalty.models_measurement import SurveyResponse

    answers = {"lapsing_gold": [(400, 10), (20, 3)],  # once a promoter, lately a detractor
               "recent": [(5, 9)], "lapsed_long_ago": [(100, 7)], "never_bought": [(30, 6), (2, 10)],
               "new_member": [(-1, 2)]}  # answered after the slot: unknown at the slot
    for name, history in answers.items():
        for i, (days_ago, score) in enumerate(history):
            session.add(SurveyResponse(invitation_key=f"{name}-{i}", member_id=people[name], channel="web",
                                       score=score, responded_at=_ago(days_ago)))
    session.commit()

    def names(categories: list[str], within: int | None = None) -> list[str]:
        return _names(engine, _spec(programme, nps_categories=categories, nps_within_days=within), people)

    assert names(["promoter"]) == ["recent", "never_bought"]
    assert names(["detractor"]) == ["lapsing_gold"]
    assert names(["passive"]) == ["lapsed_long_ago"]
    assert names(["passive", "detractor"], within=60) == ["lapsing_gold"]
    assert names(["promoter"], within=3) == ["never_bought"]
    assert names(["promoter", "passive", "detractor"]) == [
        "lapsing_gold", "recent", "lapsed_long_ago", "never_bought"]


@pytest.mark.parametrize(("audience", "message"), [
    ({"min_p_alive": 1.5}, "audience.min_p_alive"),
    ({"max_p_alive": -0.1}, "audience.max_p_alive"),
    ({"min_p_alive": 0.8, "max_p_alive": 0.2}, "min_p_alive must not exceed max_p_alive"),
    ({"min_clv_12m_cents": -1}, "audience.min_clv_12m_cents"),
    ({"nps_categories": ["fan"]}, "audience.nps_categories.0"),
    ({"nps_within_days": 30}, "nps_within_days needs nps_categories"),
    ({"nps_categories": ["promoter"], "nps_within_days": 0}, "audience.nps_within_days"),
])
def test_lifetime_and_nps_filters_are_validated(programme: Programme, audience: dict[str, Any], message: str) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as error:
        _spec(programme, **audience)
    assert message in str(error.value)
