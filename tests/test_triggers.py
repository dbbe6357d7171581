"""Triggered messages: tier upgrades, welcomes and expiring points, from cause to outbox row (and to the sandbox)."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import timedelta
from email import policy
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from loyalty.consent import suppress
from loyalty.db import session_scope
from loyalty.delivery import open_channels
from loyalty.dispatch import dispatch
from loyalty.ledger import Purchase, post_entry, record_purchases
from loyalty.models import OUTBOX_MESSAGES, TIER_CHANGES, PushSubscription
from loyalty.programme import Programme
from loyalty.rendering import TemplateLibrary
from loyalty.settings import DispatchSettings, Settings
from loyalty.tiers import DAYS_PER_MONTH
from loyalty.trigger_channels import NO_ADDRESS, NO_CONSENT, SUPPRESSED, choose_channel
from loyalty.triggers import (
    SUPERSEDED,
    TriggerReport,
    queue_points_expiring,
    queue_tier_upgrades,
    queue_welcome,
)
from loyalty.types import PointsKind, PushKind, utcnow
from tests.factories import add_contactable_member, add_member
from tests.template_helpers import scratch_library, shipped_library

NOW = utcnow().replace(microsecond=0)


@pytest.fixture
def library(programme: Programme) -> TemplateLibrary:
    return shipped_library(programme)


def _upgrade(engine: Engine, programme: Programme, *, channels: tuple[str, ...] = ("email", "sms", "push"),
             amount_cents: int = 120_000, **fields: Any) -> int:
    """A member whose purchase crosses the Silver threshold (through the ledger); returns the member id."""
    with session_scope(engine) as session:
        member = add_contactable_member(session, channels=channels, **fields)
        assert member.id is not None
        batch = record_purchases(session, programme, [Purchase(member.id, f"T-{member.id}", amount_cents, NOW)])
        assert [c.to_tier for c in batch.tier_changes] == ["silver"]
        return member.id


def _outbox(engine: Engine) -> list[dict[str, Any]]:
    o = OUTBOX_MESSAGES.c
    query = sa.select(o.key, o.member_id, o.channel, o.template, o.payload).order_by(o.id)
    with engine.connect() as connection:
        return [dict(row._mapping) for row in connection.execute(query)]


def _unhandled(engine: Engine) -> int:
    with engine.connect() as connection:
        query = sa.select(sa.func.count()).where(TIER_CHANGES.c.handled_at.is_(None))
        return int(connection.execute(query).scalar_one())


def test_an_upgrade_queues_one_email_naming_the_new_tier(engine: Engine, programme: Programme,
                                                         library: TemplateLibrary) -> None:
    member_id = _upgrade(engine, programme, first_name="Ana")
    report = queue_tier_upgrades(engine, programme, library)
    assert (report.considered, report.queued, report.handled, dict(report.skipped)) == (1, 1, 1, {})
    (row,) = _outbox(engine)
    with engine.connect() as connection:
        change_id: int = connection.execute(sa.select(TIER_CHANGES.c.id)).scalar_one()
    assert row["key"] == f"tier_upgrade:{change_id}" and row["channel"] == "email" and row["member_id"] == member_id
    payload = row["payload"]
    assert payload["to"].endswith("@example.com") and payload["tags"] == {"trigger": "tier_upgrade"}
    assert payload["content"]["subject"] == "Congratulations Ana, you are now Silver!"
    assert "Silver" in payload["content"]["html"] and "List-Unsubscribe" in payload["headers"]
    assert _unhandled(engine) == 0

    again = queue_tier_upgrades(engine, programme, library)
    assert (again.considered, again.queued) == (0, 0) and len(_outbox(engine)) == 1


def test_two_concurrent_sweepers_send_one_message_per_change(engine: Engine, programme: Programme,
                                                             library: TemplateLibrary) -> None:
    members = [_upgrade(engine, programme) for _ in range(12)]
    barrier = threading.Barrier(2)
    reports: list[TriggerReport] = []
    errors: list[BaseException] = []

    def sweep() -> None:
        try:
            barrier.wait()
            reports.append(queue_tier_upgrades(engine, programme, library))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=sweep) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    rows = _outbox(engine)
    assert sorted(r["member_id"] for r in rows) == sorted(members)
    assert len({r["key"] for r in rows}) == 12
    assert sum(r.queued for r in reports) == 12 and sum(r.handled for r in reports) == 12
    assert _unhandled(engine) == 0


def test_members_without_a_usable_channel_are_handled_with_a_reason(engine: Engine, programme: Programme,
                                                                   library: TemplateLibrary) -> None:
    _upgrade(engine, programme, channels=())
    _upgrade(engine, programme, channels=("email",), email=None)
    report = queue_tier_upgrades(engine, programme, library)
    assert report.queued == 0 and report.handled == 2
    assert report.skipped == Counter({NO_CONSENT: 1, NO_ADDRESS: 1})
    assert _outbox(engine) == [] and _unhandled(engine) == 0


def test_a_template_error_leaves_the_change_for_a_retry(tmp_path: Path, engine: Engine, programme: Programme,
                                                        library: TemplateLibrary) -> None:
    broken = scratch_library(tmp_path, programme, {
        "tier_upgrade/en/sms.txt": "You are now {{ tier.name }}",
        "tier_upgrade/en/email.subject.txt": "You are now {{ tier.name }}",
        "tier_upgrade/en/email.html": "<p>Hello</p>\n<p>{{ member.nickname }}</p>\n"})
    texted = _upgrade(engine, programme, channels=("sms",))
    emailed = _upgrade(engine, programme, channels=("email",))
    report = queue_tier_upgrades(engine, programme, broken)
    (key, error), = report.errors.items()
    assert key.startswith("tier_upgrade:") and "email.html:2" in error and "nickname" in error
    assert (report.queued, report.handled) == (1, 1) and _unhandled(engine) == 1  # the SMS was not held up
    assert [r["member_id"] for r in _outbox(engine)] == [texted]

    fixed = queue_tier_upgrades(engine, programme, library)  # the template is fixed: the message goes out
    assert (fixed.queued, fixed.errors) == (1, {}) and _unhandled(engine) == 0
    assert [r["member_id"] for r in _outbox(engine)] == [texted, emailed]


def test_a_second_upgrade_before_the_sweep_sends_only_the_latest(engine: Engine, programme: Programme,
                                                                 library: TemplateLibrary) -> None:
    member_id = _upgrade(engine, programme)
    with session_scope(engine) as session:
        record_purchases(session, programme, [Purchase(member_id, "T-gold", 500_000, NOW)])
    report = queue_tier_upgrades(engine, programme, library)
    assert (report.queued, report.handled, report.skipped) == (1, 2, Counter({SUPERSEDED: 1}))
    (row,) = _outbox(engine)
    assert "Gold" in row["payload"]["content"]["subject"]


def test_channel_choice_follows_priority_consent_address_and_suppression(engine: Engine) -> None:
    with session_scope(engine) as session:
        emailable = add_contactable_member(session)
        text_only = add_contactable_member(session, channels=("sms",))
        bounced = add_contactable_member(session, channels=("email", "push"))
        fcm = add_contactable_member(session, channels=("email", "push"), email=None)
        blocked = add_contactable_member(session, channels=("email",))
        assert bounced.id is not None and fcm.id is not None
        session.add_all([
            PushSubscription(member_id=bounced.id, kind=PushKind.WEBPUSH, endpoint="https://push.example/wp/1",
                             p256dh="key", auth="secret"),
            PushSubscription(member_id=fcm.id, kind=PushKind.FCM, endpoint="fcm-token-1")])
        session.flush()
        connection = session.connection()
        suppress(connection, "email", str(bounced.email).upper(), "hard_bounce")
        suppress(connection, "email", str(blocked.email), "spam_complaint")
        ids = [m.id for m in (emailable, text_only, bounced, fcm, blocked) if m.id is not None]
        choice = choose_channel(connection, [*ids, 10**9])
    chosen = {mid: (r.channel, r.to, r.push_keys) for mid, r in choice.recipients.items()}
    assert chosen == {emailable.id: ("email", emailable.email, None), text_only.id: ("sms", text_only.phone, None),
                      bounced.id: ("push", "https://push.example/wp/1", {"p256dh": "key", "auth": "secret"}),
                      fcm.id: ("push", "fcm-token-1", None)}
    assert choice.skipped == {blocked.id: SUPPRESSED, 10**9: "unknown_member"}


def test_welcome_is_queued_once_per_member(engine: Engine, programme: Programme, library: TemplateLibrary) -> None:
    with session_scope(engine) as session:
        member = add_contactable_member(session, channels=("push", "sms"), first_name="Léa", locale="fr_CA")
        stranger = add_member(session)
    assert member.id is not None and stranger.id is not None
    first = queue_welcome(engine, programme, library, [member.id, stranger.id])
    assert (first.queued, first.handled, first.skipped) == (1, 2, Counter({NO_CONSENT: 1}))
    second = queue_welcome(engine, programme, library, [member.id])
    assert (second.queued, second.already_queued) == (0, 1)
    (row,) = _outbox(engine)
    assert row["key"] == f"welcome:{member.id}" and row["channel"] == "sms" and row["template"] == "welcome"
    assert "Léa" in row["payload"]["content"]["body"]


def test_points_expiring_reminds_once_per_expiring_batch(engine: Engine, programme: Programme,
                                                         library: TemplateLibrary) -> None:
    validity = programme.expiry.months * DAYS_PER_MONTH
    with session_scope(engine) as session:
        member = add_contactable_member(session, channels=("email",))
        fresh = add_contactable_member(session, channels=("email",))
        assert member.id is not None and fresh.id is not None
        post_entry(session, member_id=member.id, kind=PointsKind.EARN, points=700, reason="t", source="t",
                   at=NOW - timedelta(days=validity - 10))
        post_entry(session, member_id=member.id, kind=PointsKind.REDEEM, points=-200, reason="t", source="t",
                   at=NOW - timedelta(days=5))
        post_entry(session, member_id=fresh.id, kind=PointsKind.EARN, points=700, reason="t", source="t",
                   at=NOW - timedelta(days=5))
    report = queue_points_expiring(engine, programme, library, within_days=30, as_of=NOW)
    assert (report.considered, report.queued) == (1, 1)
    expires = (NOW - timedelta(days=validity - 10) + timedelta(days=validity)).date()
    (row,) = _outbox(engine)
    assert row["key"] == f"points_expiring:{member.id}:{expires.isoformat()}"
    assert "500" in row["payload"]["content"]["text"]
    # The next day's sweep finds the same points expiring on the same date: nothing new.
    tomorrow = queue_points_expiring(engine, programme, library, within_days=30, as_of=NOW + timedelta(days=1))
    assert (tomorrow.queued, tomorrow.already_queued) == (0, 1) and len(_outbox(engine)) == 1


def test_a_purchase_crossing_silver_reaches_the_sandbox_mailbox(tmp_path: Path, engine: Engine,
                                                               programme: Programme, library: TemplateLibrary) -> None:
    member_id = _upgrade(engine, programme, first_name="Zoé")
    assert queue_tier_upgrades(engine, programme, library).queued == 1
    settings = Settings(var_dir=tmp_path / "var", database_url=engine.url.render_as_string(hide_password=False))
    with open_channels(settings) as opened:
        stats = dispatch(engine, opened.adapters.values(), settings=DispatchSettings(), poll_seconds=0.01)
    assert stats["email"].sent == 1 and sum(s.sent for s in stats.values()) == 1
    (eml,) = (settings.sandbox_dir / "email").glob("*.eml")
    mail = BytesParser(policy=policy.default).parsebytes(eml.read_bytes())
    assert mail["Subject"] == "Congratulations Zoé, you are now Silver!"
    assert "Silver" in mail.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert queue_tier_upgrades(engine, programme, library).queued == 0 and member_id
