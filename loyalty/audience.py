"""A campaign's audience in SQL: balanced id ranges to fan out over, and the member ids in one range.

Only the filters SQL can answer are applied here — tiers, activity windows on
``members.last_purchase_at``, locales, points balance, join date, the lifetime fit (``member_lifetime``:
P(alive) and 12-month CLV; a member without a row matches no lifetime bound) and the latest NPS answer
(``survey_responses``, up to the slot) — plus reachability: the member
is opted in on at least one of the campaign's channels *and* has an address there that is not
suppressed. Behavioural segments need the scored features, so the campaign flow applies
``audience.segments`` after scoring. Both functions run one statement however many members match,
and work the same on SQLite and PostgreSQL.

Ranges are half-open ``(lo, hi)``: ``lo <= id < hi``, as in :mod:`loyalty.features_query`.
"""

from __future__ import annotations

import calendar
from datetime import date, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from loyalty.campaigns import Audience, CampaignSpec
from loyalty.db import balanced_ranges, fetch_rows
from loyalty.models import CHANNEL_CONSENTS, MEMBERS, PUSH_SUBSCRIPTIONS, SUPPRESSIONS
from loyalty.models_measurement import MEMBER_LIFETIME, SURVEY_RESPONSES
from loyalty.surveys import NPS, counted
from loyalty.types import NPS_SCORES, Channel, as_utc

m = MEMBERS


def _not_suppressed(channel: Channel, address: Any) -> sa.ColumnElement[bool]:
    blocked = sa.select(SUPPRESSIONS.c.id).where(SUPPRESSIONS.c.channel == channel,
                                                 SUPPRESSIONS.c.address == address)
    # Nested two levels deep: correlate to members (and push_subscriptions) explicitly.
    return ~sa.exists(blocked.correlate_except(SUPPRESSIONS))


def _reachable_on(channel: Channel) -> sa.ColumnElement[bool]:
    """The member has an address on ``channel`` that is not suppressed (correlated on ``members``)."""
    if channel is Channel.EMAIL:
        # Suppressions store emails lower-cased (loyalty.consent.normalise_address).
        return sa.and_(m.c.email.is_not(None), _not_suppressed(channel, sa.func.lower(m.c.email)))
    if channel is Channel.SMS:
        return sa.and_(m.c.phone.is_not(None), _not_suppressed(channel, m.c.phone))
    p = PUSH_SUBSCRIPTIONS
    live = sa.select(p.c.id).where(p.c.member_id == m.c.id, _not_suppressed(channel, p.c.endpoint))
    return sa.exists(live.correlate_except(p))


def _contactable(channels: list[Channel]) -> sa.ColumnElement[bool]:
    """Opted in on at least one of ``channels`` and reachable on that same channel."""
    c = CHANNEL_CONSENTS
    per_channel = [sa.and_(c.c.channel == channel, _reachable_on(channel)) for channel in channels]
    consent = sa.select(c.c.id).where(c.c.member_id == m.c.id, c.c.opted_in.is_(True), sa.or_(*per_channel))
    return sa.exists(consent.correlate_except(c))


def _locale(locale: str) -> sa.ColumnElement[bool]:
    # A bare language ("fr") matches every region of it ("fr_CA", "fr_FR").
    if "_" in locale:
        return m.c.locale == locale
    return sa.or_(m.c.locale == locale, m.c.locale.startswith(f"{locale}_", autoescape=True))


def _member_filters(audience: Audience, as_of: datetime) -> list[sa.ColumnElement[bool]]:
    """The audience's SQL-expressible conditions on ``members`` as of ``as_of``."""
    conditions: list[sa.ColumnElement[bool]] = [m.c.joined_at <= as_of]  # a re-run of a slot sees the same people
    if audience.tiers:
        conditions.append(m.c.tier.in_(audience.tiers))
    # Members who never bought match neither window: they are neither active nor lapsing.
    if audience.active_within_days is not None:
        conditions.append(m.c.last_purchase_at >= as_of - timedelta(days=audience.active_within_days))
    if audience.inactive_for_days is not None:
        conditions.append(m.c.last_purchase_at < as_of - timedelta(days=audience.inactive_for_days))
    if audience.locales:
        conditions.append(sa.or_(*(_locale(locale) for locale in audience.locales)))
    if audience.min_points is not None:
        conditions.append(m.c.points_balance >= audience.min_points)
    if audience.max_points is not None:
        conditions.append(m.c.points_balance <= audience.max_points)
    if audience.joined_within_days is not None:
        conditions.append(m.c.joined_at >= as_of - timedelta(days=audience.joined_within_days))
    if audience.birthday_within_days is not None:
        conditions.append(_birthday_within(as_of.date(), audience.birthday_within_days))
    lifetime = _lifetime(audience)
    if lifetime is not None:
        conditions.append(lifetime)
    if audience.nps_categories:
        conditions.append(_nps(audience, as_of))
    return conditions


