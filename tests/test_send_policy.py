"""The policy gate: consent, suppression, quiet hours in the member's zone, the frequency cap."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta

import pytest
from sqlalchemy.engine import Engine

from channels.base import SendResult
from loyalty import outbox
from loyalty.consent import AddressFact, Fact, apply_facts
from loyalty.db import session_scope
from loyalty.models import Campaign, CampaignRun
from loyalty.send_policy import SendPolicy, in_quiet_hours, quiet_hours_end
from loyalty.settings import PolicySettings
from tests.factories import add_contactable_member, queue

NOON_TORONTO = datetime(2025, 6, 2, 16, 0, tzinfo=UTC)  # 12:00 EDT


@pytest.mark.parametrize(("local", "quiet"), [(time(20, 59), False), (time(21, 0), True), (time(23, 30), True),
                                               (time(0, 0), True), (time(8, 59), True), (time(9, 0), False)])
def test_quiet_window_spans_midnight(local: time, quiet: bool) -> None:
    assert in_quiet_hours(local, time(21), time(9)) is quiet


def test_daytime_window_and_empty_window() -> None:
    assert in_quiet_hours(time(13), time(12), time(14))
    assert not in_quiet_hours(time(14), time(12), time(14))
    assert not in_quiet_hours(time(3), time(0), time(0))


def test_quiet_hours_end_is_the_next_local_morning() -> None:
    late = datetime(2025, 6, 3, 3, 30, tzinfo=UTC)  # 23:30 in Toronto, 05:30 in Paris
    assert quiet_hours_end(late, "America/Toronto", time(21), time(9)) == datetime(2025, 6, 3, 13, 0, tzinfo=UTC)
    assert quiet_hours_end(late, "Europe/Paris", time(21), time(9)) == datetime(2025, 6, 3, 7, 0, tzinfo=UTC)
    assert quiet_hours_end(NOON_TORONTO, "America/Toronto", time(21), time(9)) is None


def test_quiet_hours_end_follows_daylight_saving() -> None:
    # The night clocks go back in Toronto (2025-11-02): 09:00 local is 14:00 UTC, not 13:00.
    night = datetime(2025, 11, 2, 4, 0, tzinfo=UTC)
    assert quiet_hours_end(night, "America/Toronto", time(21), time(9)) == datetime(2025, 11, 2, 14, 0, tzinfo=UTC)


def _claim_all(engine: Engine, channel: str = "sms") -> list[outbox.ClaimedMessage]:
    return outbox.claim(engine, channel, limit=100, now=NOON_TORONTO)


def test_review_skips_with_reasons_and_sends_the_rest(engine: Engine) -> None:
    with session_scope(engine) as session:
        ok = add_contactable_member(session).id
        silent = add_contactable_member(session, channels=("email",)).id
        stopped_member = add_contactable_member(session)
        no_phone = add_contactable_member(session, phone=None).id
    stopped, stopped_phone = stopped_member.id, stopped_member.phone
    assert ok and silent and stopped and no_phone and stopped_phone
    apply_facts(engine, [AddressFact("sms", stopped_phone, Fact.INVALID_ADDRESS, stopped)])
    queue(engine, [ok, silent, stopped, no_phone], "sms")
    claimed = _claim_all(engine)
    with engine.connect() as connection:
        verdicts = SendPolicy(PolicySettings()).review(connection, claimed, NOON_TORONTO)
    by_message = {m.id: m.member_id for m in claimed}
    assert [m.member_id for m in verdicts.send] == [ok]
    assert {by_message[i]: reason for i, reason in verdicts.skip.items()} == {
        silent: "no_consent", stopped: "suppressed", no_phone: "no_address"}
    assert verdicts.defer == {}


def test_night_time_messages_are_deferred_to_the_members_morning(engine: Engine) -> None:
    with session_scope(engine) as session:
        toronto = add_contactable_member(session, time_zone="America/Toronto").id
        paris = add_contactable_member(session, time_zone="Europe/Paris").id
    queue(engine, [toronto, paris], "sms")
    late = datetime(2025, 6, 3, 3, 30, tzinfo=UTC)
    claimed = outbox.claim(engine, "sms", limit=10, now=late)
    with engine.connect() as connection:
        verdicts = SendPolicy(PolicySettings()).review(connection, claimed, late)
    assert verdicts.send == [] and verdicts.skip == {}
    assert sorted(verdicts.defer.values()) == [datetime(2025, 6, 3, 7, 0, tzinfo=UTC),
                                               datetime(2025, 6, 3, 13, 0, tzinfo=UTC)]
    # Deferral puts them back, due in the morning, without spending an attempt.
    assert outbox.defer(engine, verdicts.defer, now=late) == 2
    assert outbox.claim(engine, "sms", limit=10, now=late + timedelta(hours=3)) == []
    again = outbox.claim(engine, "sms", limit=10, now=datetime(2025, 6, 3, 13, 0, tzinfo=UTC))
    assert {m.attempts for m in again} == {1}


def test_frequency_cap_counts_recent_sends_across_campaigns_but_spares_triggers(engine: Engine) -> None:
    with session_scope(engine) as session:
        member = add_contactable_member(session).id
        campaign = Campaign(name="weekly")
        session.add(campaign)
        session.flush()
        run = CampaignRun(campaign_id=campaign.id, slot=NOON_TORONTO)
        session.add(run)
        session.flush()
        run_id = run.id
    assert member and run_id
    earlier = NOON_TORONTO - timedelta(days=2)
    queue(engine, [member], "sms", per_member=2, prefix="old", run_id=run_id, now=earlier)
    sent = outbox.claim(engine, "sms", limit=10, now=earlier)
    outbox.record_results(engine, [SendResult.accepted(m.id, f"SM{m.id}") for m in sent], now=earlier,
                          backoff=outbox.Backoff())
    queue(engine, [member], "sms", per_member=2, prefix="new", run_id=run_id, now=NOON_TORONTO)
    queue(engine, [member], "sms", per_member=1, prefix="trigger", now=NOON_TORONTO)
    claimed = _claim_all(engine)
    with engine.connect() as connection:
        verdicts = SendPolicy(PolicySettings(frequency_cap=3)).review(connection, claimed, NOON_TORONTO)
    # Two sent this week: one more campaign message fits, the next is capped; the trigger always goes.
    assert [m.key for m in verdicts.send] == [f"new-sms-{member}-0", f"trigger-sms-{member}-0"]
    assert list(verdicts.skip.values()) == ["frequency_cap"]
    with engine.connect() as connection:
        wide = SendPolicy(PolicySettings(frequency_cap=3, frequency_window_hours=1)).review(
            connection, claimed, NOON_TORONTO)
    assert len(wide.send) == 3  # the older sends fell out of a one-hour window
