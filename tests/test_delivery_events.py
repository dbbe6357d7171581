"""Recording provider events: stored once, acting once, never moving a message backwards."""

from __future__ import annotations

import itertools
import uuid
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session

from channels.base import SendResult
from loyalty.consent import set_consent
from loyalty.db import fetch_rows
from loyalty.delivery_events import record_events, sendgrid_events, twilio_status_event
from loyalty.models import CHANNEL_CONSENTS, DELIVERY_EVENTS, OUTBOX_MESSAGES, SUPPRESSIONS
from loyalty.outbox import Backoff, NewMessage, claim, enqueue, record_results, recover_expired_leases
from loyalty.types import utcnow
from tests.factories import add_member

_keys = itertools.count(1)


def new_member(engine: Engine, **fields: Any) -> tuple[int, str]:
    """A committed member opted in on every channel; returns (id, email)."""
    with Session(engine) as session:
        member = add_member(session, **fields)
        member_id, email = int(member.id or 0), str(member.email)
        session.commit()
    with engine.begin() as connection:
        for channel in ("email", "sms", "push"):
            set_consent(connection, member_id, channel, True, source="import")
    return member_id, email


def sent_message(engine: Engine, member_id: int, channel: str, provider_id: str | None) -> int:
    """An outbox row taken through enqueue → claim → accepted, i.e. ``sent`` with ``provider_id``."""
    with Session(engine) as session:
        enqueue(session, [NewMessage(key=f"test-{next(_keys)}-{uuid.uuid4().hex[:6]}", member_id=member_id,
                                     channel=channel, template="t", payload={})])
        session.commit()
    (claimed,) = claim(engine, channel, limit=1)
    record_results(engine, [SendResult.accepted(claimed.id, provider_id)], backoff=Backoff())
    return claimed.id


def outbox_row(engine: Engine, outbox_id: int) -> tuple[str, str | None]:
    """(status, last_error) of one outbox row."""
    o = OUTBOX_MESSAGES.c
    with engine.connect() as connection:
        (row,) = fetch_rows(connection, sa.select(o.status, o.last_error).where(o.id == outbox_id))
    return str(row[0]), row[1]


def consent(engine: Engine, member_id: int, channel: str) -> tuple[bool, str] | None:
    """(opted_in, source) of a member's consent on ``channel``."""
    c = CHANNEL_CONSENTS.c
    with engine.connect() as connection:
        rows = fetch_rows(connection, sa.select(c.opted_in, c.source)
                          .where(c.member_id == member_id, c.channel == channel))
    return (bool(rows[0][0]), str(rows[0][1])) if rows else None


def suppressions(engine: Engine) -> set[tuple[str, str, str]]:
    """Every suppression as (channel, address, reason)."""
    s = SUPPRESSIONS.c
    with engine.connect() as connection:
        return {(str(a), str(b), str(c)) for a, b, c in
                fetch_rows(connection, sa.select(s.channel, s.address, s.reason))}