def _lifetime(audience: Audience) -> sa.ColumnElement[bool] | None:
    """The member's ``member_lifetime`` row passes the lifetime bounds (no row: no match); None without bounds."""
    ml = MEMBER_LIFETIME.c
    bounds = [ml.p_alive >= audience.min_p_alive if audience.min_p_alive is not None else None,
              ml.p_alive <= audience.max_p_alive if audience.max_p_alive is not None else None,
              ml.clv_12m_cents >= audience.min_clv_12m_cents if audience.min_clv_12m_cents is not None else None]
    wanted = [b for b in bounds if b is not None]
    if not wanted:
        return None
    return sa.exists(sa.select(ml.member_id).where(ml.member_id == m.c.id, *wanted).correlate_except(MEMBER_LIFETIME))


def _nps(audience: Audience, as_of: datetime) -> sa.ColumnElement[bool]:
    """The member's latest NPS answer up to the slot (within ``nps_within_days`` if set) is in a wanted group."""
    s = SURVEY_RESPONSES.c
    window = [s.member_id == m.c.id, s.survey == NPS, s.responded_at <= as_of, counted()]
    if audience.nps_within_days is not None:
        window.append(s.responded_at >= as_of - timedelta(days=audience.nps_within_days))
    latest = (sa.select(s.score).where(*window).order_by(s.responded_at.desc(), s.id.desc()).limit(1)
              .correlate_except(SURVEY_RESPONSES).scalar_subquery())
    return sa.or_(*(latest.between(*NPS_SCORES[category]) for category in audience.nps_categories))


def birthday_days(start: date, days: int) -> set[tuple[int, int]]:
    """(month, day) pairs whose birthdays fall in ``[start, start + days)``; 29 February counts on the 28th of
    a common year."""
    pairs = set()
    for offset in range(days):
        day = start + timedelta(days=offset)
        pairs.add((day.month, day.day))
        if (day.month, day.day) == (2, 28) and not calendar.isleap(day.year):
            pairs.add((2, 29))
    return pairs


def _birthday_within(start: date, days: int) -> sa.ColumnElement[bool]:
    month, day = sa.extract("month", m.c.birthday), sa.extract("day", m.c.birthday)
    return sa.or_(*(sa.and_(month == mm, day == dd) for mm, dd in sorted(birthday_days(start, days))))


def audience_filter(spec: CampaignSpec, *, as_of: datetime) -> sa.ColumnElement[bool]:
    """The whole SQL side of ``spec``'s audience, as one condition on ``members``."""
    as_of = as_utc(as_of)
    return sa.and_(*_member_filters(spec.audience, as_of), _contactable(spec.channels))


def audience_ranges(engine: Engine, spec: CampaignSpec, *, as_of: datetime,
                    chunk_size: int) -> list[tuple[int, int]]:
    """Half-open id ranges, each holding ``chunk_size`` matching members (the last one fewer).

    Ranges are cut on matching members, not raw ids, so chunks stay even however sparse the
    audience is (:func:`loyalty.db.balanced_ranges`).
    """
    return balanced_ranges(engine, m.c.id, audience_filter(spec, as_of=as_of), chunk_size)


def audience_size(engine: Engine, spec: CampaignSpec, *, as_of: datetime) -> int:
    """How many members match ``spec``'s SQL-expressible audience as of ``as_of``."""
    with engine.connect() as connection:
        return int(connection.scalar(sa.select(sa.func.count()).select_from(m)
                                     .where(audience_filter(spec, as_of=as_of))) or 0)


def audience_ids(connection: sa.Connection, spec: CampaignSpec, id_range: tuple[int, int], *,
                 as_of: datetime) -> list[int]:
    """Ids (ascending) of members in ``[lo, hi)`` matching ``spec``'s SQL-expressible audience."""
    lo, hi = id_range
    query = (sa.select(m.c.id).where(m.c.id >= lo, m.c.id < hi, audience_filter(spec, as_of=as_of))
             .order_by(m.c.id))
    return [int(row[0]) for row in fetch_rows(connection, query)]