def event_count(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(fetch_rows(connection, sa.select(sa.func.count()).select_from(DELIVERY_EVENTS))[0][0])


def sg_event(name: str, outbox_id: int | None, email: str, *, provider_id: str = "msg", **extra: Any) -> dict[str, Any]:
    """A SendGrid event as the webhook posts it (custom args at top level)."""
    event: dict[str, Any] = {"event": name, "email": email, "timestamp": int(utcnow().timestamp()),
                             "sg_event_id": uuid.uuid4().hex, "sg_message_id": f"{provider_id}.filter0001.1.0"}
    if outbox_id is not None:
        event["outbox_id"] = str(outbox_id)
        event["key"] = "k"
    return event | extra


def test_sendgrid_batch_settles_messages_and_applies_facts(engine: Engine) -> None:
    ids = [new_member(engine) for _ in range(5)]
    msgs = [sent_message(engine, member_id, "email", f"sg{n}") for n, (member_id, _) in enumerate(ids)]
    batch = [sg_event("processed", msgs[0], ids[0][1]), sg_event("delivered", msgs[0], ids[0][1]),
             sg_event("bounce", msgs[1], ids[1][1], type="bounce", status="5.1.1", reason="no such user"),
             sg_event("dropped", msgs[2], ids[2][1], reason="Invalid"),
             sg_event("spamreport", msgs[3], ids[3][1]), sg_event("open", msgs[3], ids[3][1]),
             sg_event("unsubscribe", msgs[4], ids[4][1])]
    recorded = record_events(engine, sendgrid_events(batch))
    assert (recorded.stored, recorded.duplicates, recorded.unmatched) == (7, 0, 0)
    assert outbox_row(engine, msgs[0]) == ("delivered", None)
    assert outbox_row(engine, msgs[1]) == ("bounced", "5.1.1 no such user")
    assert outbox_row(engine, msgs[2]) == ("failed", "dropped: Invalid")
    assert outbox_row(engine, msgs[3])[0] == "sent"  # a complaint says nothing about delivery state
    assert suppressions(engine) == {("email", ids[1][1], "hard_bounce"), ("email", ids[3][1], "spam_complaint")}
    assert consent(engine, ids[1][0], "email") == (True, "import")  # a bounce is the mailbox, not a choice
    assert consent(engine, ids[3][0], "email") == (False, "sendgrid:spamreport")
    assert consent(engine, ids[4][0], "email") == (False, "sendgrid:unsubscribe")
    assert consent(engine, ids[4][0], "sms") == (True, "import")


def test_replayed_events_are_stored_and_applied_once(engine: Engine) -> None:
    member_id, email = new_member(engine)
    msg = sent_message(engine, member_id, "email", "sgA")
    batch = [sg_event("delivered", msg, email), sg_event("spamreport", msg, email)]
    first = record_events(engine, sendgrid_events(batch))
    with engine.begin() as connection:  # the member opts back in; a replay must not undo that
        set_consent(connection, member_id, "email", True, source="preference_page")
    again = record_events(engine, sendgrid_events(batch + batch))
    assert (first.stored, again.stored, again.duplicates, again.transitions, again.facts) == (2, 0, 4, 0, [])
    assert event_count(engine) == 2
    assert consent(engine, member_id, "email") == (True, "preference_page")


def test_soft_bounces_and_deferrals_only_store_the_event(engine: Engine) -> None:
    member_id, email = new_member(engine)
    msg = sent_message(engine, member_id, "email", "sgB")
    record_events(engine, sendgrid_events([sg_event("bounce", msg, email, type="blocked"),
                                           sg_event("deferred", msg, email), sg_event("click", msg, email)]))
    assert outbox_row(engine, msg) == ("sent", None)
    assert suppressions(engine) == set()
    assert event_count(engine) == 3


def test_sg_message_id_matches_only_without_outbox_id_and_unknown_ids_store_null(engine: Engine) -> None:
    member_id, email = new_member(engine)
    msg = sent_message(engine, member_id, "email", "sgC")
    fallback = sg_event("delivered", None, email, provider_id="sgC")
    unknown = sg_event("delivered", 999_999, email, provider_id="sgC")  # outbox_id wins, even if unknown
    junk = sg_event("open", None, email, provider_id="nobody")
    recorded = record_events(engine, sendgrid_events([unknown, junk]))
    assert (recorded.stored, recorded.unmatched) == (2, 2)
    assert outbox_row(engine, msg)[0] == "sent"
    record_events(engine, sendgrid_events([fallback]))
    assert outbox_row(engine, msg)[0] == "delivered"
    with engine.connect() as connection:
        rows = fetch_rows(connection, sa.select(DELIVERY_EVENTS.c.outbox_id).order_by(DELIVERY_EVENTS.c.id))
    assert [r[0] for r in rows] == [None, None, msg]


def test_a_delivery_report_settles_an_unknown_row(engine: Engine) -> None:
    member_id, email = new_member(engine)
    with Session(engine) as session:
        enqueue(session, [NewMessage(key="lost", member_id=member_id, channel="email", template="t", payload={})])
        session.commit()
    (claimed,) = claim(engine, "email", limit=1)
    assert recover_expired_leases(engine, now=utcnow() + timedelta(hours=1)) == 1
    assert outbox_row(engine, claimed.id)[0] == "unknown"
    record_events(engine, sendgrid_events([sg_event("delivered", claimed.id, email)]))
    assert outbox_row(engine, claimed.id)[0] == "delivered"


def test_rows_never_move_backwards(engine: Engine) -> None:
    member_id, email = new_member(engine, phone="+15145550101")
    sms = sent_message(engine, member_id, "sms", "SM1")
    record_events(engine, [twilio_status_event({"MessageSid": "SM1", "MessageStatus": "delivered"})])
    record_events(engine, [twilio_status_event({"MessageSid": "SM1", "MessageStatus": "sent"})])
    assert outbox_row(engine, sms)[0] == "delivered"
    mail = sent_message(engine, member_id, "email", "sgD")
    # An asynchronous bounce after "delivered" is the later truth; a late "delivered" does not undo it.
    record_events(engine, sendgrid_events([sg_event("delivered", mail, email)]))
    record_events(engine, sendgrid_events([sg_event("bounce", mail, email, type="bounce")]))
    record_events(engine, sendgrid_events([sg_event("delivered", mail, email)]))
    assert outbox_row(engine, mail)[0] == "bounced"
    dropped = sent_message(engine, member_id, "email", "sgE")
    record_events(engine, sendgrid_events([sg_event("delivered", dropped, email)]))
    record_events(engine, sendgrid_events([sg_event("dropped", dropped, email)]))
    assert outbox_row(engine, dropped)[0] == "delivered"


def test_twilio_failures_record_the_code_and_the_fact(engine: Engine) -> None:
    stopped, _ = new_member(engine, phone="+15145550102")
    landline, _ = new_member(engine, phone="+15145550103")
    a = sent_message(engine, stopped, "sms", "SM2")
    b = sent_message(engine, landline, "sms", "SM3")
    events = [twilio_status_event({"MessageSid": "SM2", "MessageStatus": "undelivered", "ErrorCode": "21610",
                                   "To": "+15145550102"}),
              # Without ``To`` the member's number on file is used.
              twilio_status_event({"MessageSid": "SM3", "MessageStatus": "failed", "ErrorCode": "30006"}),
              twilio_status_event({"MessageSid": "SM3", "MessageStatus": "queued"})]
    recorded = record_events(engine, events)
    assert recorded.stored == 3
    assert outbox_row(engine, a) == ("bounced", "twilio undelivered: error 21610")
    assert outbox_row(engine, b) == ("bounced", "twilio failed: error 30006")
    assert suppressions(engine) == {("sms", "+15145550102", "sms_stop"), ("sms", "+15145550103", "invalid_address")}
    assert consent(engine, stopped, "sms") == (False, "twilio:undelivered")
    assert consent(engine, landline, "sms") == (True, "import")
    with engine.connect() as connection:
        ids = {str(r[0]) for r in fetch_rows(connection, sa.select(DELIVERY_EVENTS.c.provider_event_id))}
    assert ids == {"SM2:undelivered", "SM3:failed", "SM3:queued"}


def test_a_report_that_beats_the_dispatchers_commit_settles_the_row(engine: Engine) -> None:
    member_id, email = new_member(engine)
    with Session(engine) as session:
        enqueue(session, [NewMessage(key="early", member_id=member_id, channel="email", template="t", payload={})])
        session.commit()
    (claimed,) = claim(engine, "email", limit=1)  # in flight: the provider answered, we have not recorded it yet
    record_events(engine, sendgrid_events([sg_event("delivered", claimed.id, email)]))
    assert outbox_row(engine, claimed.id)[0] == "delivered"
    late = record_results(engine, [SendResult.accepted(claimed.id, "x-msg")], backoff=Backoff())
    assert late.ignored == [claimed.id] and outbox_row(engine, claimed.id)[0] == "delivered"
